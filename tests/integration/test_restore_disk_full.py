"""A restore whose disk fills up midway still rolls back every database: undoing needs no
free space (found by the fault campaign: the rollback wrote a small file first, and on a
full disk reported "COULD NOT roll back", leaving memory_db with the archive's rows)."""
from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

from clawdie_ops.actions.restore import beside
from faults.scenarios import mount_tmpfs, umount
from tests.conftest import cli
from tests.integration.test_restore import rolled_back, stop_agent
from tests.helpers import pg_rows, psql_failing_on_skills, set_config, tree_digest


def filling_psql(tmp: Path, real: Path, *disks: Path) -> Path:
    """pg tools (those in `real`) whose psql, replaying skills_db from the staging copy,
    first waits for memory_db's replay to end, then takes every free byte of `disks`, then
    fails."""
    fill = "".join(f'  fallocate -l $(($(stat -f -c "%a*%S" {d}))) {d}/.filler\n'
                   for d in disks)
    return psql_failing_on_skills(tmp, real, "pgbin-filling", "  sleep 3\n" + fill)


def state(h) -> dict:
    out = {"files": tree_digest(h.root / "groups"), "env": (h.root / ".env").read_bytes()}
    for key in ("memory", "skills"):
        with h.db_connect(key) as conn:
            out[key] = pg_rows(conn)
    return out


def test_restore_whose_disk_fills_midway_rolls_every_database_back(host, tmp_path):
    set_config(host, pg_data_dir="")  # the dump/aside safety: PostgreSQL in no dataset
    # the installation's disk and TMPDIR's, small enough to fill
    tmpdir = tmp_path / "tmp"
    mount_tmpfs(host.root, "48m")
    mount_tmpfs(tmpdir, "16m")
    try:
        res = cli(host, "backup", "--json", "--no-snapshot", "--output", str(tmp_path))
        assert res.returncode == 0, res.stderr
        archive = json.loads(res.stdout)["archive"]
        with host.db_connect("memory") as conn:  # the installation moves on
            conn.execute("INSERT INTO users (handle) VALUES ('after-backup')")
        with host.db_connect("skills") as conn:
            conn.execute("DELETE FROM skill_chunks WHERE id % 3 = 0")
        before = state(host)
        # clawdie.state_dir on the installation's file system, as the README asks for: the
        # files go aside and come back by rename, which a full disk cannot stop. (With it on
        # another file system they are copied back, and on a full disk that fails, said as
        # "COULD NOT roll back" with the folder that holds them: RELIABILITY.md.)
        set_config(host, state_dir=str(host.root / ".clawdie-ops-state"))
        set_config(host, pg_bin=str(filling_psql(tmp_path, host.cluster.bindir, host.root,
                                                      tmpdir)))

        res = cli(host, "restore", archive, "--yes", env={"TMPDIR": str(tmpdir)})
        for disk in (host.root, tmpdir):
            (disk / ".filler").unlink(missing_ok=True)
        err = " ".join(res.stderr.split())
        assert res.returncode == 1, res.stdout + res.stderr
        assert "restore failed at step" in err, err
        assert "COULD NOT roll back" not in err, err
        assert "memory_db (from its pre-restore dump)" in err  # it was replayed, then undone
        assert state(host) == before
    finally:
        umount(host.root)
        umount(tmpdir)


def test_rollback_on_a_full_disk_renames_files_back_from_beside_their_targets(host, tmp_path):
    # clawdie.state_dir on a file system of its own (fault campaign, issue 13): the staged
    # items are copied in, but what they replace waits beside its target under a hidden
    # name, so the rollback on the full disk is renames, and messages.db comes back exactly.
    tmpdir, state_dir = tmp_path / "tmp", tmp_path / "state"
    mount_tmpfs(host.root, "48m")
    mount_tmpfs(tmpdir, "16m")
    mount_tmpfs(state_dir, "64m")
    try:
        res = cli(host, "backup", "--json", "--no-snapshot", "--output", str(tmp_path))
        assert res.returncode == 0, res.stderr
        archive = json.loads(res.stdout)["archive"]
        stop_agent(host)  # messages.db then compares byte for byte
        # messages.db grew since the backup: putting it back needs more room than removing
        # the restored one frees, which a copy on the full disk cannot find
        con = sqlite3.connect(host.root / "store" / "messages.db")
        with con:
            con.executemany("INSERT INTO router_state VALUES (?, ?)",
                            [(f"after-backup-{i}", "x" * 4000) for i in range(1000)])
        con.close()
        (host.root / "groups" / "main" / "after-backup.md").write_text("new since\n")
        (host.root / ".env").write_text((host.root / ".env").read_text() + "# edited\n")
        before = state(host)
        before["sqlite"] = sqlite_files(host)
        set_config(host, state_dir=str(state_dir))
        set_config(host, pg_bin=str(filling_psql(tmp_path, host.cluster.bindir, host.root,
                                                      tmpdir)))

        res = cli(host, "restore", archive, "--yes", env={"TMPDIR": str(tmpdir)})
        free_root = shutil.disk_usage(host.root).free  # still full while the rollback ran
        for disk in (host.root, tmpdir):
            (disk / ".filler").unlink(missing_ok=True)
        err = " ".join(res.stderr.split())
        assert res.returncode == 1, res.stdout + res.stderr
        assert free_root < 1 << 20, free_root
        assert "COULD NOT roll back" not in err, err
        assert {"messages.db", ".env"} <= rolled_back(err), err
        after = state(host)
        after["sqlite"] = sqlite_files(host)
        assert after == before
        # nothing hidden is left beside the targets
        assert beside.found([host.root, host.root / "store"]) == []
    finally:
        umount(host.root)
        umount(tmpdir)
        umount(state_dir)


def sqlite_files(h) -> dict[str, str]:
    store = h.root / "store"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.iterdir()) if p.name.startswith("messages.db")}
