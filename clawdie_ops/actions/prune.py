"""`prune`: keep what the retention policy keeps, by each archive's own timestamp; remove the rest.

Decide first (`decide`: plain data in, a verdict per archive out), act second. The ages come
from each archive's manifest (its `timestamp`), the file name only when the manifest has
none, never from name order: `DD.mmm.YYYY` sorts 06.dec before 08.nov. Never removed: the
newest archive that verifies, an archive whose manifest cannot be read (it is reported
instead), a file being written (`.partial`, spool folders), anything not named like a
clawdie archive. Stale partial files and spool folders are swept once nothing has written to
them for `stale_partial_hours`.

The same code prunes this machine's backup directory (`LocalStore`) and an offsite copy on
an inventory host (`RemoteStore`, over a Fabric Connection).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, UTC
from pathlib import Path
from typing import Any, Protocol

from .. import runner
from ..archive.catalog import name_time
from ..archive.manifest import NAME as MANIFEST, Manifest
from ..archive.signing import Trust
from ..archive.verify import Keys, verify
from ..archive.writer import ArchiveReader
from ..errors import ArchiveCorrupt, ArchiveUnsafe, ClawdieError, ConfigError, HostError
from ..runner import Shell

RULES = ("last", "daily", "weekly", "monthly")
# The runbook's "keep the last 4" when clawdie.retention sets nothing.
DEFAULT_POLICY = {"last": 4, "daily": 0, "weekly": 0, "monthly": 0}
STALE_PARTIAL_HOURS = 24.0
MAX_MANIFEST = 16 << 20


@dataclass(frozen=True)
class Entry:
    """A directory entry as listed: the same fields locally and over SFTP."""

    name: str
    size: int
    mtime: float
    is_dir: bool = False


@dataclass
class Archive:
    name: str
    size: int
    when: datetime  # aware; from the manifest, else the name
    source: str  # "manifest" or "name"


@dataclass
class Verdict:
    archive: Archive
    keep: bool
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        a = self.archive
        return {"name": a.name, "timestamp": a.when.isoformat(timespec="seconds"),
                "time_from": a.source, "size": a.size,
                "action": "keep" if self.keep else "remove", "reasons": self.reasons}


# -- the policy --------------------------------------------------------------------------
def policy_from(cfg: Mapping[str, Any] | None, **flags: int | None) -> dict[str, int]:
    """keep-* counts: flags over `clawdie.retention` over the runbook's keep-last-4.

    A retention section that sets any rule replaces the default as a whole, so
    `retention: {daily: 7}` keeps seven dailies and not also the last four."""
    raw = dict(cfg or {})
    given = {k: v for k, v in raw.items() if k in RULES and v not in (None, "")}
    unknown = [k for k in raw if k not in RULES and k != "stale_partial_hours"]
    if unknown:
        raise ConfigError(f"clawdie.retention has unknown key(s): {', '.join(unknown)}",
                          f"known keys: {', '.join(RULES)}, stale_partial_hours")
    policy = {r: 0 for r in RULES} if given else dict(DEFAULT_POLICY)
    policy.update(given)
    policy.update({k: v for k, v in flags.items() if v is not None})
    for rule, value in policy.items():
        try:
            n = int(value)
        except (TypeError, ValueError):
            n = -1
        if n < 0:
            raise ConfigError(f"keep-{rule} must be a whole number >= 0, not {value!r}",
                              f"fix --keep-{rule} or clawdie.retention.{rule}")
        policy[rule] = n
    if not any(policy.values()):
        raise ConfigError("the retention policy keeps nothing (every keep-* is 0)",
                          "set at least one of --keep-last/--keep-daily/--keep-weekly/"
                          "--keep-monthly (the newest archive is kept regardless)")
    return policy


def _bucket(rule: str, when: datetime) -> str:
    local = when.astimezone()
    if rule == "daily":
        return f"{local:%Y-%m-%d}"
    if rule == "weekly":
        year, week, _ = local.isocalendar()
        return f"{year}-W{week:02d}"
    return f"{local:%Y-%m}"


def decide(archives: list[Archive], policy: Mapping[str, int],
           newest_verified: str | None) -> list[Verdict]:
    """A verdict per archive, newest first: kept with every rule that keeps it, or removed.

    Like borg and restic: keep-last takes the N newest; keep-daily/weekly/monthly take the
    newest archive of each of the last N days/weeks/months that have one."""
    ordered = sorted(archives, key=lambda a: (a.when, a.name), reverse=True)
    verdicts = [Verdict(a, False) for a in ordered]
    for i, v in enumerate(verdicts[:policy.get("last", 0)]):
        v.reasons.append(f"last {policy['last']} (#{i + 1})")
    for rule in ("daily", "weekly", "monthly"):
        seen: list[str] = []
        for v in verdicts:
            bucket = _bucket(rule, v.archive.when)
            if bucket in seen:
                continue
            if len(seen) >= policy.get(rule, 0):
                break
            seen.append(bucket)
            v.reasons.append(f"{rule} {bucket}")
    for v in verdicts:
        if v.archive.name == newest_verified:
            v.reasons.append("newest that verifies")
        v.keep = bool(v.reasons)
    return verdicts


# -- where the archives are --------------------------------------------------------------
class Store(Protocol):
    label: str
    directory: str

    def entries(self) -> list[Entry]: ...
    def manifest(self, name: str) -> Manifest: ...
    def verify(self, name: str) -> str: ...
    def remove(self, entry: Entry) -> None: ...
    def lock(self) -> contextlib.AbstractContextManager[Any]: ...
    @property
    def locked(self) -> bool: ...


def read_manifest(path: Path) -> Manifest:
    """An archive's manifest in one pass without hashing (it is the last member)."""
    found: bytes | None = None
    with ArchiveReader(path) as reader:
        for member, fh in reader:
            if member.name.endswith("/" + MANIFEST) and member.name.count("/") == 1 and fh:
                if member.size > MAX_MANIFEST:
                    raise ArchiveCorrupt(f"{path}: manifest.json is {member.size} bytes",
                                         "not a clawdie-ops archive")
                found = fh.read()
        reader.finish()
    if found is None:
        raise ArchiveCorrupt(f"{path} has no manifest.json (cut short?)",
                             "use another copy, or remove it by hand once you have looked")
    return Manifest.from_json(found, f"{path}: manifest.json")


class LocalStore:
    """The backup directory on this machine."""

    def __init__(self, directory: Path,
                 lock: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
                 keys: Keys | None = None) -> None:
        """`lock`: the backup directory's lock (a backup holds it while it writes); `keys`:
        the trusted keys an archive must be signed by to count as one that verifies."""
        self._lock = lock
        self._keys = keys
        self.path = Path(directory).expanduser()
        self.directory = str(self.path)
        self.label = "this machine"
        if not self.path.is_dir():
            raise ConfigError(f"backup directory not found: {self.path}",
                              "pass --output DIR or set clawdie.backup_dir")

    def entries(self) -> list[Entry]:
        out = []
        with os.scandir(self.path) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                mtime = st.st_mtime
                if stat.S_ISDIR(st.st_mode):  # a spool: its newest file says if it is alive
                    mtime = max([mtime] + [p.stat().st_mtime for p in Path(e.path).rglob("*")])
                elif not stat.S_ISREG(st.st_mode):
                    continue  # links and devices are never ours to touch
                out.append(Entry(e.name, st.st_size, mtime, stat.S_ISDIR(st.st_mode)))
        return out

    def manifest(self, name: str) -> Manifest:
        return read_manifest(self.path / name)

    def verify(self, name: str) -> str:
        v = verify(self.path / name, self._keys or Keys(Trust()))
        return f"{len(v.members)} files match the manifest"

    def remove(self, entry: Entry) -> None:
        target = self.path / entry.name
        if entry.is_dir:
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)

    def lock(self) -> contextlib.AbstractContextManager[Any]:
        return self._lock() if self._lock else contextlib.nullcontext()

    @property
    def locked(self) -> bool:
        """Held, no backup can be writing here: its partial files are left-overs."""
        return self._lock is not None


class RemoteStore:
    """A backup directory on another host, through a Fabric Connection: SFTP lists and
    removes; the host's `archive_manifest` template reads a manifest there (its tar reads
    the whole compressed stream, so a damaged archive fails it)."""

    def __init__(self, conn: Any, directory: str, label: str, manifest_cmd) -> None:
        self.conn = conn
        self.directory = directory.rstrip("/") or "/"
        self.label = label
        self.manifest_cmd = manifest_cmd  # path -> the command line for this host
        self._manifests: dict[str, Manifest] = {}

    def _path(self, name: str) -> str:
        return f"{self.directory}/{name}"

    def entries(self) -> list[Entry]:
        try:
            attrs = self.conn.sftp().listdir_attr(self.directory)
        except FileNotFoundError:
            raise ConfigError(f"backup directory {self.directory} not found on {self.label}",
                              "create it there, or fix clawdie.hosts.<host>.overrides."
                              "backup_dir") from None
        except (OSError, EOFError) as exc:
            raise HostError(f"cannot list {self.directory} on {self.label}: {exc}",
                            "check the connection and the directory's permissions") from None
        out = []
        for a in attrs:
            mode = a.st_mode or 0
            if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
                out.append(Entry(a.filename, int(a.st_size or 0), float(a.st_mtime or 0),
                                 stat.S_ISDIR(mode)))
        return out

    def manifest(self, name: str) -> Manifest:
        if name not in self._manifests:
            cmd = self.manifest_cmd(self._path(name))
            res = runner.run(self.conn, Shell(cmd), host=self.label,
                             what=f"reading the manifest of {name}")
            if res.exited != 0 or not res.stdout.strip():
                raise ArchiveCorrupt(f"{self.label}:{self._path(name)}: cannot read its "
                                     f"manifest ({res.stderr.strip()[-200:] or 'no output'})",
                                     "it is damaged or cut short; look at it there")
            self._manifests[name] = Manifest.from_json(res.stdout.encode(),
                                                       f"{self.label}:{name}: manifest.json")
        return self._manifests[name]

    def verify(self, name: str) -> str:
        self.manifest(name)
        return "read through to its manifest on the host"

    def remove(self, entry: Entry) -> None:
        if entry.is_dir:
            res = runner.run(self.conn, ["rm", "-rf", "--", self._path(entry.name)],
                             host=self.label)
            if res.exited != 0:
                raise HostError(f"removing {self.label}:{self._path(entry.name)} failed: "
                                f"{res.stderr.strip()}", "check its permissions there")
            return
        try:
            self.conn.sftp().remove(self._path(entry.name))
        except FileNotFoundError:
            pass

    def lock(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()  # a copy arrives as NAME.partial, renamed when checked

    locked = False


# -- the run -----------------------------------------------------------------------------
def _partial(name: str) -> bool:
    """A backup being written, a copy arriving, or a backup's spool folder."""
    return ((name.startswith(".clawdie-backup-") and name.endswith(".partial"))
            or (name.startswith("clawdie-backup-") and name.endswith(".partial"))
            or name.startswith(".clawdie-backup-spool-"))


def _archive_time(store: Store, entry: Entry) -> tuple[Archive | None, str]:
    """The archive with its time, or None and why it is left alone."""
    try:
        m = store.manifest(entry.name)
    except (ArchiveCorrupt, ArchiveUnsafe) as exc:
        return None, f"unreadable, left in place: {exc.message}"
    try:
        when = datetime.fromisoformat(m.timestamp)
        if when.tzinfo is None:
            when = when.astimezone()
        return Archive(entry.name, entry.size, when, "manifest"), ""
    except (TypeError, ValueError):
        pass
    named = name_time(Path(entry.name))
    if named is None:
        return None, f"manifest timestamp {m.timestamp!r} unreadable and no time in the name"
    return Archive(entry.name, entry.size, named[0].astimezone(), "name"), ""


def run(store: Store, policy: Mapping[str, int], *, dry_run: bool = False,
        stale_hours: float = STALE_PARTIAL_HOURS, now: float | None = None,
        on_step=None) -> dict[str, Any]:
    """Decide, then (unless dry_run) remove; the result lists every file and why."""
    now = time.time() if now is None else now
    step = on_step or (lambda label: contextlib.nullcontext())
    with store.lock():
        with step(f"read manifests in {store.label}:{store.directory}"):
            entries = store.entries()
            archives: list[Archive] = []
            left: list[dict[str, str]] = []
            stale: list[Entry] = []
            for e in sorted(entries, key=lambda e: e.name):
                if _partial(e.name):
                    own = store.locked and not e.name.startswith("clawdie-backup-")
                    if own or now - e.mtime > stale_hours * 3600:
                        stale.append(e)
                    else:
                        left.append({"name": e.name, "why": "being written (recent partial file)"})
                    continue
                if e.is_dir or name_time(Path(e.name)) is None:
                    continue  # not ours: not listed, never touched
                archive, why = _archive_time(store, e)
                if archive is None:
                    left.append({"name": e.name, "why": why})
                else:
                    archives.append(archive)
        newest_ok, checked = None, []
        with step("verify the newest archive"):
            for a in sorted(archives, key=lambda a: (a.when, a.name), reverse=True):
                try:
                    detail = store.verify(a.name)
                except (ArchiveCorrupt, ArchiveUnsafe) as exc:
                    checked.append({"name": a.name, "verified": False, "detail": exc.message})
                    continue
                checked.append({"name": a.name, "verified": True, "detail": detail})
                newest_ok = a.name
                break
        verdicts = decide(archives, policy, newest_ok)
        removed: list[str] = []
        swept: list[str] = []
        errors: list[str] = []
        if not dry_run:
            with step("remove"):
                gone = [Entry(v.archive.name, v.archive.size, 0) for v in verdicts if not v.keep]
                for e, into in [(e, removed) for e in gone] + [(e, swept) for e in stale]:
                    try:
                        store.remove(e)
                        into.append(e.name)
                    except (OSError, ClawdieError) as exc:
                        errors.append(f"{e.name}: {getattr(exc, 'message', None) or exc}")
    return {"host": store.label, "directory": store.directory, "policy": dict(policy),
            "dry_run": dry_run, "archives": [v.as_dict() for v in verdicts],
            "verified": checked, "left_alone": left,
            "stale_partials": [e.name for e in stale], "removed": removed, "swept": swept,
            "errors": errors,
            "kept": sum(1 for v in verdicts if v.keep),
            "freed_bytes": sum(v.archive.size for v in verdicts
                               if not v.keep and v.archive.name in removed),
            "at": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds")}
