"""`doctor`: the runbook's "verify health" step, one check per line: ok, warn or fail."""
from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import leftovers, locks, statedir
from invoke import Context

from ..archive import catalog
from ..checks import Check
from ..hosts import agent
from ..zfs import commands as zfs
from ..config.settings import DEFAULTS, Settings
from ..errors import ClawdieError, DatabaseUnreachable
from ..output import human_size
from ..sources.postgres import commands as pg

SEVERITY = {"ok": 0, "warn": 1, "fail": 2}


def worst(checks: list[Check]) -> str:
    return max((ch.status for ch in checks), key=SEVERITY.__getitem__, default="ok")


def exit_code(checks: list[Check]) -> int:
    """0 when all is well, 1 with warnings, 2 with a failure."""
    return SEVERITY[worst(checks)]


def age_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _by_age(age_s: float, warn_h: float, fail_h: float) -> str:
    if age_s > fail_h * 3600:
        return "fail"
    if age_s > warn_h * 3600:
        return "warn"
    return "ok"


def check_env(s: Settings) -> Check:
    if s.env_file.is_file() and s.env:
        return Check(".env", "ok", f"{s.env_file} ({len(s.env)} settings)")
    return Check(".env", "fail", f"{s.env_file} is missing, unreadable or empty",
                 "restore it from a backup (clawdie-ops restore ARCHIVE --only env)")


def check_agent(c: Context, s: Settings) -> Check:
    try:
        if agent.running(c, s):
            return Check("agent", "ok", f"agent {s.agent_name} is running")
        return Check("agent", "fail", f"agent {s.agent_name} is not running",
                     f"start it: {s.command('agent_start')}")
    except ClawdieError as exc:
        return Check("agent", "fail", exc.message, exc.hint)


def check_databases(s: Settings) -> tuple[list[Check], dict[str, pg.ServerInfo], int]:
    checks, servers, total = [], {}, 0
    for db in (s.memory, s.skills):
        name = f"database {db.key}_db"
        if not s.env or not db.host:
            checks.append(Check(name, "fail", "no connection details: .env is missing",
                                "restore .env first"))
            continue
        try:
            with pg.connect(db) as conn:
                info = pg.server_info(conn)
                total += pg.scalar(conn, "SELECT pg_database_size(current_database())")
        except DatabaseUnreachable as exc:
            checks.append(Check(name, "fail", exc.message, exc.hint))
            continue
        servers[db.key] = info
        checks.append(Check(name, "ok", f"{db.name} at {info.address} as {db.user} "
                                        f"(PostgreSQL {info.version})"))
    return checks, servers, total


def check_pg_dump(c: Context, s: Settings, servers: dict[str, pg.ServerInfo]) -> Check:
    newest = max(servers.values(), key=lambda i: i.major, default=None)
    try:
        major, version = pg.client_version(c, s, "pg_dump", newest.major if newest else None)
    except ClawdieError as exc:
        return Check("pg_dump", "fail", exc.message, exc.hint)
    if newest is None:
        return Check("pg_dump", "warn", f"pg_dump {version} found; no server reached to "
                                        "compare its version with", "see the database checks")
    if major < newest.major:
        return Check("pg_dump", "fail", f"pg_dump {version} is older than the PostgreSQL "
                                        f"{newest.version} server at {newest.address}",
                     f"install pg_dump {newest.major} or newer "
                     f"({pg.install_hint(s, newest.major)}) or set clawdie.pg_bin")
    return Check("pg_dump", "ok", f"pg_dump {version} (server {newest.version})")


Listing = tuple[dict[str, str], ClawdieError | None]


def _listing(c: Context, s: Settings) -> Listing:
    """Every file system under the jails' parent with its mountpoint, in one `zfs list -r`
    ({} when the parent does not exist), and the error when it could not be read."""
    try:
        return zfs.mountpoints(c, s, s.jails_parent) or {}, None
    except ClawdieError as exc:
        return {}, exc


def check_datasets(c: Context, s: Settings, listing: Listing | None = None
                   ) -> tuple[Check, list[str]]:
    """Each jail dataset and its `root` child (bastille keeps the jail's files there);
    returns every dataset present, descendants included, for the snapshot check."""
    if not s.zfs_prefix:
        return Check("jail datasets", "warn", "ZFS_PREFIX is not set: datasets not checked",
                     "add ZFS_PREFIX=... to .env (or set clawdie.zfs_prefix)"), []
    listed, error = listing or _listing(c, s)
    if error is not None:
        return Check("jail datasets", "fail", error.message, error.hint), []
    present: list[str] = []
    missing: list[str] = []
    for jail in s.jails:
        if s.dataset(jail) not in listed:
            missing.append(s.dataset(jail))
            continue
        tree = zfs.descendants_in(list(listed), s.dataset(jail))
        present += tree
        if s.root_dataset(jail) not in tree:
            missing.append(s.root_dataset(jail))
    if missing:
        return Check("jail datasets", "fail", f"not found: {', '.join(missing)}",
                     "check ZFS_POOL / ZFS_PREFIX in .env, clawdie.jails and clawdie.jail_name "
                     "(bastille: POOL/PREFIX/jails/NAME with the jail's files in NAME/root); "
                     "`zfs list -r` shows what exists"), present
    return Check("jail datasets", "ok", f"{len(s.jails)} jails under {s.jails_parent}, "
                                        f"{len(present)} datasets with their children"), present


def check_jail_paths(c: Context, s: Settings, listing: Listing | None = None) -> Check:
    """A running jail's path (`jls -j NAME path`) is the mountpoint of its `root` dataset:
    otherwise the snapshots, replication and rollback act on files the jail does not use."""
    if not s.zfs_prefix:
        return Check("jail paths", "warn", "ZFS_PREFIX is not set: jail paths not checked",
                     "add ZFS_PREFIX=... to .env (or set clawdie.zfs_prefix)")
    wrong, unread, checked = [], [], []
    for jail in s.jails:
        if not agent.jail_running(c, s, jail):
            continue
        path = agent.jail_path(c, s, jail)
        listing = listing or _listing(c, s)
        mount = listing[0].get(s.root_dataset(jail))
        if not path:
            unread.append(f"{s.name_of(jail)} (jail_path printed no path)")
        elif mount is None:
            unread.append(f"{s.name_of(jail)} ({s.root_dataset(jail)} not found)")
        elif path.rstrip("/") != mount.rstrip("/"):
            wrong.append(f"jail {s.name_of(jail)} runs in {path}, but {s.root_dataset(jail)} "
                         f"is mounted at {mount}")
        else:
            checked.append(s.name_of(jail))
    fix = ("set clawdie.jail_name so that the jail NAME and the dataset jails/NAME are the same "
           "(bastille's own layout), and ZFS_POOL / ZFS_PREFIX to bastille's "
           "bastille_zfs_zpool / bastille_zfs_prefix")
    if wrong:
        return Check("jail paths", "fail", "; ".join(wrong), fix)
    if unread:
        return Check("jail paths", "warn", f"could not compare: {', '.join(unread)}",
                     "check clawdie.commands.jail_path (jls -j {jail_name} path)")
    if not checked:
        return Check("jail paths", "ok", "no jail running: nothing to compare")
    return Check("jail paths", "ok", f"{', '.join(checked)} run in their root datasets")


def check_snapshots(c: Context, s: Settings, datasets: list[str],
                    limits: Mapping[str, Any]) -> Check:
    if not datasets:
        return Check("snapshots", "warn", "no jail dataset to look at", "see jail datasets")
    try:  # one `zfs get -r` for every dataset's snapshots
        tree = zfs.tree(c, s, s.jails_parent)
    except ClawdieError as exc:
        return Check("snapshots", "fail", exc.message, exc.hint)
    if tree is None:
        return Check("snapshots", "fail", f"ZFS dataset not found: {s.jails_parent}",
                     "check `zfs list`")
    now = time.time()
    newest = {ds: tree.newest(ds) for ds in datasets}
    ages: dict[str, float | None] = {ds: None if t is None else now - t
                                     for ds, t in newest.items()}
    fix = ("check that sanoid runs from cron with recursive = zfs (clawdie-ops sanoid-config) "
           "or take one now: clawdie-ops snapshot")
    none = [d for d, a in ages.items() if a is None]
    if none:
        return Check("snapshots", "fail", f"no snapshot of {', '.join(none)}", fix)
    oldest_ds = max(ages, key=lambda d: ages[d] or 0)
    age = ages[oldest_ds] or 0
    status = _by_age(age, float(limits["snapshot_warn_hours"]),
                     float(limits["snapshot_fail_hours"]))
    short = oldest_ds[len(s.jails_parent) + 1:] if oldest_ds.startswith(s.jails_parent + "/") \
        else oldest_ds
    detail = (f"newest snapshot is {age_text(age)} old at most ({short}; "
              f"limits {limits['snapshot_warn_hours']}h / {limits['snapshot_fail_hours']}h)")
    return Check("snapshots", status, detail, "" if status == "ok" else fix)


def check_backups(s: Settings, limits: Mapping[str, Any]) -> tuple[Check, Path | None]:
    d = s.backup_dir
    fix = f"run clawdie-ops backup --output {d}, and schedule it (README: Backup)"
    if not d.is_dir():
        return Check("backups", "fail", f"backup directory {d} does not exist", fix), None
    newest = catalog.newest(d)
    if newest is None:
        return Check("backups", "fail", f"no clawdie-backup-* archive in {d}", fix), None
    age = time.time() - newest.stat().st_mtime
    status = _by_age(age, float(limits["backup_warn_hours"]), float(limits["backup_fail_hours"]))
    return Check("backups", status, f"newest is {newest.name}, {age_text(age)} old "
                                    f"(limits {limits['backup_warn_hours']}h / "
                                    f"{limits['backup_fail_hours']}h)",
                 "" if status == "ok" else fix), newest


def check_space(s: Settings, newest: Path | None, db_bytes: int,
                limits: Mapping[str, Any]) -> Check:
    d = s.backup_dir
    if not d.is_dir():
        return Check("free space", "fail", f"backup directory {d} does not exist",
                     f"create it: mkdir -p {d}")
    sqlite = s.sqlite_path.stat().st_size if s.sqlite_path.is_file() else 0
    files = sum(p.stat().st_size for p in s.groups_dir.rglob("*") if p.is_file()) \
        if s.groups_dir.is_dir() else 0
    # The backup spools messages.db and the dumps beside the archive it writes.
    need = sqlite + db_bytes + (newest.stat().st_size if newest else files)
    free = shutil.disk_usage(d).free
    factor = float(limits["space_factor"])
    detail = f"{human_size(free)} free in {d}; the next backup needs about {human_size(need)}"
    fix = f"free space in {d} or move backups elsewhere (clawdie.backup_dir)"
    if free < need:
        return Check("free space", "fail", detail, fix)
    if free < need * factor:
        return Check("free space", "warn", detail + f" (less than {factor:g}x head room)", fix)
    return Check("free space", "ok", detail)


def check_leftovers(s: Settings) -> Check:
    """What killed runs left: partial archives and spools, password files, interrupted
    restores, killed drills' folders (and their PostgreSQL still running). Read only: the
    next backup, restore or drill sweeps them (restore keeps the pre-restore copies)."""
    busy = locks.holder_if_held(
        s.state_dir / "locks" / f"backups-{statedir.slug(s.backup_dir)}.lock")
    found = [] if busy else leftovers.in_backup_dir(s.backup_dir)
    found += leftovers.passfiles()
    found += leftovers.restores(s.state_dir / "installs" / statedir.slug(s.root))
    found += leftovers.drills()
    if not found:
        detail = "none" + (f" (a backup is running: {busy.describe()})" if busy else "")
        return Check("leftovers", "ok", detail)
    more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
    return Check("leftovers", "warn", "; ".join(x.describe() for x in found[:3]) + more,
                 "the next backup or restore removes them (pre-restore copies stay), the "
                 "next drill a killed drill's folder and the PostgreSQL it left running; an "
                 "interrupted restore may have left the installation partly restored: restore "
                 "again, or put its pre-restore copies back by hand")


def run_checks(c: Context, s: Settings, limits: Mapping[str, Any] | None = None) -> list[Check]:
    limits = {**DEFAULTS["doctor"], **dict(limits or {})}
    checks = [check_env(s), check_agent(c, s)]
    db_checks, servers, db_bytes = check_databases(s)
    checks.extend(db_checks)
    checks.append(check_pg_dump(c, s, servers))
    listing = _listing(c, s) if s.zfs_prefix else None  # read once for both checks
    ds_check, present = check_datasets(c, s, listing)
    checks.append(ds_check)
    checks.append(check_jail_paths(c, s, listing))
    checks.append(check_snapshots(c, s, present, limits))
    backups, newest = check_backups(s, limits)
    checks.append(backups)
    checks.append(check_space(s, newest, db_bytes, limits))
    checks.append(check_leftovers(s))
    return checks
