"""`migrate`: move an installation to new hardware by running clawdie-ops on both hosts.

The plan is data (migrate_plan.py): every step names its host and its exact command, and
prints in full with --dry-run (secrets masked). Running it goes through four phases:
1. preflight on both hosts, read-only (facts.py gathers, migrate_checks.py decides);
2. live pre-sync of the jail datasets while the agent still runs (`replicate`);
3. the downtime window: stop the agent on the old host, final `backup`, final incremental
   `replicate`, copy the archive (transfer.py: resumed, checksum verified on arrival),
   start the jails, `restore`, point the .env at the new host's own services, start the
   agent, `doctor`; downtime is measured from the agent stop to a healthy doctor;
4. cutover of the schedules and the report.
Each host runs its own clawdie-ops through a Context (a Fabric Connection, or the
operator's own Context for this machine), so each host's own config and command templates
apply, with the inventory's overrides on top. A journal on the operator's machine lets
the same command continue after an interruption; a failure inside the downtime window
starts the old host's agent again and changes nothing else there.
"""
from __future__ import annotations

import dataclasses
import shlex
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import ExitStack
from datetime import datetime, UTC
from pathlib import Path
from typing import Any
from collections.abc import Callable, Mapping

from ... import __version__, locks
from . import journal as journal_mod, checks as migrate_checks
from ...hosts import remote, install as toolinstall, transfer
from ...errors import Aborted, ClawdieError, MigrationFailed, Terminated
from ...config.inventory import Host
from ...config.masking import masked
from .plan import (ALONGSIDE_SYNC, DOWNTIME, Options, Plan, Step, StepId, host_dict, make_plan,
                   make_steps)
from ...output import Reporter


def _summary(facts: dict[str, Any]) -> dict[str, Any]:
    """What the journal keeps of a host's facts (they are read again on every run)."""
    return {k: facts.get(k) for k in ("hostname", "tool_version", "root", "backup_dir")}


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


class Migration:
    """Runs a plan: contexts per host, the journal, the rollback."""

    def __init__(self, c, cfg: Mapping[str, Any], plan: Plan, opts: Options,
                 out: Reporter) -> None:
        self.c = c
        self.cfg = cfg
        self.plan = plan
        self.opts = opts
        self.out = out
        self.ctx: dict[str, Any] = {}
        self.facts: dict[str, dict[str, Any]] = {}
        self.db_env: dict[str, str] = {}  # the old .env's database settings: memory only
        self.temp_configs: dict[str, str] = {}
        # hosts whose clawdie-ops is known to run: this machine, and what the tools step found
        self.tool_ready = {w for w in ("old", "new") if plan.host(w).local}
        self.lock = threading.RLock()
        self.checks: list[migrate_checks.Check] = []
        self.skipped: list[str] = []
        self.started: Step = plan.steps[0]  # the preflight step running, for its failure
        self.warnings: list[str] = []
        self.journal = journal_mod.Journal.open(
            plan.journal, {"from": [plan.old.name, plan.old.ssh],
                           "to": [plan.new.name, plan.new.ssh]}, restart=opts.restart)
        # Preflight runs every time; a run "continues" when later steps were done before.
        self.resumed = any(self.journal.done(s.id) for s in plan.steps
                           if s.phase != "preflight")
        # What each step does beyond running its own command (run_plan_step) on its host.
        self.actions: dict[StepId, Callable[[Step], dict[str, Any]]] = {
            StepId.CONNECT: self.do_connect, StepId.TOOLS: self.do_tools,
            StepId.CHECK_OLD: self.do_check_old, StepId.CHECK_NEW: self.do_check_new,
            StepId.EVALUATE: self.do_evaluate, StepId.PRESYNC: self.do_replicate,
            StepId.STOP_OLD_AGENT: self.do_stop_old_agent, StepId.FINAL_SYNC: self.do_replicate,
            StepId.COPY_ARCHIVE: self.do_copy, StepId.RESTORE: self.do_restore,
            StepId.POINT_ENV: self.do_point_env, StepId.DOCTOR: self.do_doctor,
        }

    # -- helpers -------------------------------------------------------------------------
    def step(self, step_id: str) -> Step:
        return next(s for s in self.plan.steps if s.id == step_id)

    def steps_of(self, phase: str) -> list[Step]:
        return [s for s in self.plan.steps if s.phase == phase]

    def tool(self, where: str, *args: str, stdin: Any = None, config: bool = False,
             ok_codes: tuple[int, ...] = (0,)) -> dict[str, Any]:
        h = self.plan.host(where)
        cfg_file = self.temp_config(where) if config else None
        result, _ = remote.run_tool(self.ctx[where], h, *args, stdin=stdin,
                                    config_file=cfg_file, ok_codes=ok_codes)
        return result

    def run_plan_step(self, step: Step, values: Mapping[str, str] | None = None,
                      ok_codes: tuple[int, ...] = (0,), **extra: Any) -> dict[str, Any]:
        """Run the step's own command on its host: the argv the plan shows, filled in."""
        where = step.host_key
        h = self.plan.host(where)
        cfg_file = self.temp_config(where) if step.config else None
        stdin = {"config": h.settings_overrides(), **extra} if step.stdin else None
        result, _ = remote.run_argv(self.ctx[where], h, step.argv(h, cfg_file, values),
                                    stdin=stdin, ok_codes=ok_codes)
        return result

    def step_tool(self, where: str, action: str, *args: str, **extra: Any) -> dict[str, Any]:
        h = self.plan.host(where)
        return self.tool(where, "migrate-step", action, *args, "--stdin", "--json",
                         stdin={"config": h.settings_overrides(), **extra})

    def temp_config(self, where: str) -> str | None:
        with self.lock:  # steps run in threads in the downtime window
            if where in self.temp_configs:
                return self.temp_configs[where]
            data = self.config_content(where)
            if not data["clawdie"]:
                return None
            path = remote.write_temp_config(self.ctx[where], self.plan.host(where), data)
            self.temp_configs[where] = path
            # in the journal too: a run killed outright leaves it for the next run to remove
            self.journal.set("temp_configs", {**self.journal.data.get("temp_configs", {}),
                                              path: self.plan.host(where).name})
            return path

    def config_content(self, where: str) -> dict[str, Any]:
        h = self.plan.host(where)
        content = h.settings_overrides()
        if where == "old":
            # replicate on the old host learns the new host's layout from this entry.
            nf = self.facts["new"]
            st = nf["settings"]
            content["hosts"] = {self.plan.new.name: {
                "ssh": self.plan.new.reach_from_peer, "root": nf["root"],
                "overrides": {"home": nf["home"], "zfs_pool": st["zfs_pool"],
                              "zfs_prefix": st["zfs_prefix"], "jails": st["jails"],
                              "jail_name": st["jail_name"], "zfs": st["zfs"],
                              "commands": st["commands"]}}}
        return {"clawdie": content}

    def run_step(self, step: Step, *, always: bool = False, quiet: bool = False
                 ) -> dict[str, Any]:
        if not always and self.journal.done(step.id):
            self.skipped.append(step.id)
            self.out.note(f"[dim]skip {step.id}: done in an earlier run[/]")
            return self.journal.result(step.id)
        started = time.monotonic()
        if step.phase == "preflight":
            self.started = step
        label = f"{step.id}: {self.plan.label(step.where)}"
        act = self.actions.get(step.id, self.run_plan_step)
        if quiet:  # a step in a background thread: one live spinner at a time
            result = act(step)
            self.out.note(f"[green]✓[/] {label} [dim]({time.monotonic() - started:.1f}s)[/]")
        else:
            with self.out.step(label):
                result = act(step)
        if not self.opts.dry_run:  # a dry run leaves no trace, not even in the journal
            self.journal.record(step.id, result, time.monotonic() - started)
        return result

    # -- phase 1 -------------------------------------------------------------------------
    def do_connect(self, step: Step) -> dict[str, Any]:
        out = {}
        for where in ("old", "new"):
            h = self.plan.host(where)
            if where not in self.ctx:
                self.ctx[where] = remote.context_for(
                    self.c, h, self.cfg, accept_new_host_key=self.opts.accept_new_host_key)
            accepted = remote.accepted_keys(self.ctx[where])
            if accepted:
                self.warnings.append(f"accepted and recorded the new host key of {h.label}: "
                                     f"{', '.join(accepted)}")
            out[where] = "local" if h.local else "ssh, host key known"
        self.remove_stale_configs()
        return out

    def remove_stale_configs(self) -> None:
        """Temporary config files of an earlier run that was killed before its cleanup."""
        if self.opts.dry_run:
            return
        for path, name in dict(self.journal.data.get("temp_configs") or {}).items():
            where = next((w for w in ("old", "new") if self.plan.host(w).name == name), None)
            if where is not None:
                self.remove_config(where, path, "the earlier run's temporary config")

    def remove_config(self, where: str, path: str, what: str) -> None:
        """Remove a temporary config file on a host, and its entry in the journal."""
        try:
            remote.remove_temp_config(self.ctx[where], self.plan.host(where), path)
        except ClawdieError as exc:
            self.warnings.append(f"could not remove {what} {path} on "
                                 f"{self.plan.host(where).label}: {exc.message}")
            return
        left = dict(self.journal.data.get("temp_configs") or {})
        if left.pop(path, None) is not None:
            self.journal.set("temp_configs", left)

    def do_tools(self, step: Step) -> dict[str, Any]:
        """clawdie-ops on each remote host: found, or this version installed there."""
        out: dict[str, Any] = {}
        for where, minimum in (("old", None), ("new", __version__)):
            h = self.plan.host(where)
            if h.local:
                out[where] = {"tool": "this clawdie-ops", "version": __version__,
                              "how": "present"}
                self.tool_ready.add(where)
                continue
            found = toolinstall.find(self.ctx[where], h, minimum)
            if found.path is None:
                self._refuse_install(h, found, minimum)
                found = toolinstall.install(self.ctx[where], h)
            if found.path != h.tool:
                self.set_tool(where, found.path)
            self.tool_ready.add(where)
            out[where] = found.as_dict()
        return out

    def _refuse_install(self, h: Host, found: toolinstall.Found, minimum: str | None) -> None:
        what = (f"clawdie-ops is not installed on {h.label}" if found.how == "missing" else
                f"{h.label} has clawdie-ops {found.version}, older than this {minimum}")
        where = toolinstall.settings(h)["dir"]
        if self.opts.dry_run:
            raise MigrationFailed(
                f"{what}: the real run installs clawdie-ops {__version__} there ({where}) "
                "before its checks", "a dry run changes nothing, so that host's checks wait "
                f"for the real run (or install clawdie-ops {__version__} there yourself)")
        if not self.opts.install:
            raise MigrationFailed(f"{what}, and --no-install was given",
                                  f"install clawdie-ops {__version__} there, or run again "
                                  "without --no-install")

    def set_tool(self, where: str, path: str) -> None:
        """From now on, run `path` as clawdie-ops on that host (the plan shows it too)."""
        host = dataclasses.replace(self.plan.host(where), tool=shlex.quote(path))
        if where == "old":
            self.plan.old = host
        else:
            self.plan.new = host
        self.plan.steps = make_steps(self.cfg, self.plan.old, self.plan.new, self.opts)

    def do_check_old(self, step: Step) -> dict[str, Any]:
        facts = self.run_plan_step(step, want_db_env=True)
        self.db_env = dict(facts.pop("db_env", {}) or {})
        self.facts["old"] = facts
        if "old_agent_ran" not in self.journal.data and not self.opts.dry_run:
            # as found before this migration changed anything: what a rollback restores
            self.journal.set("old_agent_ran", bool(facts.get("agent_running")))
        return _summary(facts)

    def do_check_new(self, step: Step) -> dict[str, Any]:
        facts = self.run_plan_step(step, env=self.db_env)
        facts.pop("db_env", None)
        self.facts["new"] = facts
        return _summary(facts)

    def do_evaluate(self, step: Step) -> dict[str, Any]:
        ours = bool(self.journal.data.get("touched_new"))
        self.checks = migrate_checks.evaluate(self.facts["old"], self.facts["new"],
                                              new_name=self.plan.new.name,
                                              force=self.opts.force, ours=ours)
        failed = migrate_checks.failures(self.checks)
        for ch in self.checks:
            if ch.status == "warn":
                self.warnings.append(f"{ch.name}: {ch.detail}")
        if failed:
            raise MigrationFailed(
                "preflight refused the migration: " + "; ".join(
                    f"{ch.name}: {ch.detail}" for ch in failed),
                failed[0].fix + "; nothing was changed on either host")
        return {"checks": [ch.as_dict() for ch in self.checks]}

    def preflight(self) -> None:
        for step in self.steps_of("preflight"):
            self.run_step(step, always=True)

    # -- phase 2 and 3 -------------------------------------------------------------------
    def do_replicate(self, step: Step) -> dict[str, Any]:
        self.journal.set("touched_new", True)
        return self.run_plan_step(step)


    def do_stop_old_agent(self, step: Step) -> dict[str, Any]:
        stopped_at = time.time()
        result = self.run_plan_step(step)
        # A run killed during the stop finds the agent already stopped: the journal knows
        # it ran when the migration began.
        ran = bool(result.get("was_running")) or bool(self.journal.data.get("old_agent_ran"))
        self.journal.window.update(state="open", agent_stopped_at=stopped_at,
                                   agent_was_running=ran)
        self.journal.save()
        return {**result, "stopped_at": stopped_at}


    def _files(self, where: str) -> transfer.Files:
        h = self.plan.host(where)
        if h.local:
            return transfer.LocalFiles(h.name)

        def connect() -> Any:
            return remote.context_for(self.c, h, self.cfg,
                                      accept_new_host_key=self.opts.accept_new_host_key)
        return transfer.SftpFiles(connect, h.name)

    def do_copy(self, step: Step) -> dict[str, Any]:
        backup = self.journal.result("final-backup")
        src = str(backup["archive"])
        dest = str(Path(self.facts["new"]["backup_dir"]) / Path(src).name)
        self.journal.set("touched_new", True)
        # partial copies of archives from rolled-back windows are never to be resumed
        earlier = [d for d in self.journal.data.get("copy_dests") or [] if d != dest]
        self.journal.set("copy_dests", [*earlier, dest])

        def verify(path: str) -> tuple[str, int]:
            if self.plan.new.local:
                return transfer.local_sha256(path)
            got = self.run_plan_step(step, {"<path>": path})
            return str(got["sha256"]), int(got["size"])

        def retrying(attempt: int, why: str) -> None:
            self.out.warn(f"copy attempt {attempt} failed ({why}); resuming")

        result = transfer.copy(self._files("old"), src, self._files("new"), dest,
                               size=int(backup["size"]), sha256=str(backup["sha256"]),
                               verify=verify, retries=self.opts.retries,
                               discard=tuple(d + ".partial" for d in earlier), on_retry=retrying)
        self.journal.set("copy_dests", [dest])
        return result.as_dict()

    def do_restore(self, step: Step) -> dict[str, Any]:
        archive = self.journal.result("copy-archive")["dest"].split(":", 1)[1]
        return self.run_plan_step(step, {"<archive>": archive})

    def do_point_env(self, step: Step) -> dict[str, Any]:
        result = self.run_plan_step(step)
        old_ids = {db.get("identity") for db in self.facts["old"].get("databases", {}).values()}
        for key, db in (result.get("databases") or {}).items():
            if db.get("identity") in old_ids:
                raise MigrationFailed(
                    f"after the restore, the new host's .env points {key}_db at "
                    f"{db.get('host')}:{db.get('port')}, which is the OLD host's PostgreSQL "
                    f"(system identifier {db.get('identity')})",
                    f"set clawdie.hosts.{self.plan.new.name}.overrides.db_host to the new "
                    "host's own PostgreSQL and run the same command again")
            if not db.get("identity"):
                raise MigrationFailed(
                    f"after the restore, the new host cannot reach {key}_db with its .env: "
                    f"{db.get('error', '?')}", "check the new host's db jail and .env")
        return result

    def do_doctor(self, step: Step) -> dict[str, Any]:
        result = self.run_plan_step(step, ok_codes=(0, 1, 2))
        failed = [ch for ch in result.get("checks", []) if ch.get("status") == "fail"]
        if failed:
            raise MigrationFailed(
                "doctor on the new host failed: " + "; ".join(
                    f"{ch['name']}: {ch['detail']}" for ch in failed),
                failed[0].get("fix") or "see `clawdie-ops doctor` on the new host")
        healthy_at = time.time()
        self.journal.window.update(healthy_at=healthy_at)
        self.journal.save()
        for ch in result.get("checks", []):
            if ch.get("status") == "warn":
                self.warnings.append(f"doctor on the new host: {ch['name']}: {ch['detail']}")
        return {**result, "healthy_at": healthy_at}

    def enter_window(self) -> None:
        """Decide where the downtime window starts: from the top, or where it was cut."""
        w = self.journal.window
        done = [s for s in DOWNTIME if self.journal.done(s)]
        if not done:
            return
        if w.get("state") == "open" and self.journal.done("stop-old-agent"):
            status = self.step_tool("old", "agent-status")
            if not status.get("running"):
                self.journal.note("resumed the downtime window", steps_done=done)
                self.out.warn("continuing the downtime window of an earlier run (the agent "
                              "on the old host is still stopped)")
                return
            self.out.warn("the agent runs again on the old host since the earlier run: the "
                          "downtime window starts over")
        self.journal.forget(list(DOWNTIME))
        self.journal.window.clear()
        self.journal.save()

    def downtime(self) -> None:
        self.enter_window()
        current = self.step(DOWNTIME[0])
        try:
            self.run_step(current)
            with ThreadPoolExecutor(max_workers=1) as pool:
                sync = pool.submit(self.run_step, self.step("final-sync"), quiet=True)
                try:
                    for step_id in ALONGSIDE_SYNC:
                        current = self.step(step_id)
                        self.run_step(current)
                finally:
                    wait([sync])  # never roll back while syncoid still reads the old host
                current = self.step("final-sync")
                sync.result()
            for step in self.steps_of("downtime"):
                if step.id not in ("stop-old-agent", "final-sync", *ALONGSIDE_SYNC):
                    current = step
                    self.run_step(step)
        except (Exception, KeyboardInterrupt, Terminated) as exc:  # noqa: BLE001 - whatever it was,
            self.rollback(current, exc)                # the old host's agent comes back

    # -- failure -------------------------------------------------------------------------
    def rollback(self, failed: Step, exc: BaseException) -> None:
        undone: list[str] = []
        problems: list[str] = []
        if self.journal.done("start-new-agent") or failed.id in ("start-new-agent", "doctor"):
            try:
                self.step_tool("new", "agent-stop")
                undone.append("stopped the agent on the new host")
            except ClawdieError as err:
                problems.append(f"could not stop the agent on the new host: {err.message}")
        ran = self.journal.window.get("agent_was_running",
                                      self.journal.data.get("old_agent_ran", True))
        if ran:
            try:
                started = self.step_tool("old", "agent-start").get("started")
                undone.append("started the agent on the old host again" if started else
                              "the agent on the old host was still running")
            except ClawdieError as err:
                problems.append(f"COULD NOT start the agent on the old host: {err.message}; "
                                f"start it by hand there: clawdie-ops migrate-step agent-start")
        self.journal.window["state"] = "rolled_back"
        self.journal.save()
        raise self.failure(failed, exc, undone, problems)

    def failure(self, failed: Step, exc: BaseException, undone: list[str] | None = None,
                problems: list[str] | None = None) -> MigrationFailed:
        if isinstance(exc, ClawdieError):
            why = exc.message
        elif isinstance(exc, (KeyboardInterrupt, Terminated)):
            why = "interrupted"
        else:
            why = f"{type(exc).__name__}: {exc}"
        hint = exc.hint if isinstance(exc, ClawdieError) else ""
        self.journal.data.update(status="failed", failed_step=failed.id, error=why)
        self.journal.note("failed", step=failed.id, error=why)
        report = self.report("failed", failed=failed, error=why, undone=undone or [],
                             problems=problems or [])
        if failed.phase == "downtime":
            old_state = "; ".join(problems) if problems else \
                "the old host's agent runs again and nothing there was changed"
        elif failed.id == "tools":
            old_state = "nothing else was changed on either host"
        elif failed.phase == "preflight":
            old_state = "nothing was changed on either host"
        else:
            old_state = "the agent kept running on the old host and nothing there was changed"
        err = MigrationFailed(
            f"migration stopped at '{failed.id}' on {self.plan.label(failed.where)}: {why}; "
            f"{old_state}",
            (hint + "; " if hint else "") + "then run the same command again: it continues "
            "where it stopped")
        err.report = report  # type: ignore[attr-defined]
        return err

    def new_holds(self) -> dict[str, Any]:
        """What the new host holds now, from the journal and a fresh read-only check."""
        holds: dict[str, Any] = {
            "datasets_received": self.journal.done("presync") or self.journal.done("final-sync"),
            "archive": (self.journal.result("copy-archive").get("dest", "").split(":", 1)[-1]
                        if self.journal.done("copy-archive") else None),
            "restored": self.journal.done("restore"),
            "env_pointed": self.journal.done("point-env"),
            "schedule_paused": self.journal.done("pause-new-schedule")
            and not self.journal.done("resume-new-schedule"),
        }
        if "new" in self.ctx and "new" in self.tool_ready:
            try:
                facts = self.step_tool("new", "check", "--role", "target", env=self.db_env)
                holds["agent_running"] = facts.get("agent_running")
                holds["datasets"] = {d: i.get("snapshots", [])[:1] for d, i in
                                     (facts.get("zfs") or {}).get("datasets", {}).items()
                                     if i.get("exists")}
                holds["messages_db"] = (facts.get("sqlite") or {}).get("present", False)
            except ClawdieError as err:
                holds["unreadable"] = err.message
        return holds

    def old_agent_running(self) -> bool | None:
        """Read again, for the report; None when the old host cannot be asked."""
        if "old" not in self.ctx or "old" not in self.tool_ready:
            return None
        try:
            return bool(self.step_tool("old", "agent-status").get("running"))
        except ClawdieError:
            return None

    # -- report --------------------------------------------------------------------------
    def report(self, status: str, failed: Step | None = None, error: str = "",
               undone: list[str] | None = None, problems: list[str] | None = None
               ) -> dict[str, Any]:
        j = self.journal
        w = j.window
        backup = j.result("final-backup")
        syncs = [j.result(s) for s in ("presync", "final-sync") if j.done(s)]
        stopped, healthy = w.get("agent_stopped_at"), w.get("healthy_at")
        steps = []
        for s in self.plan.steps:
            rec = j.steps.get(s.id) or {}
            state = ("skipped (done earlier)" if s.id in self.skipped else
                     "done" if rec.get("status") == "done" else
                     "failed" if failed and s.id == failed.id else "not run")
            steps.append({"id": s.id, "phase": s.phase, "where": s.where, "status": state,
                          "seconds": rec.get("seconds")})
        datasets = {}
        for sync in syncs:
            for d in sync.get("datasets", []):
                entry = datasets.setdefault(d.get("source"), {"target": d.get("target"),
                                                              "bytes": 0, "sends": []})
                entry["bytes"] += d.get("bytes") or 0
                entry["sends"].append(d.get("mode"))
        data: dict[str, Any] = {
            "status": status, "from": host_dict(self.plan.old), "to": host_dict(self.plan.new),
            "resumed": self.resumed, "skipped": self.skipped, "journal": str(self.plan.journal),
            "downtime_s": round(healthy - stopped, 3) if stopped and healthy else None,
            "agent_stopped_at": _iso(stopped), "healthy_at": _iso(healthy),
            "moved": {
                "items": backup.get("items", []),
                "archive": {"old": backup.get("archive"), "size": backup.get("size"),
                            "sha256": backup.get("sha256"),
                            "new": (j.result("copy-archive").get("dest") or "").split(":", 1)[-1]
                            or None},
                "tables": backup.get("tables", {}),
                "datasets": datasets,
                "dataset_bytes": sum(d["bytes"] for d in datasets.values()),
            },
            "copy": {k: v for k, v in j.result("copy-archive").items()
                     if k in ("attempts", "resumed_from", "bytes_sent", "seconds",
                              "already_there", "errors")},
            "restore": {k: v for k, v in j.result("restore").items()
                        if k in ("items", "connections", "safety", "duration_s")},
            "env_changes": j.result("point-env").get("changed", {}),
            "tools": j.result("tools"),
            "doctor": j.result("doctor").get("status"),
            "checks": [ch.as_dict() for ch in self.checks],
            "steps": steps, "warnings": self.warnings,
            "rollback": self.rollback_howto(status),
        }
        if status == "failed":
            data.update(stopped_at=failed.id if failed else None,
                        stopped_on=self.plan.label(failed.where) if failed else None,
                        error=error, undone=undone or [], problems=problems or [],
                        old_host={"agent_restarted": "started the agent on the old host again"
                                  in (undone or []),
                                  "agent_running": self.old_agent_running(),
                                  "changed": "nothing",
                                  "added": ([backup.get("archive")] + list(
                                      backup.get("snapshots") or [])
                                      if j.done("final-backup") else [])},
                        new_host=self.new_holds())
        return data

    def rollback_howto(self, status: str) -> list[str]:
        old, new = self.plan.old, self.plan.new
        if status != "done":
            return [f"the old host {old.label} stays the live one; run the same migrate "
                    "command again to continue"]
        return [f"on {new.label}: {new.tool} migrate-step agent-stop",
                f"on {new.label}: {new.tool} migrate-step schedule-pause",
                f"on {old.label}: {old.tool} migrate-step schedule-resume",
                f"on {old.label}: {old.tool} migrate-step agent-start",
                "the old host's data was not changed: it is live again as it was at the "
                "agent stop (what the agent wrote on the new host since is not carried back)"]

    # -- the whole run -------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        if self.opts.dry_run:
            return self.dry_run()
        if self.journal.data.get("status") == "done" and not self.opts.restart:
            stored = dict(self.journal.data.get("report") or {})
            stored["note"] = ("this migration was completed earlier; pass --restart to run "
                              "it again")
            return stored
        if not self.opts.yes and not sys.stdin.isatty():
            raise Aborted(f"migrate {self.plan.old.name} -> {self.plan.new.name} needs "
                          "confirmation, and there is no terminal to ask",
                          "read the plan (--dry-run), then run it again with --yes")
        previous = signal.signal(signal.SIGTERM, _interrupt)
        self.journal.data["runs"] = self.journal.data.get("runs", 0) + 1
        self.journal.data["status"] = "running"
        self.journal.save()
        try:
            try:
                self.preflight()
            except (ClawdieError, KeyboardInterrupt, Terminated, OSError) as exc:
                raise self.failure(self.current_preflight_step(), exc) from None
            if not self.opts.yes:
                self.ask()
            for step in self.steps_of("presync"):
                try:
                    self.run_step(step)
                except (Exception, KeyboardInterrupt, Terminated) as exc:  # noqa: BLE001 - reported
                    raise self.failure(step, exc) from None
            self.downtime()
            self.journal.window["state"] = "closed"
            for step in self.steps_of("cutover"):
                try:
                    self.run_step(step)
                except ClawdieError as exc:
                    self.warnings.append(f"{step.id} failed: {exc.message}; do it by hand: "
                                         f"{step.command}")
            report = self.report("done")
            self.journal.data.update(status="done", report=masked(report))
            self.journal.note("done", downtime_s=report["downtime_s"])
            return report
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.cleanup()

    def ask(self) -> None:
        """The plan and the preflight's verdict, then the question."""
        from ...tasks.base import confirm

        self.out.err.print("[bold]plan:[/]")
        for line in self.plan.describe():
            self.out.err.print(f"  {line}", markup=False)
        ok = sum(1 for ch in self.checks if ch.status == "ok")
        self.out.err.print(f"[bold]preflight:[/] {ok} checks ok", highlight=False)
        for ch in self.checks:
            if ch.status != "ok":
                self.out.err.print(f"  {ch.status}: {ch.name}: {ch.detail}", markup=False)
        try:
            confirm(f"Migrate {self.plan.old.label} to {self.plan.new.label}? The agent "
                    "stops on the old host during the downtime window", False)
        except Aborted:
            self.journal.data["status"] = "not confirmed"
            self.journal.save()
            raise

    def current_preflight_step(self) -> Step:
        return self.started if self.started.phase == "preflight" else self.step("evaluate")

    def dry_run(self) -> dict[str, Any]:
        """The plan, then the read-only preflight: nothing changes on either host."""
        data: dict[str, Any] = {"dry_run": True, "plan": self.plan.as_dict(),
                                "plan_text": self.plan.describe()}
        try:
            self.preflight()
            data["preflight"] = "ok"
        except (ClawdieError, OSError) as exc:
            data["preflight"] = exc.message if isinstance(exc, ClawdieError) else str(exc)
            data["preflight_hint"] = exc.hint if isinstance(exc, ClawdieError) else ""
        finally:
            self.cleanup()
        data["checks"] = [ch.as_dict() for ch in self.checks]
        data["warnings"] = self.warnings
        data["commands"] = self.plan.commands()  # after the tools step found each host's
        return data

    def cleanup(self) -> None:
        for where, path in list(self.temp_configs.items()):
            self.remove_config(where, path, "the temporary config")
            self.temp_configs.pop(where, None)
        for ctx in self.ctx.values():
            remote.close(ctx)
        self.ctx.clear()


def _interrupt(signum: int, frame: Any) -> None:
    # SIGTERM in the downtime window must roll back like Ctrl-C does.
    raise Terminated


def run(c, cfg: Mapping[str, Any], opts: Options, out: Reporter, home: Path) -> dict[str, Any]:
    plan = make_plan(cfg, opts, home)
    if opts.dry_run:
        return Migration(c, cfg, plan, opts, out).run()
    # One migration of a host at a time (either end); on each host, its backup and restore
    # take that installation's lock as well.
    state = Path(str(cfg.get("state_dir") or "/var/tmp/clawdie-ops"))
    state = home / str(state)[2:] if str(state).startswith("~/") else state
    with ExitStack() as held:
        for name in sorted({plan.old.name, plan.new.name}):
            held.enter_context(locks.hold(locks.host(state, name)))
        return Migration(c, cfg, plan, opts, out).run()
