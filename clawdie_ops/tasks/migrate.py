"""`inv migrate` (flags in, report out; the work is in clawdie_ops.actions.migrate) and
`migrate-step`, the few host-side actions migrate runs on each host through Fabric."""
from __future__ import annotations

import json as jsonlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from invoke import Context

from ..config import settings as config, inventory
from ..errors import ConfigError, MigrationFailed
from .base import jobs, operator_task

if TYPE_CHECKING:
    from rich.console import Console


@operator_task(help={
    "to": "the new host: a name in clawdie.hosts (ssh alias, root, overrides), or an ssh alias",
    "from": "the old host (default: this machine); a name in clawdie.hosts or an ssh alias",
    "dry-run": "print the plan (every host, every command, secrets masked), run the read-only "
               "preflight on both hosts, and change nothing",
    "yes": "do not ask for confirmation (needed when there is no terminal)",
    "force": "migrate even onto a new host that already runs an agent or holds data (it is "
             "overwritten)",
    "restart": "forget the journal of an earlier, interrupted run and start from the top",
    "accept-new-host-key": "trust a host key seen for the first time and record it in "
                           "known_hosts (default: an unknown key is refused)",
    "retries": "attempts for the archive copy when the connection drops (default 5)",
    "install": "where clawdie-ops is missing on a host (or older on the new host), upload this "
               "version and pip-install it into its own virtualenv there (default; see "
               "clawdie.hosts.NAME.install); --no-install stops the preflight instead",
    "json": "print the report (steps, downtime_s, what moved, rollback) as JSON on stdout",
    "delta": "move messages.db, .env, groups/ and the allowlist by what changed: a copy staged "
             "on the new host at the pre-sync, only the changed pages and files in the window "
             "(default); --no-delta carries them in the final archive instead",
    "pg-dump": "move the databases by dump and restore in the downtime window even when both "
               "hosts run the same PostgreSQL major (by default they then travel inside the "
               "db jail's dataset: pre-sync live, the increment in the window, row counts "
               "checked); an upgrade (different majors) always goes by dump",
    "sync-jobs": "jail datasets replicated at once, in the pre-sync and in the window "
                 "(default 2; 1: one after the other); each syncoid's own snapshots and SSH "
                 "sessions are most of a small increment's time",
})
def migrate(c: Context, to=None, from_=None, dry_run=False, yes=False, force=False, restart=False,
            accept_new_host_key=False, retries=5, install=True, json=False, delta=True,
            pg_dump=False, sync_jobs=2):
    """Move the installation to new hardware: pre-sync live, then a short downtime window.

    Preflight on both hosts (read-only; clawdie-ops is installed where missing), syncoid
    of the jail datasets while the agent runs, then: stop the agent, final backup, final
    increment, copy the archive (checksum verified), restore on the new host, start it
    there, doctor. When both hosts run the same PostgreSQL major and its data directory is
    in the db jail's dataset, the databases travel in that dataset instead of the archive
    (the db jail stopped in the window, row counts checked on the new host; --pg-dump
    forces dump and restore). messages.db, .env, groups/ and the allowlist move by what
    changed: a copy staged at the pre-sync, only the changed pages and files in the window
    (--no-delta: in the archive). With both, the window has no archive. A failure in that
    window starts the old host's agent (and db jail) again. Running the same command again
    continues where an interrupted run stopped."""
    if not to:
        raise ConfigError("migrate needs the new host", "pass --to NEWHOST (a name in "
                          "clawdie.hosts, or an ssh alias)")
    from ..actions.migrate import run as action
    from ..actions.migrate.report import describe_report
    from ..output import Reporter

    out = Reporter(as_json=json)
    cfg = config.section(c.config)
    s = config.load(c.config, require_env=False)
    opts = action.Options(to=to, from_=from_, dry_run=dry_run, yes=yes, force=force,
                          restart=restart, accept_new_host_key=accept_new_host_key,
                          retries=int(retries), install=bool(install), delta=bool(delta),
                          pg_dump=bool(pg_dump), sync_jobs=jobs(sync_jobs, "--sync-jobs"))
    try:
        report = action.run(c, cfg, opts, out, s.home)
    except MigrationFailed as exc:
        failed: dict[str, Any] | None = getattr(exc, "report", None)
        if failed is not None:
            shown = failed
            out.result(shown, lambda con: _print(con, describe_report(shown)))
        raise
    if dry_run:
        def show_plan(con: Console) -> None:
            con.print("[bold]plan[/] (dry run, nothing changed):")
            _print(con, [f"  {line}" for line in report["plan_text"]])
            con.print("[bold]preflight:[/] " + ("ok" if report["preflight"] == "ok" else
                                                "[red]stopped (the error below)[/]"))
            for ch in report["checks"]:
                con.print(f"  {ch['status']:<4} {ch['name']}: {ch['detail']}", markup=False)
        out.result(report, show_plan)
        if report["preflight"] != "ok":
            raise MigrationFailed(f"preflight: {report['preflight']}",
                                  report.get("preflight_hint") or "")
        return
    out.result(report, lambda con: _print(con, describe_report(report)))


def _print(con: Console, lines: list[str]) -> None:
    for line in lines:
        con.print(line, markup=False)


# -- the host side ---------------------------------------------------------------------------
STEP_ACTIONS = ("check", "agent-status", "agent-stop", "agent-start", "jails-start",
                "schedule-pause", "schedule-resume", "checksum", "env-apply", "trust-key",
                "pg-counts", "db-jail-stop", "db-jail-start")


def _payload(stdin: bool) -> dict[str, Any]:
    if not stdin:
        return {}
    raw = sys.stdin.read()
    try:
        data = jsonlib.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise ConfigError(f"migrate-step --stdin: not JSON: {exc}",
                          "migrate sends {\"config\": {...}}; by hand, leave out --stdin") from None
    if not isinstance(data, dict):
        raise ConfigError("migrate-step --stdin: expected a JSON object", "")
    return data


def host_side(c: Context, stdin: bool) -> tuple[dict[str, Any], dict[str, Any],
                                                 config.Settings]:
    """What a host-side step reads: the payload migrate sent on stdin, the settings with the
    inventory's overrides for this host applied, and those loaded."""
    data = _payload(stdin)
    cfg = inventory.apply(config.section(c.config), dict(data.get("config") or {}))
    return data, cfg, config.load({"clawdie": cfg}, require_env=False)


def _schedule(c: Context, s: config.Settings, cfg: dict[str, Any], action: str) -> dict[str, Any]:
    """Comment out (pause) or back in (resume) the scheduled jobs: `schedule`'s own lines and
    hand-written sanoid/syncoid/backup lines, in the crontab of each job's user."""
    from ..actions import schedule

    result = schedule.apply(c, s, cfg, action)
    return {"crontabs": [{k: st[k] for k in ("user", "diff")} for st in result["crontabs"]]}


def _env_apply(c: Context, cfg: dict[str, Any]) -> dict[str, Any]:
    """Write this host's own db/pool settings into the restored .env, and say which servers
    the .env alone now reaches (the agent reads the .env, not the tool's config)."""
    from ..config import envfile
    from ..hosts import agent
    from ..sources.postgres import server

    s = config.load({"clawdie": cfg})
    values = {env_key: str(cfg[key]) for key, env_key in envfile.ENV_KEY_OF_SETTING.items()
              if cfg.get(key)}
    running = agent.running(c, s)
    changed = envfile.set_values(s.env_file, values) if values else {}
    stopped = bool(changed) and running and agent.stop(c, s)  # it read the old values
    plain = config.load({"clawdie": {**cfg, **{k: "" for k in envfile.ENV_KEY_OF_SETTING}}})
    dbs = {}
    for db in plain.databases():
        probe = server.probe_database(db)
        dbs[db.key] = {k: probe.get(k) for k in ("host", "port", "identity", "error")}
    return {"env_file": str(s.env_file), "changed": changed, "databases": dbs,
            "agent_stopped": stopped}


def _pg_jail(c: Context, s: config.Settings, action: str, data: dict[str, Any]
             ) -> dict[str, Any]:
    """PostgreSQL moving with its jail: its row counts, its jail stopped or started."""
    from ..actions.migrate import pgmove

    if action == "pg-counts":
        return {"databases": pgmove.table_counts(s, float(data.get("wait") or 0))}
    return pgmove.db_jail(c, s, action.rsplit("-", 1)[1])


@operator_task(help={
    "action": "one of: " + ", ".join(STEP_ACTIONS),
    "path": "the file for `checksum`",
    "role": "for `check`: source (the old host) or target (the new host)",
    "stdin": "read settings overrides as JSON from standard input (how migrate passes a "
             "host's inventory overrides and secrets: never on the command line)",
    "json": "print the result as JSON",
})
def migrate_step(c: Context, action, path=None, role="target", stdin=False, json=False):
    """One host-side step of a migration, run by migrate on each host through SSH.

    By hand they undo a migration: agent-stop / agent-start, schedule-pause /
    schedule-resume; `check` prints what migrate's preflight reads on this host."""
    if action not in STEP_ACTIONS:
        raise ConfigError(f"unknown migrate-step action {action!r}",
                          f"use one of: {', '.join(STEP_ACTIONS)}")
    # Each action imports what it uses: a step's process starts for it alone, inside the
    # downtime window (the preflight's facts bring psycopg, the checksum paramiko).
    from ..hosts import agent
    from ..output import Reporter

    data, cfg, s = host_side(c, stdin)
    if action == "check":
        from ..hosts import facts
        if role not in ("source", "target"):
            raise ConfigError(f"--role {role!r}: use source or target", "")
        env = data.get("env") if role == "target" else None
        result = facts.gather(c, cfg, role, env=env if env else None,
                              with_db_env=bool(data.get("want_db_env")))
    elif action == "agent-status":
        result = {"running": agent.running(c, s)}
    elif action == "agent-stop":
        result = {"was_running": agent.stop(c, s)}
    elif action == "agent-start":
        started = not agent.running(c, s)
        if started:
            agent.start(c, s)
        result = {"started": started, "running": True}
    elif action == "jails-start":
        jails_started = []
        for jail in s.jails:
            if not agent.jail_running(c, s, jail):
                agent.jail_start(c, s, jail)
                jails_started.append(jail)
        result = {"started": jails_started, "jails": list(s.jails)}
    elif action in ("pg-counts", "db-jail-stop", "db-jail-start"):
        result = _pg_jail(c, s, action, data)
    elif action in ("schedule-pause", "schedule-resume"):
        result = _schedule(c, s, cfg, action.split("-", 1)[1])
    elif action == "checksum":
        from ..hosts import transfer
        if not path:
            raise ConfigError("migrate-step checksum needs --path FILE", "")
        try:
            digest, size = transfer.local_sha256(path)
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}",
                              "check the path on this host") from None
        result = {"path": str(Path(path)), "sha256": digest, "size": size}
    elif action == "trust-key":
        from ..archive import signing
        key = signing.parse_public(str(data.get("public") or ""), "migrate-step trust-key")
        tfile = signing.trusted_file(dict(s.signing), s.home)
        result = {"fingerprint": key.fingerprint, "file": str(tfile),
                  "added": signing.add_trusted(tfile, key)}
    else:
        result = _env_apply(c, cfg)
    out = Reporter(as_json=json)
    out.result(result, lambda con: con.print(jsonlib.dumps(
        {k: v for k, v in result.items() if k != "db_env"}, indent=2, default=str),
        markup=False))
