"""Small helpers shared by the tests: read archives, compare databases and trees."""
from __future__ import annotations

import hashlib
import os
import json
import sqlite3
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import sql

# pg14 binaries and other downloads, kept between runs (shared by the backup, restore and
# doctor tests)
CACHE = Path("/var/cache/clawdie-ops-tests")


def wait_until(condition: Callable[[], object], timeout: float, what: str,
               poll: float = 0.05) -> None:
    """Wait for `condition` to hold (a fixed sleep is too short on a loaded machine and too
    long on an idle one); fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(poll)


def set_config(h, **values) -> None:
    """Change the host's tool config (~/.invoke.json) as an operator would."""
    path = h.home / ".invoke.json"
    doc = json.loads(path.read_text())
    doc["clawdie"].update(values)
    path.write_text(json.dumps(doc))


def extract(archive: Path, dest: Path) -> Path:
    """Extract with Python's own tarfile (an independent reader); return the top folder."""
    mode = "r:gz" if archive.name.endswith(".gz") else "r:"
    if archive.name.endswith(".zst"):
        import subprocess
        dest.mkdir(parents=True, exist_ok=True)
        raw = dest / "raw.tar"
        with open(raw, "wb") as fh:
            subprocess.run(["zstd", "-d", "-c", str(archive)], stdout=fh, check=True)
        archive, mode = raw, "r:"
    with tarfile.open(archive, mode) as tf:
        tops = {m.name.split("/")[0] for m in tf.getmembers()}
        assert len(tops) == 1, f"one top folder expected, got {tops}"
        tf.extractall(dest, filter="data")
    return dest / tops.pop()


def manifest_of(top: Path) -> dict:
    return json.loads((top / "manifest.json").read_text())


def sqlite_rows(path: Path) -> dict[str, list[tuple]]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
        return {t: sorted(con.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr)
                for t in tables}
    finally:
        con.close()


def pg_rows(conn: psycopg.Connection) -> dict[str, list[tuple]]:
    """Every user table's rows, sorted, keyed by schema.table."""
    tables = conn.execute(
        "SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN "
        "('pg_catalog', 'information_schema') ORDER BY 1, 2").fetchall()
    out = {}
    for schema, table in tables:
        rows = conn.execute(sql.SQL("SELECT * FROM {}.{}").format(
            sql.Identifier(schema), sql.Identifier(table))).fetchall()
        out[f"{schema}.{table}"] = sorted(rows, key=repr)
    return out


def pg_objects(conn: psycopg.Connection) -> dict[str, list[str]]:
    """Views and functions present, to check the non-table parts of a dump."""
    views = [r[0] for r in conn.execute(
        "SELECT viewname FROM pg_views WHERE schemaname = 'public' ORDER BY 1")]
    funcs = [r[0] for r in conn.execute(
        "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'public' ORDER BY 1")]
    return {"views": views, "functions": funcs}


def tree_digest(top: Path) -> dict[str, str]:
    return {str(p.relative_to(top)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(top.rglob("*")) if p.is_file()}


def jail_digest(top: Path) -> dict[str, str]:
    """tree_digest of a jail's dataset without PostgreSQL's data directory: a running server
    rewrites its files (WAL, pg_internal.init) at any time; tests compare its rows instead."""
    return {k: v for k, v in tree_digest(top).items() if "var/db/postgres/" not in k}


def leftovers(directory: Path) -> list[str]:
    """Anything a failed backup could have left: archives, partial files, spool folders."""
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def tree_modes(top: Path) -> dict[str, str]:
    """Every file's and folder's permission bits below `top` (and top's own), as octal."""
    if not top.exists():
        return {}
    return {str(p.relative_to(top)) or ".": oct(p.stat().st_mode & 0o7777)
            for p in [top, *sorted(top.rglob("*"))] if not p.is_symlink()}


# -- processes, from /proc (no process-name matching) --------------------------------------
def parents() -> dict[int, int]:
    """Every process's parent, in one pass over /proc."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return out


def children(pid: int) -> list[int]:
    """Direct children of a process."""
    return [p for p, pp in parents().items() if pp == pid]


def descendants(pid: int, table: dict[int, int] | None = None) -> list[int]:
    """Children, their children, and so on (one pass over /proc, or over `table`, a
    parents() already read)."""
    kids: dict[int, list[int]] = {}
    for p, pp in (parents() if table is None else table).items():
        kids.setdefault(pp, []).append(p)
    out, todo = [], [pid]
    while todo:
        found = kids.get(todo.pop(), [])
        out += found
        todo += found
    return out


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def start_time(pid: int) -> int | None:
    """A process's start time (clock ticks since boot): with the pid, who it is."""
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def psql_failing_on_skills(tmp: Path, real: Path, name: str, prelude: str = "") -> Path:
    """A folder of pg tools (those in `real`) whose psql, replaying skills_db from a
    restore's staging copy, runs the shell `prelude` and then fails as on a full disk."""
    bindir = tmp / name
    bindir.mkdir()
    for tool in ("pg_dump", "pg_restore"):
        (bindir / tool).symlink_to(real / tool)
    psql = bindir / "psql"
    psql.write_text("#!/bin/sh\n"
                    'case "$*" in *staging/skills_db.sql*)\n'
                    + prelude +
                    '  echo "psql: ERROR:  could not extend file: No space left on device" >&2\n'
                    "  exit 3;;\nesac\n"
                    f'exec {real}/psql "$@"\n')
    psql.chmod(0o755)
    os.chmod(tmp, 0o755)
    return bindir
