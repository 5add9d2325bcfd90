"""Measure migrate's window for messages.db and the files on the rig: with the delta steps
(the default) and with --no-delta (everything in the final archive), same data, same rig.
Prints bytes and seconds per step; run from the worktree: .venv/bin/python scripts/..."""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.migrate_helpers import migrate, two_hosts, write_inventory  # noqa: E402
from tests.rig.hosts import Rig  # noqa: E402
from tests.integration.test_migrate_delta import _grow  # noqa: E402

WINDOW = ("stop-old-agent", "final-sync", "final-files", "final-backup", "copy-archive",
          "start-new-jails", "trust-old-key", "restore", "install-files", "point-env",
          "start-new-agent", "doctor")


def one(rig: Rig, rows: int, *args: str) -> dict:
    old, new = two_hosts(rig, jails=("db",))
    write_inventory(rig, old, new, overrides={"db_host": new.address,
                                              "zfs_pool": new.pool_name})
    size = _grow(old, rows)
    res, report = migrate(old, new, *args, timeout=1200)
    assert res.returncode == 0, res.stderr
    steps = {s["id"]: s["seconds"] for s in report["steps"] if s["seconds"] is not None}
    out = {"messages_db_bytes": size, "downtime_s": report["downtime_s"],
           "archive_bytes": report["moved"]["archive"]["size"],
           "copy_bytes": report["copy"].get("bytes_sent"),
           "final_files": report.get("delta", {}).get("final-files"),
           "window_steps_s": {k: steps[k] for k in WINDOW if k in steps}}
    rig.drop(old)
    rig.drop(new)
    return out


if __name__ == "__main__":
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    rig = Rig(Path(tempfile.mkdtemp(prefix="clawdie-rig-", dir="/tmp")))
    rig.setup()
    try:
        result = {"delta": one(rig, rows), "no_delta": one(rig, rows, "--no-delta")}
    finally:
        rig.teardown()
    print(json.dumps(result, indent=2))
