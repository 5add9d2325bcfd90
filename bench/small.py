"""The small-installation pairs: what a backup costs beyond its one unavoidable dump, and
what `clawdie-ops` costs to start.

- backup: `clawdie-ops backup` against the floor, one `pg_dump` of the larger database
  alone into a file (the least any backup of this installation must do), on a host of
  about 65 MB; the backup's own step timings say where the rest goes, and its start-up
  (interpreter, imports, settings: the wall time before its first timed step) is the
  difference between the process's wall time and the backup's own duration.
- start-up: `clawdie-ops --version` against the bare interpreter it runs on.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .measure import Run, measure
from .pairs import CLI, Backups, check, interleave, pair

STARTUP_RUNS = 15


def larger_database(h) -> str:
    """memory or skills: the database with more bytes on disk."""
    sizes = {}
    for key in ("memory", "skills"):
        with h.db_connect(key) as conn:
            sizes[key] = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    return max(sizes, key=sizes.__getitem__)


def floor_script(h, key: str, pgpass: Path, out: Path) -> str:
    """One pg_dump of one database into a file, with the host's own client tools."""
    return (f"set -euo pipefail\nexport PGPASSFILE={pgpass}\n"
            f"{h.cluster.bindir}/pg_dump --clean -h {h.address} -U {key}_user {key}_db "
            f"> {out}\n")


def backup_pair(h, work: Path, runs: int, progress) -> dict:
    b = Backups(h, work)
    key = larger_database(h)
    out = b.out / "floor.sql"
    splits: list[dict] = []

    def floor(i: int) -> Run:
        try:
            return check(measure("floor", floor_script(h, key, b.pgpass, out)))
        finally:
            out.unlink(missing_ok=True)

    def ours(i: int) -> Run:
        run = b.ours(i)
        result = json.loads(run.output[run.output.index("{"):])
        steps = {_step_name(k): v for k, v in (result.get("steps") or {}).items()}
        steps["start-up (interpreter, imports, settings) and exit"] = round(
            run.wall_s - float(result.get("duration_s") or 0) - sum(
                v for k, v in steps.items() if k.startswith("lock")), 3)
        splits.append({"wall_s": run.wall_s, "steps": steps})
        for f in b.out.glob("clawdie-backup-*"):  # one archive at a time: same output folder
            f.unlink()
        return run

    got = interleave(runs, {"floor": floor, "backup": ours}, progress)
    res = pair("small", f"one pg_dump of {key}_db alone (the floor)", "clawdie-ops backup",
               got["floor"], got["backup"])
    mid = sorted(splits, key=lambda x: x["wall_s"])[(len(splits) - 1) // 2]
    res["steps"] = mid["steps"]
    res["floor_multiple"] = round(res["b"]["median"]["wall_s"] / res["a"]["median"]["wall_s"], 2)
    res["ratio"] = None  # a multiple of the floor, not a race
    return res


def _step_name(title: str) -> str:
    """The backup's step titles without the run's own names (snapshot, archive)."""
    if title.startswith("snapshot "):
        return "snapshot (zfs snapshot -r of the jails)"
    if title.startswith("write "):
        return "write the archive (tar, zstd, manifest, signature)"
    return title


def startup_pair(runs: int, progress) -> dict:
    python = str(Path(sys.executable))
    env = dict(os.environ)
    got = interleave(max(runs, STARTUP_RUNS), {
        "python": lambda i: measure("python", [python, "-c", "pass"], env=env),
        "version": lambda i: measure("version", [CLI, "--version"], env=env)},
        lambda line: None)
    res = pair("startup", "the bare interpreter (python -c pass)", "clawdie-ops --version",
               got["python"], got["version"])
    res["version_s"] = res["b"]["median"]["wall_s"]
    res["over_python"] = round(res["b"]["median"]["wall_s"] / res["a"]["median"]["wall_s"], 2)
    res["ratio"] = None
    progress(f"  --version median {res['version_s']:.3f} s, python -c pass "
             f"{res['a']['median']['wall_s']:.3f} s ({len(got['version'])} runs each)")
    return res
