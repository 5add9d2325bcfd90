"""The archives in a backup directory, and which one is the newest: one rule for doctor and
drill.

An archive's time is the one its manifest says (signed with the archive) or the one its
runbook name carries (clawdie-backup-DD.mmm.YYYY-HHMM[-N], written from the same clock and
kept when the file is copied), then the file's mtime. A name with an impossible date
carries none, and a time in the future never counts: a name must not make an old archive
the newest for good. doctor goes by the names (cheap: it runs after every restore); drill
reads every candidate's manifest first (the manifest is the stream's last member, so that
is a pass over each archive): a drill is where a renamed old archive would hide a broken
new one.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from ..errors import ClawdieError
from .manifest import MONTHS, NAME as MANIFEST

SUFFIXES = (".tar.gz", ".tar.zst", ".tar.gz.age", ".tar.zst.age")
_STEM = re.compile(r"^clawdie-backup-(\d\d)\.([a-z]{3})\.(\d{4})-(\d\d)(\d\d)(?:-(\d+))?"
                   r"\.tar\.(?:gz|zst)(?:\.age)?$")
MAX_MANIFEST = 16 << 20
# A clock a little ahead on the backup host is not "the future"; a name a year ahead is.
FUTURE_SLACK = timedelta(days=1)


def archives(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.is_file() and p.name.startswith(
        "clawdie-backup-") and p.name.endswith(SUFFIXES)] if directory.is_dir() else []


def count_archives(directory: Path) -> int:
    try:
        return len(archives(directory))
    except OSError:
        return 0


def name_time(p: Path) -> tuple[datetime, int] | None:
    """(local time, sequence) from the runbook name, or None when the name carries none."""
    m = _STEM.match(p.name)
    if not m or m.group(2) not in MONTHS:
        return None
    day, mon, year, hh, mm, n = m.groups()
    try:
        when = datetime(int(year), MONTHS.index(mon) + 1, int(day), int(hh), int(mm))
    except ValueError:  # 31.feb, 25:61
        return None
    return when, int(n or 1)


def manifest_time(p: Path, decrypt: Callable[[Path], list[str]] | None = None
                  ) -> datetime | None:
    """The manifest's timestamp (local time, as names are), or None when unreadable. Only
    read, not verified: it orders the candidates, and the one chosen is verified whole."""
    from .writer import ArchiveReader
    try:
        with ArchiveReader(p, decrypt) as reader:
            for info, fh in reader:
                if info.name.endswith("/" + MANIFEST) and fh is not None \
                        and info.size <= MAX_MANIFEST:
                    stamp = json.loads(fh.read()).get("timestamp")
                    return datetime.fromisoformat(str(stamp)).astimezone().replace(tzinfo=None)
    except (ClawdieError, ValueError, AttributeError, OSError):
        return None
    return None


def _key(p: Path, read_manifests: bool, decrypt: Callable[[Path], list[str]] | None,
         limit: datetime) -> tuple[datetime, int, float]:
    mtime = p.stat().st_mtime
    named = name_time(p)
    seq = named[1] if named else 0
    times = [named[0] if named else None]
    if read_manifests:
        times.insert(0, manifest_time(p, decrypt))
    elif named is None:
        times.append(manifest_time(p, decrypt))
    for when in times:
        if when is not None and when <= limit:
            return when, seq, mtime
    return datetime.fromtimestamp(mtime), seq, mtime


def newest(directory: Path, read_manifests: bool = False,
           decrypt: Callable[[Path], list[str]] | None = None,
           now: datetime | None = None) -> Path | None:
    """The newest clawdie-backup-* archive in `directory`, or None."""
    found = archives(directory)
    limit = (now or datetime.now()) + FUTURE_SLACK
    return max(found, key=lambda p: _key(p, read_manifests, decrypt, limit)) if found else None
