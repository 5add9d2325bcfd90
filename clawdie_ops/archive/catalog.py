"""The archives in a backup directory, and which one is the newest: one rule for doctor and
drill.

An archive's time is the one its runbook name carries (clawdie-backup-DD.mmm.YYYY-HHMM[-N],
written from the same clock as the manifest's timestamp, and kept when the file is copied);
an archive whose name does not carry one is dated by its manifest's timestamp. The manifest
is the stream's last member, so it is read only where the name says nothing.
"""
from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from ..errors import ClawdieError
from .manifest import MONTHS

SUFFIXES = (".tar.gz", ".tar.zst")
_STEM = re.compile(r"^clawdie-backup-(\d\d)\.([a-z]{3})\.(\d{4})-(\d\d)(\d\d)(?:-(\d+))?"
                   r"\.tar\.(?:gz|zst)$")


def archives(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.is_file() and p.name.startswith(
        "clawdie-backup-") and p.name.endswith(SUFFIXES)] if directory.is_dir() else []


def name_time(p: Path) -> tuple[datetime, int] | None:
    """(time, sequence) from the runbook name, or None when the name carries none."""
    m = _STEM.match(p.name)
    if not m or m.group(2) not in MONTHS:
        return None
    day, mon, year, hh, mm, n = m.groups()
    try:
        when = datetime(int(year), MONTHS.index(mon) + 1, int(day), int(hh), int(mm))
    except ValueError:
        return None
    return when, int(n or 1)


def manifest_time(p: Path) -> datetime | None:
    """The manifest's timestamp (local time, as names are), or None when unreadable."""
    from .verify import verify  # reads the whole stream: only where the name says nothing
    try:
        stamp = verify(p).manifest.timestamp
        return datetime.fromisoformat(stamp).astimezone().replace(tzinfo=None)
    except (ClawdieError, ValueError, OSError):
        return None


def _key(p: Path) -> tuple[datetime, int, float]:
    mtime = p.stat().st_mtime
    named = name_time(p)
    if named is not None:
        return named[0], named[1], mtime
    return manifest_time(p) or datetime.min, 0, mtime


def newest(directory: Path) -> Path | None:
    """The newest clawdie-backup-* archive in `directory`, or None."""
    found = archives(directory)
    return max(found, key=_key) if found else None
