"""The migration plan as data: every step, the host it runs on and its exact command.

Decided before anything connects (make_plan), printed in full by --dry-run, and rebuilt
only when the preflight finds where clawdie-ops runs on a host (make_steps).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from collections.abc import Mapping

from . import __version__, inventory, journal as journal_mod, remote, toolinstall
from .errors import ConfigError
from .inventory import Host
from .masking import masked

PHASES = {
    "preflight": "1 preflight on both hosts (read-only, but for installing clawdie-ops)",
    "presync": "2 live pre-sync (the agent keeps running on the old host)",
    "downtime": "3 downtime window (the agent is stopped)",
    "cutover": "4 cutover and report",
}
DOWNTIME = ("stop-old-agent", "final-sync", "final-backup", "copy-archive", "start-new-jails",
            "restore", "point-env", "start-new-agent", "doctor")
# final-sync runs alongside these two: ZFS streams on one side, PostgreSQL, SQLite and the
# archive on the other, so the window is as long as the slower of the two, not their sum.
# (The datasets themselves go one after the other: parallel receives failed on zfs-fuse.)
ALONGSIDE_SYNC = ("final-backup", "copy-archive")
CONFIG_PLACEHOLDER = "<tmp>/config.json"


@dataclass(frozen=True)
class Step:
    id: str
    phase: str
    where: str  # "old", "new" or "here" (the operator's machine)
    command: str
    why: str


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

    def as_dict(self) -> dict[str, Any]:
        return {"from": host_dict(self.old), "to": host_dict(self.new),
                "steps": [asdict(s) for s in self.steps], "configs": self.configs,
                "journal": str(self.journal), "notes": self.notes}


def host_dict(h: Host) -> dict[str, Any]:
    return {"name": h.name, "ssh": h.ssh, "root": h.root, "peer_ssh": h.reach_from_peer,
            "overrides": masked(dict(h.overrides)), "in_inventory": h.in_inventory}


def replicate_args(new_name: str, aside_suffix: str) -> list[str]:
    # --yes: no terminal there. --replace-existing sets aside (renames) what the new host
    # made itself: nothing there is destroyed, so it needs no --force
    return ["replicate", "--to", new_name, "--replace-existing", "--aside-suffix",
            aside_suffix, "--yes", "--json"]


def step_cmd(h: Host, *args: str, config: bool = False) -> str:
    return remote.tool_command(h, *args, config_file=CONFIG_PLACEHOLDER if config else None)


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
    new_cfg = bool(new.settings_overrides())
    replicate = replicate_args(new.name, opts.aside_suffix)
    return [
        Step("connect", "preflight", "here",
             f"ssh {old.ssh if not old.local else '(local)'} and ssh {new.ssh}: host keys must "
             "be known" + (" (new keys accepted: --accept-new-host-key)"
                           if opts.accept_new_host_key else " (an unknown key is refused)"),
             "via the ssh config " + str(cfg.get("ssh_config") or "~/.ssh/config")),
        Step("tools", "preflight", "here", _tools_text(old, new, opts),
             "the new host's restore must read this version's archives; nothing else on the "
             "host changes"),
        Step("check-old", "preflight", "old",
             step_cmd(old, "migrate-step", "check", "--role", "source", "--stdin", "--json"),
             "versions, space, ZFS, PostgreSQL, data; its overrides arrive on stdin"),
        Step("check-new", "preflight", "new",
             step_cmd(new, "migrate-step", "check", "--role", "target", "--stdin", "--json"),
             "the same, evaluated with the old .env's database settings (on stdin, never "
             "argv): the databases the restore would really use"),
        Step("evaluate", "preflight", "here",
             "compare: clawdie-ops and PostgreSQL versions, roles, disk space (`used` of the "
             "jail datasets), ZFS pools, jail paths, new host empty, database identity guard",
             "any failure stops here"),
        Step("pause-new-schedule", "presync", "new",
             step_cmd(new, "migrate-step", "schedule-pause", "--stdin", "--json"),
             "its clawdie.commands.schedule_pause: sanoid must not snapshot or prune the "
             "datasets while they are received"),
        Step("presync", "presync", "old", step_cmd(old, *replicate, config=True),
             "syncoid -r of the jail datasets and their `root` children while the agent runs: "
             "only the increment is left; the new host's own jail datasets (runbook step 1) "
             f"are first renamed to NAME.{opts.aside_suffix}, kept until you drop them"),
        Step("stop-old-agent", "downtime", "old",
             step_cmd(old, "migrate-step", "agent-stop", "--stdin", "--json"),
             "downtime starts"),
        Step("final-sync", "downtime", "old", step_cmd(old, *replicate, config=True),
             "the increment since the pre-sync, while final-backup and copy-archive run"),
        Step("final-backup", "downtime", "old",
             step_cmd(old, "backup", "--json", config=bool(old.settings_overrides())),
             "snapshot, messages.db, both databases, files"),
        Step("copy-archive", "downtime", "here",
             f"sftp {old.name}:<archive> -> {new.name}:<backup_dir>/<archive>.partial "
             f"(resumed on a dropped connection, up to {opts.retries} tries), then "
             + step_cmd(new, "migrate-step", "checksum", "--path", "<path>", "--stdin",
                         "--json")
             + " must match the backup's sha256 before it is renamed", ""),
        Step("start-new-jails", "downtime", "new",
             step_cmd(new, "migrate-step", "jails-start", "--stdin", "--json"),
             "the db jail's PostgreSQL takes the restore"),
        Step("restore", "downtime", "new",
             step_cmd(new, "restore", "<archive>", "--yes", "--no-start", "--json",
                       config=new_cfg), "verified first; rolls itself back on failure"),
        Step("point-env", "downtime", "new",
             step_cmd(new, "migrate-step", "env-apply", "--stdin", "--json"),
             "its db_host/db_port/zfs_pool/zfs_prefix written into the restored .env; the "
             "database the .env now names must not be the old host's"),
        Step("start-new-agent", "downtime", "new",
             step_cmd(new, "migrate-step", "agent-start", "--stdin", "--json"), ""),
        Step("doctor", "downtime", "new", step_cmd(new, "doctor", "--json", config=new_cfg),
             "healthy (no failed check) ends the downtime"),
        Step("pause-old-schedule", "cutover", "old",
             step_cmd(old, "migrate-step", "schedule-pause", "--stdin", "--json"),
             "scheduled backups and snapshots stop there: one live host"),
        Step("resume-new-schedule", "cutover", "new",
             step_cmd(new, "migrate-step", "schedule-resume", "--stdin", "--json"), ""),
    ]
