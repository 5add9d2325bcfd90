"""The demo: back up a realistic installation on the embedded rig, drill its archive, and
migrate the installation to a fresh host.

Run with `bash scripts/demo`. It builds a simulated host (zfs-fuse pool, PostgreSQL 15, a
Clawdie root with data, its agent running), runs the real `clawdie-ops backup` there as an
operator would, lists what the archive holds with `clawdie-ops inspect`, restores it into
a throwaway cluster with `clawdie-ops drill`, then moves everything with `clawdie-ops
migrate` to a second host that has no clawdie-ops yet (over SSH, each host with its own
sshd, PostgreSQL and pool), and removes everything it built.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from clawdie_ops.hosts import agent
from clawdie_ops.config import settings as config

from tests.conftest import context_for

from .hosts import Rig

CLI = str(Path(sys.executable).parent / "clawdie-ops")


def step(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2000, help="messages and memories to create")
    parser.add_argument("--keep", action="store_true", help="leave the rig running at the end")
    parser.add_argument("--no-migrate", action="store_true",
                        help="stop after the drill (no second host, no migration)")
    args = parser.parse_args()
    rig = Rig(Path(tempfile.mkdtemp(prefix="clawdie-demo-", dir="/tmp")))
    try:
        step("building a simulated Clawdie host: zfs-fuse pool, PostgreSQL 15, sample data")
        h = rig.host("demo", rows=args.rows, ssh=not args.no_migrate)
        (h.home / "backups").mkdir()
        print(f"host address {h.address}, Clawdie root {h.root}, pool {h.pool.name}")
        print(f"messages.db tables: {h.sqlite_counts()}")
        env = h.proc_env()
        c = context_for(h)
        agent.start(c, config.load(c.config, root=h.root))  # the agent runs, as on a live box

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

        step("clawdie-ops drill: restore the archive into a throwaway cluster and verify it")
        subprocess.run([CLI, "drill", archive], env=env, cwd=h.root, check=True)

        if not args.no_migrate:
            migrate_demo(rig, h)
        if args.keep:
            print(f"\nrig kept under {rig.base}; HOME={h.home} CLAWDIE_ROOT={h.root}")
            return 0
    finally:
        if not args.keep:
            rig.teardown()
    print("\ndemo done; everything it built was removed")
    return 0


def migrate_demo(rig: Rig, old) -> None:
    from tests.migrate_helpers import install_entry, write_inventory

    step("a second host, fresh: PostgreSQL and a pool, the Clawdie checkout, no clawdie-ops")
    new = rig.host("newbox", ssh=True, populated=False, datasets=False, with_roles=True,
                   tool_on_path=False)
    new.root.mkdir(parents=True, exist_ok=True)
    (new.home / "backups").mkdir()
    print(f"host address {new.address}, its own sshd, PostgreSQL and pool {new.pool.name}")
    # the operator's inventory on the old host: how to reach the new one, what differs there
    write_inventory(rig, old, new, overrides={"db_host": new.address,
                                              "zfs_pool": new.pool_name},
                    install=install_entry())
    env = old.proc_env()

    step("clawdie-ops migrate --to newbox --dry-run   (the plan; clawdie-ops is missing there)")
    subprocess.run([CLI, "migrate", "--to", new.name, "--dry-run"], env=env, cwd=old.root)

    step("clawdie-ops migrate --to newbox --yes")
    subprocess.run([CLI, "migrate", "--to", new.name, "--yes"], env=env, cwd=old.root,
                   check=True)
    print(f"\nagent running: old host {old.agent_running()}, new host {new.agent_running()}")
    print(f"messages.db tables on the new host: {new.sqlite_counts()}")


if __name__ == "__main__":
    sys.exit(main())
