"""What a killed run leaves behind, found (doctor) and swept (the next backup or restore).

A killed backup leaves `.clawdie-backup-*.partial` and a `.clawdie-backup-spool-*` folder in
the backup folder; a killed pg_dump or psql leaves its PGPASSFILE (`clawdie-pgpass-PID-*`)
in the temp folder; a killed restore leaves its work folder with a `pid` file, its staging
and its pre-restore copies; a killed drill leaves its `clawdie-drill-*` folders (each with a
`pid` file) in the temp folder, and its throwaway PostgreSQL running in one of them.
Sweeping happens only under the lock that the leaving run held, or when the `pid` file
names a process gone, so nothing a live run still uses is removed; pre-restore copies are
never swept.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .statedir import pid_alive

PARTIAL = re.compile(r"^\.clawdie-backup-.+\.partial$")
SPOOL = re.compile(r"^\.clawdie-backup-spool-")
PASSFILE = re.compile(r"^clawdie-pgpass-(\d+)-")
RUNNING = "pid"  # in a restore's work folder while that restore runs, and a drill's folders
DRILL = re.compile(r"^clawdie-drill-")  # the sandbox, and (run as root) the cluster's folder


@dataclass(frozen=True)
class Leftover:
    path: Path
    what: str  # "partial archive", "spool", "password file", "interrupted restore"
    keep: Path | None = None  # what stays after sweeping (an interrupted restore's before/)
    servers: tuple[int, ...] = ()  # a killed drill's PostgreSQL still running there (pids)

    def describe(self) -> str:
        kept = f" (its pre-restore copies stay in {self.keep}" if self.keep else ""
        if self.keep and (self.keep / "databases.txt").exists():
            kept += f"; the databases it set aside are named in {self.keep}/databases.txt"
        if self.servers:
            kept = (f" (with its throwaway PostgreSQL still running, pid "
                    f"{', '.join(map(str, self.servers))}")
        return f"{self.what} {self.path}{kept + ')' if kept else ''}"


def in_backup_dir(directory: Path) -> list[Leftover]:
    """Partial archives and spools of killed backups (sweep only under the folder's lock)."""
    if not directory.is_dir():
        return []
    found = []
    for p in sorted(directory.iterdir()):
        if PARTIAL.match(p.name) and p.is_file() and not p.is_symlink():
            found.append(Leftover(p, "partial archive"))
        elif SPOOL.match(p.name) and p.is_dir() and not p.is_symlink():
            found.append(Leftover(p, "backup spool"))
    return found


def passfiles(directory: Path | None = None) -> list[Leftover]:
    """PGPASSFILEs of this user's processes that are gone."""
    base = Path(directory or tempfile.gettempdir())
    found = []
    try:
        entries = sorted(base.iterdir())
    except OSError:
        return []
    for p in entries:
        m = PASSFILE.match(p.name)
        try:
            mine = p.lstat().st_uid == os.geteuid()
        except OSError:
            continue
        if m and mine and not pid_alive(int(m.group(1))):
            found.append(Leftover(p, "password file"))
    return found


def restores(install_dir: Path) -> list[Leftover]:
    """Restore work folders whose restore was killed (their `pid` names a process gone)."""
    if not install_dir.is_dir():
        return []
    found = []
    for work in sorted(install_dir.glob("restore-*")):
        marker = work / RUNNING
        try:
            pid = int(marker.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if not pid_alive(pid) or pid == os.getpid():
            before = work / "before"
            keep = before if before.is_dir() and any(before.iterdir()) else None
            found.append(Leftover(work, "interrupted restore", keep))
    return found


def mark_running(folder: Path) -> None:
    """Name this process in a work folder it creates, for the sweep of a later run."""
    (folder / RUNNING).write_text(f"{os.getpid()}\n")


def drills(directories: list[Path] | None = None) -> list[Leftover]:
    """Folders of killed drills in the temp folders (this user's, their `pid` file naming a
    process gone), with the pids of a throwaway PostgreSQL still running in them."""
    bases = directories or [Path(tempfile.gettempdir()), Path("/tmp")]
    found, seen = [], set()
    for base in bases:
        try:
            entries = sorted(base.iterdir())
        except OSError:
            continue
        for p in entries:
            real = os.path.realpath(p)
            if real in seen or not DRILL.match(p.name):
                continue
            seen.add(real)
            try:
                st = p.lstat()
                pid = int((p / RUNNING).read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # no pid file: a drill setting up, or not ours to judge
            if not p.is_dir() or p.is_symlink() or st.st_uid != os.geteuid():
                continue
            if pid_alive(pid) and pid != os.getpid():
                continue
            found.append(Leftover(p, "killed drill's folder", servers=tuple(postmasters(p))))
    return found


def postmasters(folder: Path) -> list[int]:
    """Running PostgreSQL servers whose data directory is below `folder` (by postmaster.pid,
    confirmed by the process's command line naming that directory)."""
    out = []
    for marker in list(folder.glob("*/postmaster.pid")) + list(folder.glob("*/*/postmaster.pid")):
        try:
            pid = int(marker.read_text().split()[0])
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if str(marker.parent).encode() in args:
            out.append(pid)
    return out


def _stop_server(pid: int, wait: float = 15.0) -> None:
    """Immediate shutdown (SIGQUIT), then SIGKILL if it has not ended within `wait` s."""
    for sig, patience in ((signal.SIGQUIT, wait), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            if not pid_alive(pid) or _zombie(pid):
                return
            time.sleep(0.1)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def sweep(items: list[Leftover]) -> list[str]:
    """Remove them (an interrupted restore: all but its pre-restore copies; a killed drill's
    folder after stopping the PostgreSQL it left running); say what went."""
    done = []
    for item in items:
        for pid in item.servers:
            _stop_server(pid)
        if item.what == "interrupted restore":
            for p in item.path.iterdir():
                if p.name != "before" or item.keep is None:
                    _remove(p)
            if item.keep is None:
                _remove(item.path)
        else:
            _remove(item.path)
        done.append(item.describe())
    return done


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)
