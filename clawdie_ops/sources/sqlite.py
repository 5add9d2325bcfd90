"""messages.db: copied with SQLite's online backup API, so a live WAL writer is no problem."""
from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from ..errors import ArchiveCorrupt, OutputError, SourceError


def backup(src: Path, dest: Path) -> None:
    """A consistent copy of `src` at `dest`, taken while the agent may keep writing."""
    if not src.is_file():
        raise SourceError(f"messages.db not found: {src}",
                          "check --root / CLAWDIE_ROOT points at the Clawdie checkout")
    try:
        source = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise SourceError(f"cannot open {src}: {exc}", "check its owner and mode") from None
    target = sqlite3.connect(dest)
    try:
        source.backup(target)  # one step: a single read transaction, a consistent snapshot
        target.execute("PRAGMA journal_mode=DELETE")  # a self-contained file, no -wal beside it
    except sqlite3.Error as exc:
        if shutil.disk_usage(dest.parent).free < src.stat().st_size:
            # Some filesystems report a full disk as "disk I/O error": name the real cause.
            raise OutputError(f"no space left in {dest.parent} for the copy of {src} ({exc})",
                              "free space there or choose another --output") from None
        raise SourceError(f"backup of {src} failed: {exc}",
                          "run `PRAGMA integrity_check` on it; is the disk healthy?") from None
    finally:
        target.close()
        source.close()


def integrity(path: Path) -> str:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = con.execute("PRAGMA integrity_check").fetchall()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        con.close()
    return "ok" if rows == [("ok",)] else "; ".join(r[0] for r in rows[:5])


def check(path: Path) -> None:
    result = integrity(path)
    if result != "ok":
        raise ArchiveCorrupt(f"integrity_check of {path} failed: {result}",
                             "the source database is damaged; restore it from an older backup")


def table_counts(path: Path) -> dict[str, int]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            " ORDER BY name")]
        return {n: con.execute(f'SELECT count(*) FROM "{n.replace(chr(34), chr(34) * 2)}"')
                .fetchone()[0] for n in names}
    finally:
        con.close()
