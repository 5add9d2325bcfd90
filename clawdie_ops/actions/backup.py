"""`backup`: snapshot, dump, copy and archive an installation; plan first, act second.

Runs on the host that holds the data (Fabric runs the whole task there for a migration).
Nothing is left behind on failure: the archive is written under a temporary name and
renamed only once complete; the spool of dumps is removed either way.
"""
from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, UTC
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

import psycopg
from invoke import Context

from .. import __version__, leftovers, locks, runner
from ..zfs import commands as zfs
from ..archive import encryption, signing
from ..archive.writer import SUFFIX, ArchiveWriter
from ..config.settings import DbSpec, Settings
from ..errors import ClawdieError, ConfigError, OutputError, SourceError
from ..archive.manifest import NAME as MANIFEST, Manifest, archive_stem
from ..output import Reporter
from ..sources import files as file_source
from ..sources.postgres import commands as pg, extensions
from ..sources import sqlite
from ..steps import Step, Undo, fill, groups, planned, run_together


@dataclass
class BackupOptions:
    output: Path | None = None
    skip_skills: bool = False
    databases: bool = True  # False: no dump, no PostgreSQL (they move in the db jail's dataset)
    snapshot: bool = True
    compression: str | None = None
    dry_run: bool = False
    wait: float = 0  # seconds to wait for another run holding the installation or folder
    # the databases and .env only: migrate's window, where messages.db and the files move by
    # what changed (actions/migrate/delta.py); .env stays, restore reads the servers from it
    databases_only: bool = False


class Kind(StrEnum):
    SNAPSHOT = "snapshot"
    COPY = "copy"  # messages.db, with SQLite's online backup API
    DUMP = "dump"  # one database, at once with the copy and the other dumps


# Known only when the step runs: the private spool folder, the exported snapshot's id.
SPOOL, EXPORTED = "<spool>", "<exported-snapshot>"


@dataclass
class BackupPlan:
    archive: Path
    top: str
    compression: str
    snapshot: str | None  # "parent@name", or None with --no-snapshot
    datasets: list[str]
    databases: list[DbSpec]
    files: list[file_source.FileItem]
    key: Path  # the signing key (created by the first backup)
    recipients: list[str] = field(default_factory=list)  # age: encrypted when not empty
    notes: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)  # snapshot, then copy and dumps at once
    spool: Path | None = None  # the private folder of the copy and the dumps, while running
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)  # item -> manifest entry
    listed: list[str] = field(default_factory=list)  # file systems under the jails' parent
    sqlite: bool = True  # messages.db in the archive (not with --databases-only)

    def describe(self, s: Settings) -> list[str]:
        lines = [f"{step.kind:<10} {line}" for step in self.steps for line in step.lines]
        for item in self.files:
            lines.append(f"archive    {item.source} -> {item.name}")
        if self.key.is_file():
            lines.append(f"sign       manifest.json with {self.key} (Ed25519, "
                         f"{signing.public_of(signing.load_private(self.key)).fingerprint})")
        else:
            lines.append(f"sign       manifest.json with a new key, created at {self.key} (0600)")
        if self.recipients:
            lines.append(f"encrypt    with age to {len(self.recipients)} recipient(s): "
                         f"{', '.join(r[:16] + '…' for r in self.recipients)}")
        lines.append(f"write      {self.archive} (mode 0600, via {self.archive.name}.partial)")
        return lines + [f"note       {n}" for n in self.notes]


def _dump_action(db: DbSpec, plan: BackupPlan, dump: list[str],
                 entries: dict[str, dict[str, Any]]) -> Callable[[Context, Undo], None]:
    def act(c: Context, undo: Undo) -> None:
        entries[db.item] = dump_database(c, db, plan, dump)
    return act


def _steps(s: Settings, plan: BackupPlan, entries: dict[str, dict[str, Any]]) -> list[Step]:
    """What the backup runs before it writes the archive; each step's result lands in
    `entries` (item -> manifest entry)."""
    steps = []
    if plan.snapshot:
        parent, name = plan.snapshot.split("@")
        snap = zfs.snapshot_command(s, parent, name)
        steps.append(Step(Kind.SNAPSHOT, "", [f"{snap}  (covers {', '.join(plan.datasets)})"],
                          [snap], action=lambda c, undo: zfs.run_snapshot(c, snap, parent, name),
                          title=f"snapshot {plan.snapshot}"))
    if plan.sqlite:
        steps.append(Step(Kind.COPY, "messages.db", [
            f"{s.sqlite_path} via SQLite's online backup API, integrity_check"],
            action=lambda c, undo: entries.update({"messages.db": _copy_sqlite(s, plan)}),
            title="copy messages.db", together=True))
    for db in plan.databases:
        dump = pg.pg_dump_cmd(s, db, Path(SPOOL) / db.item, EXPORTED)
        steps.append(Step(Kind.DUMP, db.item, [f"{runner.line(dump)}  (PGPASSFILE, 0600)"],
                          [dump], action=_dump_action(db, plan, dump, entries),
                          title=f"dump {db.name}", together=True))
    return steps


def _output_dir(s: Settings, opts: BackupOptions) -> Path:
    out = (opts.output or s.backup_dir).expanduser()
    if not out.is_dir():
        raise OutputError(f"output directory does not exist: {out}",
                          "create it, or pass another with --output")
    try:  # a real write: access() says yes to root on a read-only mount
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise OutputError(f"output directory is not writable: {out} ({exc.strerror})",
                          "fix its permissions or mount, or pass another with --output") from None
    return out


def make_plan(c: Context, s: Settings, opts: BackupOptions,
              now: datetime | None = None) -> BackupPlan:
    """Decide everything (names, items, order) without changing anything."""
    if opts.databases_only and not opts.databases:
        raise ConfigError("--databases-only and --no-databases leave nothing to back up",
                          "pass one of them")
    out = _output_dir(s, opts)
    compression = opts.compression or s.compression
    when = now or datetime.now()
    stem = archive_stem(when)
    recipients = encryption.recipients(s.encryption)
    suffix = SUFFIX[compression] + (encryption.SUFFIX if recipients else "")
    existing = {p.name for p in out.iterdir()} if out.exists() else set()
    n = 1
    taken: set[str] = set()
    listed = zfs.file_systems(c, s, s.jails_parent) if opts.snapshot else None
    if listed is not None:  # one `zfs list -r` for what exists, one for the names taken
        taken = zfs.snapshot_names(c, s, s.jails_parent)
    name = stem
    while f"{name}{suffix}" in existing or name in taken:
        n += 1
        name = f"{stem}-{n}"
    files, notes = file_source.items(s)
    if opts.databases_only:
        files = [f for f in files if f.name == "env"]
        notes = ["--databases-only: messages.db, groups/ and the mount allowlist are left out"]
    plan = BackupPlan(
        archive=out / f"{name}{suffix}", top=name, compression=compression,
        snapshot=f"{s.jails_parent}@{name}" if opts.snapshot else None,
        datasets=s.datasets if opts.snapshot else [],
        databases=s.databases(opts.skip_skills) if opts.databases else [], files=files,
        key=signing.key_path(dict(s.signing), s.home), recipients=recipients, notes=notes,
        listed=listed or [], sqlite=not opts.databases_only)
    plan.steps = _steps(s, plan, plan.entries)
    return plan


@dataclass
class Preflight:
    pg_dump_version: str
    servers: dict[str, pg.ServerInfo]


def preflight(c: Context, s: Settings, plan: BackupPlan) -> Preflight:
    """Every check that can fail before anything is written."""
    if not s.env_file.is_file() or not os.access(s.env_file, os.R_OK):
        raise SourceError(f".env unreadable: {s.env_file}", "check its owner and mode")
    if not s.sqlite_path.is_file():
        raise SourceError(f"messages.db not found: {s.sqlite_path}",
                          "check --root / CLAWDIE_ROOT points at the Clawdie checkout")
    signing.check_key_outside(plan.key, plan.archive.parent)
    if plan.key.exists():
        signing.load_private(plan.key)  # readable, and a key: before any snapshot or dump
    if plan.recipients:
        encryption.tool(s.encryption)
    if plan.datasets:
        zfs.require(c, s, [s.jails_parent, *plan.datasets], plan.listed)
    servers = {}
    for db in plan.databases:
        with pg.connect(db) as conn:
            servers[db.key] = pg.server_info(conn)
    if not plan.databases:
        return Preflight("", servers)
    newest = max((i.major for i in servers.values()), default=None)
    major, version = pg.client_version(c, s, "pg_dump", newest)
    for info in servers.values():
        pg.check_dump_compatible(s, major, version, info)
    need = (s.sqlite_path.stat().st_size if plan.sqlite else 0) + \
        sum(f.source.stat().st_size for f in plan.files)
    free = shutil.disk_usage(plan.archive.parent).free
    if free < need:
        raise OutputError(f"not enough space in {plan.archive.parent}: {free} bytes free, "
                          f"the files alone need {need}", "free space or pass --output")
    return Preflight(version, servers)


def dump_database(c: Context, db: DbSpec, plan: BackupPlan, dump: list[str]) -> dict[str, Any]:
    """pg_dump inside an exported snapshot, so the row counts match the dump exactly."""
    assert plan.spool is not None
    with pg.connect(db, autocommit=False) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        snap = pg.scalar(conn, "SELECT pg_export_snapshot()")
        counts = pg.table_counts(conn)
        used = extensions.in_database(conn)
        with pg.passfile(db) as env:
            pg.run_checked(c, fill(dump, {SPOOL: str(plan.spool), EXPORTED: snap}), env,
                           f"pg_dump of {db.name} at {db.host}:{db.port}")
        conn.rollback()
    return {"kind": "postgres", "database": db.name, "user": db.user, "tables": counts,
            "extensions": used, "format": "plain"}


def run(c: Context, s: Settings, opts: BackupOptions, out: Reporter) -> dict[str, Any]:
    """The backup, holding the installation's and the backup folder's locks: a second
    backup, or a restore, waits (opts.wait) or is refused naming this one."""
    if opts.dry_run:
        return _run(c, s, opts, out)
    folder = _output_dir(s, opts)
    with ExitStack() as held:
        with out.step("lock the installation and the backup folder"):
            held.enter_context(locks.hold(locks.installation(s.state_dir, s.root), opts.wait))
            held.enter_context(locks.hold(locks.backup_dir(s.state_dir, folder), opts.wait))
        swept = leftovers.sweep(leftovers.in_backup_dir(folder) + leftovers.passfiles())
        for line in swept:
            out.warn(f"removed what a killed run left: {line}")
        result = _run(c, s, opts, out)
    result["swept"] = swept
    return result


def _run(c: Context, s: Settings, opts: BackupOptions, out: Reporter) -> dict[str, Any]:
    # Long on purpose: the backup's phases in the order they run (plan, snapshot, dumps
    # beside the writer, seal, name), each with its cleanup, read top to bottom.
    started = time.monotonic()
    with out.step("plan and preflight"):
        plan = make_plan(c, s, opts)
        pre = preflight(c, s, plan)
    if opts.dry_run:
        return {"dry_run": True, "archive": str(plan.archive), "plan": plan.describe(s),
                "commands": planned(plan.steps)}
    for note in plan.notes:
        out.warn(note)
    key, created = _signing_key(plan.key, out)
    spool = Path(tempfile.mkdtemp(prefix=".clawdie-backup-spool-", dir=plan.archive.parent))
    plan.spool = spool
    writer: ArchiveWriter | None = None
    snapshots: list[str] = []
    try:
        for group in groups(plan.steps):
            title = group[0].title if len(group) == 1 else \
                "copy messages.db and dump databases"
            with out.step(title):
                failed = run_together(c, group, Undo())  # nothing to undo: the spool goes
                if failed:
                    raise failed[1]
            if group[0].kind is Kind.SNAPSHOT and plan.snapshot:
                name = plan.snapshot.split("@")[1]
                # -r: each jail's descendants (bastille's `root`) are in it too
                snapshots = [plan.snapshot] + [f"{d}@{name}" for ds in plan.datasets
                                               for d in zfs.descendants_in(plan.listed, ds)]
        with out.step(f"write {plan.archive.name}"):
            writer = ArchiveWriter(plan.archive, plan.top, plan.compression,
                                   encryption.encrypt_cmd(s.encryption, plan.recipients)
                                   if plan.recipients else None)
            manifest = _write_items(writer, s, plan, pre, opts, snapshots)
            manifest_bytes = manifest.to_json()
            writer.add_bytes(MANIFEST, manifest_bytes, 0o644)
            # Right after the manifest: a reader checks it before using any member.
            writer.add_bytes(signing.NAME, signing.sign(key, manifest_bytes, _comment()), 0o644)
            written = writer.commit()
            writer = None
    except BaseException as exc:
        if writer is not None:
            writer.abort()
        kept = f"; snapshot {plan.snapshot} was kept" if snapshots else ""
        if _out_of_space(exc):
            detail = exc.message if isinstance(exc, ClawdieError) else str(exc)
            raise OutputError(f"{plan.archive.parent} ran out of space during the backup: {detail}",
                              "free space there or pass --output; the partial archive and "
                              f"spool were removed{kept}") from None
        if isinstance(exc, ClawdieError) and kept:
            exc.hint = f"{exc.hint}{kept} (a valid point in time; destroy it if unwanted)"
        raise
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    signer = signing.public_of(key, _comment())
    return {"archive": str(written.path), "size": written.size, "sha256": written.sha256,
            # "public", "file": names a journal keeps as they are (a key named like a
            # secret, `*_key`, is masked there, and migrate needs this public line)
            "signed_by": {"fingerprint": signer.fingerprint, "public": signer.line,
                          "file": str(plan.key), "created": created},
            "encrypted_to": plan.recipients,
            "items": manifest.items, "snapshots": snapshots,
            "duration_s": round(time.monotonic() - started, 3), "steps": out.timings,
            "tables": {n: f["tables"] for n, f in manifest.files.items() if "tables" in f}}


def _comment() -> str:
    return f"clawdie-ops@{socket.gethostname()}"


def _signing_key(path: Path, out: Reporter) -> tuple[Any, bool]:
    """This host's signing key; the first backup creates it, and says so."""
    if path.exists():
        return signing.load_private(path), False
    key = signing.create_private(path)
    pub = signing.public_of(key, _comment())
    out.warn(f"created the signing key {path} (0600). Keep a copy of it apart from the "
             f"backups; hosts that restore or drill these backups trust its public key: "
             f"{pub.line} ({pub.fingerprint})")
    return key, True


def _write_items(writer: ArchiveWriter, s: Settings, plan: BackupPlan, pre: Preflight,
                 opts: BackupOptions, snapshots: list[str]) -> Manifest:
    """Every item into the archive, in the runbook's order; the manifest that describes them."""
    assert plan.spool is not None
    entries, spool = plan.entries, plan.spool
    manifest = Manifest(agent_name=s.agent_name,
                        timestamp=datetime.now(UTC).isoformat(timespec="seconds"),
                        host=socket.gethostname(), tool_version=__version__, snapshots=snapshots)
    # Each file's mode goes into the manifest, so restore gives it back (a 0600 messages.db
    # stays 0600).
    if plan.sqlite:
        db_mode = s.sqlite_path.stat().st_mode & 0o777
        manifest.files["messages.db"] = {**entries.pop("messages.db"), "mode": db_mode,
                                         **writer.add_file("messages.db", spool / "messages.db",
                                                           db_mode)}
    for db in plan.databases:
        info = pre.servers[db.key]
        manifest.files[db.item] = {
            **entries.pop(db.item), **writer.add_file(db.item, spool / db.item, 0o600),
            "server_version": info.version, "system_identifier": info.system_identifier,
            "pg_dump_version": pre.pg_dump_version}
    for item in plan.files:
        mode = 0o600 if item.name == "env" else None
        try:
            manifest.files[item.name] = {"kind": "file",
                                         "mode": item.source.stat().st_mode & 0o777,
                                         **writer.add_file(item.name, item.source, mode)}
        except FileNotFoundError:
            raise SourceError(f"{item.source} vanished during the backup",
                              "run the backup again") from None
    manifest.items = _item_list(manifest.files)
    if not opts.databases:
        for dump in ("memory_db.sql", "skills_db.sql"):
            manifest.skipped[dump] = "--no-databases"
    elif opts.skip_skills:
        manifest.skipped["skills_db.sql"] = "--skip-skills"
    if opts.databases_only:
        for left_out in ("messages.db", "groups/", "mount-allowlist.json"):
            manifest.skipped[left_out] = "--databases-only"
    manifest.postgres = {"pg_dump_version": pre.pg_dump_version,
                         "servers": {k: v.version for k, v in pre.servers.items()}}
    return manifest


def _copy_sqlite(s: Settings, plan: BackupPlan) -> dict[str, Any]:
    """messages.db into the spool, checked, with its row counts."""
    assert plan.spool is not None
    dest = plan.spool / "messages.db"
    sqlite.backup(s.sqlite_path, dest)
    sqlite.check(dest)
    return {"kind": "sqlite", "integrity": "ok", "tables": sqlite.table_counts(dest)}


_FULL = ("no space left", "disk is full", "quota exceeded", "file too large")


def _out_of_space(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    return isinstance(exc, ClawdieError) and any(m in str(exc).lower() for m in _FULL)


def _item_list(files: dict[str, Any]) -> list[str]:
    items = []
    for name in files:
        item = "groups/" if name.startswith("groups/") else name
        if item not in items:
            items.append(item)
    return items
