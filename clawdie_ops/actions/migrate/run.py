"""`migrate`: move an installation to new hardware by running clawdie-ops on both hosts.

The plan is data (plan.py): every step names its host and the exact command it runs, and
prints in full with --dry-run (secrets masked). Running it goes through four phases:
1. preflight on both hosts, read-only (hosts/facts.py gathers, checks.py decides);
2. live pre-sync of the jail datasets while the agent still runs (`replicate`);
3. the downtime window: stop the agent on the old host, final `backup`, final incremental
   `replicate`, copy the archive (hosts/transfer.py: resumed, checksum verified on arrival),
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

import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from collections.abc import Callable, Mapping

from invoke import Context

from ... import __version__, locks
from . import journal as journal_mod, checks as migrate_checks
from ...hosts import remote, install as toolinstall, transfer
from ...errors import Aborted, ClawdieError, MigrationFailed, Terminated
from ...config.inventory import Host
from ...config.masking import masked
from . import delta, outcome, pgmove, rollback
from .session import HostSession
from .plan import (ALONGSIDE_SYNC, BESIDE_JAILS, BESIDE_SYNC, DOWNTIME, Options, Plan, Step,
                   StepId, make_plan)
from ...output import Reporter, confirm


def after_sync(steps: list[Step]) -> list[list[Step]]:
    """The window's steps after the final sync, in runs: each alone, but start-new-jails with
    BESIDE_JAILS when no restore comes before them."""
    ids = [s.id for s in steps]
    if StepId.START_NEW_JAILS not in ids or StepId.RESTORE in ids:
        return [[s] for s in steps]
    beside = [s for s in steps if s.id in BESIDE_JAILS]
    return [[s, *beside] if s.id == StepId.START_NEW_JAILS else [s]
            for s in steps if s not in beside]


def _summary(facts: dict[str, Any]) -> dict[str, Any]:
    """What the journal keeps of a host's facts (they are read again on every run)."""
    return {k: facts.get(k) for k in ("hostname", "tool_version", "root", "backup_dir")}


class Migration(HostSession):
    """Runs a plan, phase by phase, step by step, with the journal; on the two hosts through
    HostSession (session.py); stopping is rollback.py's, the report outcome.py's."""

    def __init__(self, c: Context, cfg: Mapping[str, Any], plan: Plan, opts: Options,
                 out: Reporter) -> None:
        super().__init__(c, cfg, plan, opts, journal_mod.Journal.open(
            plan.journal, {"from": [plan.old.name, plan.old.ssh],
                           "to": [plan.new.name, plan.new.ssh]}, restart=opts.restart))
        self.out = out
        self.db_env: dict[str, str] = {}  # the old .env's database settings: memory only
        self.checks: list[migrate_checks.Check] = []
        self.skipped: list[str] = []
        self.started: Step = plan.steps[0]  # the preflight step running, for its failure
        # Preflight runs every time; a run "continues" when later steps were done before.
        self.resumed = any(self.journal.done(s.id) for s in plan.steps
                           if s.phase != "preflight")
        # What each step does beyond running its own command (run_plan_step) on its host.
        self.actions: dict[StepId, Callable[[Step], dict[str, Any]]] = {
            StepId.CONNECT: self.do_connect, StepId.TOOLS: self.do_tools,
            StepId.CHECK_OLD: self.do_check_old, StepId.CHECK_NEW: self.do_check_new,
            StepId.EVALUATE: self.do_evaluate, StepId.PRESYNC: self.do_replicate,
            StepId.STOP_OLD_AGENT: self.do_stop_old_agent, StepId.FINAL_SYNC: self.do_replicate,
            StepId.COPY_ARCHIVE: self.do_copy, StepId.TRUST_OLD_KEY: self.do_trust_key,
            StepId.RESTORE: self.do_restore,
            StepId.POINT_ENV: self.do_point_env, StepId.DOCTOR: self.do_doctor,
            StepId.START_NEW_JAILS: self.do_start_new_jails,
            **delta.actions(self),
            StepId.CHECK_NEW_DB: lambda step: pgmove.check_new(self, step),
        }

    # -- helpers -------------------------------------------------------------------------
    def step(self, step_id: str) -> Step:
        return next(s for s in self.plan.steps if s.id == step_id)

    def steps_of(self, phase: str) -> list[Step]:
        return [s for s in self.plan.steps if s.phase == phase]

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
            if found.path is not None and found.path != h.tool:
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
                                              force=self.opts.force, ours=ours,
                                              aside_suffix=self.opts.aside_suffix)
        self.checks = pgmove.stopped_by_us(self.checks, self.journal.window,
                                           self.journal.done("stop-old-db"))
        failed = migrate_checks.failures(self.checks)
        up = migrate_checks.upgrade(self.facts["old"], self.facts["new"])
        if up and f"PostgreSQL: {up}" not in self.plan.notes:
            self.plan.notes.append(f"PostgreSQL: {up}")
        for ch in self.checks:
            if ch.status == "warn":
                self.warnings.append(f"{ch.name}: {ch.detail}")
        chosen = pgmove.choose(self)
        if not self.opts.dry_run:
            self.journal.set("pg_path", {"path": chosen.path, "why": chosen.why})
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


    def do_start_new_jails(self, step: Step) -> dict[str, Any]:
        """The jails whose datasets were just received: named by the pool and prefix that
        replicate sent to (the new host has no .env of its own before the restore)."""
        st = self.facts["new"]["settings"]
        h = self.plan.host("new")
        return self.run_plan_step(step, config={**h.settings_overrides(),
                                                "zfs_pool": st["zfs_pool"],
                                                "zfs_prefix": st["zfs_prefix"]})

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

    def do_trust_key(self, step: Step) -> dict[str, Any]:
        """The new host trusts the old host's signing key from now on (its own backups are
        signed by a key of its own): this archive and the old host's earlier ones verify."""
        signer = (self.journal.result("final-backup").get("signed_by")
                  if self.journal.done("final-backup") else None) or {}
        public = signer.get("public") or self.facts["old"].get("signing_public", "")
        if not public and not self.journal.done("final-backup"):
            return {"trusted": False, "why": "the old host has no signing key yet (it never "
                    "made a backup), and this window makes no archive"}
        if not public:
            raise MigrationFailed("the old host's backup names no signing key",
                                  "update clawdie-ops on the old host to a version that "
                                  "signs its archives, and run the same command again")
        return self.run_plan_step(step, public=public)

    def do_restore(self, step: Step) -> dict[str, Any]:
        archive = self.journal.result("copy-archive")["dest"].split(":", 1)[1]
        files_only = pgmove.restore_values(self) if self.opts.pg_path == pgmove.DATASET else {}
        return self.run_plan_step(step, {"<archive>": archive, **files_only})

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
        if "copy-archive" not in {s.id for s in self.plan.steps}:
            # a window without an archive leaves the new host none of its own yet: not a
            # reason to go back to the old host (its schedule resumes at the cutover)
            for ch in result.get("checks", []):
                if ch.get("name") == "backups" and ch.get("status") == "fail":
                    ch["status"] = "warn"
                    ch["detail"] += (" (this migration made no archive: run clawdie-ops "
                                     "backup there once it is done)")
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

    def downtime(self) -> None:
        rollback.enter_window(self)
        current = self.step(DOWNTIME[0])
        # what must be done before the final sync starts: the agent's stop (and, when
        # PostgreSQL moves with its dataset, the row counts and the db jail's stop)
        window = self.steps_of("downtime")
        before = window[:window.index(self.step("final-sync"))]
        try:
            for current in before:
                self.run_step(current)
            beside = [s for s in self.plan.steps if s.id in BESIDE_SYNC]
            with ThreadPoolExecutor(max_workers=1 + len(beside)) as pool:
                sync = pool.submit(self.run_step, self.step("final-sync"), quiet=True)
                others = [(s, pool.submit(self.run_step, s, quiet=True)) for s in beside]
                try:
                    for current in [s for s in window if s.id in ALONGSIDE_SYNC]:
                        self.run_step(current)
                finally:
                    # never roll back while syncoid (or the final-files pass) still reads
                    # the old host
                    wait([sync, *(f for _, f in others)])
                current = self.step("final-sync")
                sync.result()
                for step, future in others:
                    current = step  # the step a failure names
                    future.result()
            after = [s for s in window if s not in before and s.id not in (
                "final-sync", *ALONGSIDE_SYNC, *BESIDE_SYNC)]
            for group in after_sync(after):
                current = group[0]
                if len(group) == 1:
                    self.run_step(current)
                    continue
                with ThreadPoolExecutor(max_workers=len(group)) as pool:
                    futures = [(s, pool.submit(self.run_step, s, quiet=True)) for s in group]
                    wait([f for _, f in futures])  # both done before any rollback
                for step, future in futures:
                    current = step
                    future.result()
        except (Exception, KeyboardInterrupt, Terminated) as exc:  # noqa: BLE001 - whatever it was,
            rollback.roll_back(self, current, exc)  # the old host's agent comes back

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
                raise rollback.failure(self, self.current_preflight_step(), exc) from None
            if not self.opts.yes:
                self.ask()
            for step in self.steps_of("presync"):
                try:
                    self.run_step(step)
                except (Exception, KeyboardInterrupt, Terminated) as exc:  # noqa: BLE001 - reported
                    raise rollback.failure(self, step, exc) from None
            self.downtime()
            self.journal.window["state"] = "closed"
            for step in self.steps_of("cutover"):
                try:
                    self.run_step(step)
                except ClawdieError as exc:
                    self.warnings.append(f"{step.id} failed: {exc.message}; do it by hand: "
                                         f"{step.command}")
            report = outcome.report(self, "done")
            self.journal.data.update(status="done", report=masked(report))
            self.journal.note("done", downtime_s=report["downtime_s"])
            return report
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.cleanup()

    def ask(self) -> None:
        """The plan and the preflight's verdict, then the question."""
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
        data["plan_text"] = self.plan.describe()  # with what the preflight learned (notes)
        data["plan"] = self.plan.as_dict()
        data["checks"] = [ch.as_dict() for ch in self.checks]
        data["warnings"] = self.warnings
        data["commands"] = self.plan.commands()  # after the tools step found each host's
        return data

def _interrupt(signum: int, frame: Any) -> None:
    # SIGTERM in the downtime window must roll back like Ctrl-C does.
    raise Terminated


def run(c: Context, cfg: Mapping[str, Any], opts: Options, out: Reporter,
        home: Path) -> dict[str, Any]:
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
