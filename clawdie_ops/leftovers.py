"""What a killed run leaves behind, found (doctor) and swept (the next backup or restore).

A killed backup leaves `.clawdie-backup-*.partial` and a `.clawdie-backup-spool-*` folder in
the backup folder; a killed pg_dump or psql leaves its PGPASSFILE (`clawdie-pgpass-PID-*`)
in the temp folder; a killed restore leaves its work folder with a `pid` file, its staging
and its pre-restore copies. Sweeping happens only under the lock that the leaving run held,
so nothing a live run still uses is removed; pre-restore copies are never swept.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .statedir import pid_alive

PARTIAL = re.compile(r"^\.clawdie-backup-.+\.partial$")
SPOOL = re.compile(r"^\.clawdie-backup-spool-")
PASSFILE = re.compile(r"^clawdie-pgpass-(\d+)-")
RUNNING = "pid"  # in a restore's work folder while that restore runs


@dataclass(frozen=True)
class Leftover:
    path: Path
    what: str  # "partial archive", "spool", "password file", "interrupted restore"
    keep: Path | None = None  # what stays after sweeping (an interrupted restore's before/)

    def describe(self) -> str:
        kept = f" (its pre-restore copies stay in {self.keep}" if self.keep else ""
        if self.keep and (self.keep / "databases.txt").exists():
            kept += f"; the databases it set aside are named in {self.keep}/databases.txt"
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


def sweep(items: list[Leftover]) -> list[str]:
    """Remove them (an interrupted restore: all but its pre-restore copies); say what went."""
    done = []
    for item in items:
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
