"""The demo: back up a realistic installation on the embedded rig, then show the archive.

Run with `bash scripts/demo`. It builds one simulated host (zfs-fuse pool, PostgreSQL 15,
a Clawdie root with data), runs the real `clawdie-ops backup` there as an operator would,
lists what the archive holds with `clawdie-ops inspect`, and removes everything it built.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from .hosts import Rig

CLI = str(Path(sys.executable).parent / "clawdie-ops")


def step(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2000, help="messages and memories to create")
    parser.add_argument("--keep", action="store_true", help="leave the rig running at the end")
    args = parser.parse_args()
    rig = Rig(Path(tempfile.mkdtemp(prefix="clawdie-demo-", dir="/tmp")))
    try:
        step("building a simulated Clawdie host: zfs-fuse pool, PostgreSQL 15, sample data")
        h = rig.host("demo", rows=args.rows)
        (h.home / "backups").mkdir()
        print(f"host address {h.address}, Clawdie root {h.root}, pool {h.pool.name}")
        print(f"messages.db tables: {h.sqlite_counts()}")
        env = h.proc_env()

        step(f"clawdie-ops backup --dry-run   (as the operator on {h.address})")
        subprocess.run([CLI, "backup", "--dry-run"], env=env, cwd=h.root, check=True)

        step("clawdie-ops backup")
        subprocess.run([CLI, "backup"], env=env, cwd=h.root, check=True)
        res = subprocess.run([CLI, "backup", "--json", "--compression", "gzip"], env=env,
                             cwd=h.root, check=True, capture_output=True, text=True)
        archive = json.loads(res.stdout)["archive"]
        print(f"and the runbook's .tar.gz with --compression gzip --json: {archive}")

        step("what the archive holds: clawdie-ops inspect")
        subprocess.run([CLI, "inspect", archive], env=env, cwd=h.root, check=True)

        step("the snapshots it took")
        subprocess.run(["zfs", "list", "-H", "-o", "name", "-t", "snapshot", "-r",
                        f"{h.pool.name}/clawdie/jails"], check=True)
        if args.keep:
            print(f"\nrig kept under {rig.base}; HOME={h.home} CLAWDIE_ROOT={h.root}")
            return 0
    finally:
        if not args.keep:
            rig.teardown()
    print("\ndemo done; everything it built was removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
