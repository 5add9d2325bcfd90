"""The migration plan as data: every step, the host it runs on and its exact command.

Decided before anything connects (make_plan), printed in full by --dry-run, and rebuilt
only when the preflight finds where clawdie-ops runs on a host (make_steps).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any
from collections.abc import Mapping

from ... import __version__, runner
from ...config import inventory
from . import journal as journal_mod, pgmove
from ...hosts import remote, install as toolinstall
from ...errors import ConfigError
from ...config.inventory import Host
from ...config.masking import masked
from ...steps import fill

PHASES = {
    "preflight": "1 preflight on both hosts (read-only, but for installing clawdie-ops)",
    "presync": "2 live pre-sync (the agent keeps running on the old host)",
    "downtime": "3 downtime window (the agent is stopped)",
    "cutover": "4 cutover and report",
}


class StepId(StrEnum):
    """The migration's steps; the journal keeps each one's result under its value."""

    CONNECT = "connect"
    TOOLS = "tools"
    CHECK_OLD = "check-old"
    CHECK_NEW = "check-new"
    EVALUATE = "evaluate"
    PAUSE_NEW_SCHEDULE = "pause-new-schedule"
    PRESYNC = "presync"
    STOP_OLD_AGENT = "stop-old-agent"
    FINAL_SYNC = "final-sync"
    FINAL_BACKUP = "final-backup"
    COPY_ARCHIVE = "copy-archive"
    START_NEW_JAILS = "start-new-jails"
    TRUST_OLD_KEY = "trust-old-key"
    RESTORE = "restore"
    POINT_ENV = "point-env"
    START_NEW_AGENT = "start-new-agent"
    DOCTOR = "doctor"
    PAUSE_OLD_SCHEDULE = "pause-old-schedule"
    RESUME_NEW_SCHEDULE = "resume-new-schedule"
    # PostgreSQL moving with the db jail's dataset (pgmove.py)
    PG_COUNT_OLD = "pg-count-old"
    STOP_OLD_DB = "stop-old-db"
    CHECK_NEW_DB = "check-new-db"
    # messages.db and the files by what changed (actions/migrate/delta.py)
    PRESYNC_FILES = "presync-files"
    FINAL_FILES = "final-files"
    INSTALL_FILES = "install-files"


DOWNTIME = (StepId.STOP_OLD_AGENT, StepId.FINAL_SYNC, StepId.FINAL_FILES, StepId.FINAL_BACKUP,
            StepId.COPY_ARCHIVE, StepId.START_NEW_JAILS, StepId.TRUST_OLD_KEY, StepId.RESTORE,
            StepId.INSTALL_FILES, StepId.POINT_ENV, StepId.START_NEW_AGENT, StepId.DOCTOR,
            StepId.PG_COUNT_OLD, StepId.STOP_OLD_DB, StepId.CHECK_NEW_DB)
# final-sync runs alongside these two: ZFS streams on one side, PostgreSQL, SQLite and the
# archive on the other, so the window is as long as the slower of the two, not their sum.
# (The datasets themselves go one after the other: parallel receives failed on zfs-fuse.)
ALONGSIDE_SYNC = (StepId.FINAL_BACKUP, StepId.COPY_ARCHIVE)
# ... and these in a thread of their own beside both (when the plan has them): the old
# host's page hashing and the new host's checks need neither the archive nor the datasets.
BESIDE_SYNC = (StepId.FINAL_FILES,)
# ... and after it, beside start-new-jails when no restore comes between them (the databases
# moved with the db jail's dataset): files put into place on the host, not in a jail.
BESIDE_JAILS = (StepId.INSTALL_FILES,)
CONFIG_PLACEHOLDER = "<tmp>/config.json"


@dataclass(frozen=True)
class Step:
    id: StepId
    phase: str
    where: str  # "old", "new" or "here" (the operator's machine)
    command: str  # what a person reads: the command line, or what happens here
    why: str
    # The clawdie-ops task it runs on `where` (after the tool's own argv); <placeholders>
    # are filled when it runs. Empty: the step runs on the operator's machine.
    args: tuple[str, ...] = ()
    config: bool = False  # with a temporary config file (-f)
    on: str = ""  # the host `args` run on, when not `where` (copy-archive checks on "new")

    @property
    def host_key(self) -> str:
        return self.on or self.where

    @property
    def stdin(self) -> bool:
        return "--stdin" in self.args

    def argv(self, host: Host, config_file: str | None,
             values: Mapping[str, str] | None = None) -> list[str]:
        """The command this step runs on `host`, its placeholders filled."""
        return remote.tool_argv(host, *fill(self.args, dict(values or {})),
                                config_file=config_file if self.config else None)

    def planned(self, host: Host) -> list[str]:
        """The command as planned (placeholders left in): what the recorder must see."""
        return [runner.line(self.argv(host, CONFIG_PLACEHOLDER))] if self.args else []

    def as_dict(self) -> dict[str, Any]:
        return {"id": str(self.id), "phase": self.phase, "where": self.where,
                "command": self.command, "why": self.why}


@dataclass
class Options:
    to: str
    from_: str | None = None
    dry_run: bool = False
    yes: bool = False
    force: bool = False
    restart: bool = False
    accept_new_host_key: bool = False
    retries: int = 5
    install: bool = True  # install clawdie-ops where it is missing
    delta: bool = True  # messages.db and the files by what changed (False: in the archive)
    pg_dump: bool = False  # move the databases by dump and restore even where a dataset could
    pg_path: str = ""  # "dataset" or "dump": decided by the preflight (pgmove.decide)
    sync_jobs: int = 2  # jail datasets replicated at once (pre-sync and final increment)
    # the new host's own jail datasets are renamed to NAME.<aside_suffix> (kept, not reused)
    aside_suffix: str = field(default_factory=lambda: f"pre-migrate-{datetime.now():%Y%m%d-%H%M%S}")


@dataclass
class Plan:
    old: Host
    new: Host
    steps: list[Step]
    configs: dict[str, Any]  # what each host's temporary config file holds (masked)
    journal: Path
    notes: list[str] = field(default_factory=list)

    def host(self, where: str) -> Host:
        return self.old if where == "old" else self.new

    def label(self, where: str) -> str:
        return "here" if where == "here" else f"{where} {self.host(where).label}"

    def describe(self) -> list[str]:
        lines = [f"from  {self.old.label}" + ("" if self.old.in_inventory else
                                                "  (not in clawdie.hosts: its own config)"),
                 f"to    {self.new.label}" + ("" if self.new.in_inventory else
                                                "  (not in clawdie.hosts: its own config)")]
        phase = None
        for step in self.steps:
            if step.phase != phase:
                phase = step.phase
                lines.append(f"phase {PHASES[phase]}")
            lines.append(f"  [{step.id}] on {self.label(step.where)}")
            lines.append(f"      {step.command}")
            if step.why:
                lines.append(f"      ({step.why})")
        for where, content in self.configs.items():
            lines.append(f"{CONFIG_PLACEHOLDER} on {where} (0600 in a 0700 temp dir, removed "
                         f"at the end): {content}")
        lines.append(f"journal {self.journal}")
        return lines + [f"note  {n}" for n in self.notes]

    def commands(self) -> list[list[str]]:
        """Every clawdie-ops command the plan runs on the two hosts, by runs of steps: the
        final sync runs at once with the final backup and the copy (steps.planned)."""
        out: list[list[str]] = []
        for s in self.steps:
            lines = s.planned(self.host(s.host_key))
            if s.id in ALONGSIDE_SYNC and out:
                out[-1].extend(lines)  # with final-sync, just before them
            elif lines:
                out.append(lines)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"from": host_dict(self.old), "to": host_dict(self.new),
                "steps": [s.as_dict() for s in self.steps], "configs": self.configs,
                "journal": str(self.journal), "notes": self.notes}


def host_dict(h: Host) -> dict[str, Any]:
    return {"name": h.name, "ssh": h.ssh, "root": h.root, "peer_ssh": h.reach_from_peer,
            "overrides": masked(dict(h.overrides)), "in_inventory": h.in_inventory}


def replicate_args(new_name: str, aside_suffix: str, jobs: int = 1) -> list[str]:
    # --yes: no terminal there. --replace-existing sets aside (renames) what the new host
    # made itself: nothing there is destroyed, so it needs no --force. --jobs: each
    # syncoid's fixed cost is most of the final increment's time (BENCHMARKS.md, migrate)
    return ["replicate", "--to", new_name, "--replace-existing", "--aside-suffix",
            aside_suffix, "--yes", "--json", *(["--jobs", str(jobs)] if jobs > 1 else [])]


def _on(sid: StepId, phase: str, where: str, h: Host, args: list[str], why: str, *,
        config: bool = False) -> Step:
    """A step that runs clawdie-ops TASK ARGS on host `h` (`where`)."""
    line = remote.tool_command(h, *args, config_file=CONFIG_PLACEHOLDER if config else None)
    return Step(sid, phase, where, line, why, tuple(args), config)


def _tools_text(old: Host, new: Host, opts: Options) -> str:
    parts = [] if old.local else [f"on {old.name}: {toolinstall.plan_text(old, None)}"]
    parts.append(f"on {new.name}: {toolinstall.plan_text(new, __version__)}")
    return "; ".join(parts) + ("" if opts.install else " (--no-install: stop instead)")


def make_plan(cfg: Mapping[str, Any], opts: Options, home: Path) -> Plan:
    """Every step, every host, every command: decided before anything connects."""
    old = inventory.resolve(cfg, opts.from_)
    new = inventory.resolve(cfg, opts.to)
    if new.local:
        raise ConfigError(f"--to {opts.to} is this machine",
                          "run migrate on the old host or a third machine, with --to the new one")
    if old.ssh == new.ssh or old.name == new.name:
        raise ConfigError(f"--from and --to name the same host ({new.label})",
                          "pass --to the new host")
    configs = {"old": masked({"clawdie": {**old.settings_overrides(), "hosts": {new.name: {
        "ssh": new.reach_from_peer, "root": "<new root>",
        "overrides": "<the new host's pool, prefix, home, jails and command templates, "
                     "from its preflight facts>"}}}})}
    if new.settings_overrides():
        configs["new"] = masked({"clawdie": new.settings_overrides()})
    notes = []
    for h in (old, new):
        if not h.in_inventory and not h.local:
            notes.append(f"{h.name} is not in clawdie.hosts: it runs with its own config only")
    return Plan(old, new, make_steps(cfg, old, new, opts), configs,
                journal_mod.path_for(home, old.name, new.name), notes)


def make_steps(cfg: Mapping[str, Any], old: Host, new: Host, opts: Options) -> list[Step]:
    """Every step of the migration in order. Long on purpose: one table, a row per step,
    reads best whole (the runbook's order is the point)."""
    new_cfg = bool(new.settings_overrides())
    replicate = replicate_args(new.name, opts.aside_suffix, opts.sync_jobs)

    def step(sid: StepId, phase: str, where: str, action: str, why: str) -> Step:
        h = old if where == "old" else new
        return _on(sid, phase, where, h, ["migrate-step", action, "--stdin", "--json"], why)

    checksum = _on(StepId.COPY_ARCHIVE, "downtime", "here", new,
                   ["migrate-step", "checksum", "--path", "<path>", "--stdin", "--json"], "")
    return _with_delta(opts, old, new, pgmove.shape([
        Step(StepId.CONNECT, "preflight", "here",
             f"ssh {old.ssh if not old.local else '(local)'} and ssh {new.ssh}: host keys must "
             "be known" + (" (new keys accepted: --accept-new-host-key)"
                           if opts.accept_new_host_key else " (an unknown key is refused)"),
             "via the ssh config " + str(cfg.get("ssh_config") or "~/.ssh/config")),
        Step(StepId.TOOLS, "preflight", "here", _tools_text(old, new, opts),
             "the new host's restore must read this version's archives; nothing else on the "
             "host changes"),
        _on(StepId.CHECK_OLD, "preflight", "old", old,
            ["migrate-step", "check", "--role", "source", "--stdin", "--json"],
            "versions, space, ZFS, PostgreSQL, data; its overrides arrive on stdin"),
        _on(StepId.CHECK_NEW, "preflight", "new", new,
            ["migrate-step", "check", "--role", "target", "--stdin", "--json"],
            "the same, evaluated with the old .env's database settings (on stdin, never "
            "argv): the databases the restore would really use"),
        Step(StepId.EVALUATE, "preflight", "here",
             "compare: clawdie-ops and PostgreSQL versions, roles, disk space (`used` of the "
             "jail datasets), ZFS pools, jail paths, new host empty, database identity guard",
             "any failure stops here"),
        step(StepId.PAUSE_NEW_SCHEDULE, "presync", "new", "schedule-pause",
             "its scheduled jobs (clawdie.schedule) commented out: sanoid must not snapshot "
             "or prune the datasets while they are received"),
        _on(StepId.PRESYNC, "presync", "old", old, replicate,
            "syncoid -r of the jail datasets and their `root` children while the agent runs: "
            "only the increment is left; the new host's own jail datasets (runbook step 1) "
            f"are first renamed to NAME.{opts.aside_suffix}, kept until you drop them",
            config=True),
        step(StepId.STOP_OLD_AGENT, "downtime", "old", "agent-stop", "downtime starts"),
        _on(StepId.FINAL_SYNC, "downtime", "old", old, replicate,
            "the increment since the pre-sync, while final-backup and copy-archive run",
            config=True),
        _on(StepId.FINAL_BACKUP, "downtime", "old", old, ["backup", "--json"],
            "snapshot, messages.db, both databases, files", config=bool(old.settings_overrides())),
        Step(StepId.COPY_ARCHIVE, "downtime", "here",
             f"sftp {old.name}:<archive> -> {new.name}:<backup_dir>/<archive>.partial "
             f"(resumed on a dropped connection, up to {opts.retries} tries), then "
             + checksum.command + " must match the backup's sha256 before it is renamed", "",
             checksum.args, on="new"),
        step(StepId.START_NEW_JAILS, "downtime", "new", "jails-start",
             "the db jail's PostgreSQL takes the restore"),
        step(StepId.TRUST_OLD_KEY, "downtime", "new", "trust-key",
             "the old host's public signing key (from final-backup, on stdin) into the new "
             "host's trusted keys: its archives, this one and older ones, verify there"),
        _on(StepId.RESTORE, "downtime", "new", new,
            ["restore", "<archive>", "--yes", "--no-start", "--json", "--use-archive-server"],
            "signature and checksums verified first; the databases go to the new host's "
            "configured server, else its own .env's, else the old .env's (as check-new "
            "probed them); rolls itself back on failure", config=new_cfg),
        step(StepId.POINT_ENV, "downtime", "new", "env-apply",
             "its db_host/db_port/zfs_pool/zfs_prefix written into the restored .env; the "
             "database the .env now names must not be the old host's"),
        step(StepId.START_NEW_AGENT, "downtime", "new", "agent-start", ""),
        _on(StepId.DOCTOR, "downtime", "new", new, ["doctor", "--json"],
            "healthy (no failed check) ends the downtime", config=new_cfg),
        step(StepId.PAUSE_OLD_SCHEDULE, "cutover", "old", "schedule-pause",
             "scheduled backups and snapshots stop there: one live host"),
        step(StepId.RESUME_NEW_SCHEDULE, "cutover", "new", "schedule-resume", ""),
    ], opts, old, new))


def _with_delta(opts: Options, old: Host, new: Host, steps: list[Step]) -> list[Step]:
    if not opts.delta:
        return steps
    return with_delta(old, new, steps, archive=opts.pg_path != pgmove.DATASET)


# Restored from the archive when messages.db and the files move by what changed: the .env
# too, as restore chooses the databases' server by it (install-files then puts the delta's
# copy of the same .env in place; without a restore, it is the only one).
ARCHIVE_ITEMS = "env,memory_db,skills_db"


# With the databases in the db jail's dataset as well, nothing is left for an archive.
NO_ARCHIVE = (StepId.FINAL_BACKUP, StepId.COPY_ARCHIVE, StepId.RESTORE)


def with_delta(old: Host, new: Host, steps: list[Step], archive: bool = True) -> list[Step]:
    """The steps that move messages.db and the files by what changed (delta.py), put among
    the others: a live copy in the pre-sync, the changes in the window, installed after the
    restore (which then takes only the databases from the archive). `archive` False: the
    databases travel in the db jail's dataset, so the window has no archive at all."""
    def tool(h: Host, action: str) -> str:
        return remote.tool_command(h, "migrate-delta", action, "--stdin", "--json")

    presync = Step(StepId.PRESYNC_FILES, "presync", "here",
                   f"{tool(new, 'state')}; {tool(old, 'make')} (messages.db by SQLite's "
                   "backup API, .env, groups/, the allowlist); the bundle sftp'd into the new "
                   f"host's state_dir staging (sha256 checked); {tool(new, 'apply')}",
                   "a consistent copy while the agent runs, staged on the new host: its live "
                   "files are not touched until install-files")
    final = Step(StepId.FINAL_FILES, "downtime", "here",
                 "the same with the agent stopped: PRAGMA wal_checkpoint(TRUNCATE) on the old "
                 "host, then only the pages whose hash differs from the staged copy's, the new "
                 "length, and the new, changed and deleted files (size+mtime+mode+sha256)",
                 "checked on the new host: sha256 of the whole file, PRAGMA integrity_check "
                 "and row counts per table against the old host's")
    install = Step(StepId.INSTALL_FILES, "downtime", "new", tool(new, "install"),
                   "messages.db, .env, groups/ and the allowlist from staging into place; the "
                   "new host's own go to state_dir's migrate-delta/before-STAMP/ (put back by "
                   "`migrate-delta undo` if the window fails)")
    out: list[Step] = []
    for s in steps:
        if not archive and s.id in NO_ARCHIVE:
            continue
        if not archive and s.id == StepId.POINT_ENV:
            # .env from the old host, then pointed at the new server
            out.append(dataclasses.replace(install,
                                           why=install.why + "; at once with start-new-jails"))
        if s.id == StepId.FINAL_BACKUP:
            args = (*s.args, "--databases-only")
            s = Step(s.id, s.phase, s.where, remote.tool_command(
                old, *args, config_file=CONFIG_PLACEHOLDER if s.config else None),
                "snapshot, both databases, .env (messages.db and the files: final-files)",
                args, s.config, s.on)
        if s.id == StepId.RESTORE:
            args = (*s.args, "--only", ARCHIVE_ITEMS)
            s = Step(s.id, s.phase, s.where, remote.tool_command(
                new, *args, config_file=CONFIG_PLACEHOLDER if s.config else None),
                s.why + "; only the databases: messages.db and the files come by "
                "install-files", args, s.config, s.on)
        out.append(s)
        if s.id == StepId.PRESYNC:
            out.append(presync)
        elif s.id == StepId.FINAL_SYNC:
            out.append(final)
        elif s.id == StepId.RESTORE:
            out.append(install)
    return out
