"""Restore where PostgreSQL's data directory is in the db jail's dataset (the rig's, as on a
Clawdie host): the databases' pre-restore copy is a ZFS snapshot instead of a dump, and a
failure after it stops the jail, rolls it back and starts it again."""
from __future__ import annotations

import json
import re
import subprocess

from tests.conftest import cli
from tests.helpers import pg_rows, psql_failing_on_skills, set_config
from tests.integration.test_restore import rolled_back, work_base
from tests.rig.services import ZFS


def db_rows(h) -> dict:
    out = {}
    for key in ("memory", "skills"):
        with h.db_connect(key) as conn:
            out[key] = pg_rows(conn)
    return out


def snapshots(h) -> list[str]:
    res = subprocess.run([ZFS, "list", "-H", "-o", "name", "-t", "snapshot", "-r",
                          h.dataset("db")], capture_output=True, text=True, check=True)
    return res.stdout.split()


def postmaster_pid(h) -> int:
    return int((h.cluster.datadir / "postmaster.pid").read_text().split()[0])


def backup(h, tmp_path) -> str:
    res = cli(h, "backup", "--json", "--no-snapshot", "--output", str(tmp_path), check=True)
    return json.loads(res.stdout)["archive"]


def test_restore_keeps_the_databases_as_a_snapshot_not_a_dump(host, tmp_path):
    archive = backup(host, tmp_path)
    backed_up = db_rows(host)
    with host.db_connect("memory") as conn:
        conn.execute("INSERT INTO users (handle) VALUES ('after-backup')")
    plan = cli(host, "restore", archive, "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert re.search(rf"^ *snapshot +\S*zfs snapshot -r {re.escape(host.dataset('db'))}"
                     "@clawdie-pre-restore-", plan.stdout, re.M), plan.stdout
    assert "pg_dump --clean" not in plan.stdout  # no dump of the live databases

    res = cli(host, "restore", archive, "--yes", "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    snap = report["safety"]["db_snapshot"]
    assert snap and snap.startswith(host.dataset("db") + "@clawdie-pre-restore-")
    assert snap in snapshots(host)  # kept under its documented name
    assert report["safety"]["snapshot"] is None  # one snapshot, taken with the agent stopped
    assert db_rows(host) == backed_up
    before = work_base(host) / next(p.name for p in work_base(host).iterdir()) / "before"
    assert not list(before.glob("*_db.sql"))  # no dump was taken


def test_failure_after_the_snapshot_rolls_the_jail_back(host, tmp_path):
    archive = backup(host, tmp_path)
    with host.db_connect("memory") as conn:  # the installation moves on
        conn.execute("INSERT INTO users (handle) VALUES ('after-backup')")
    with host.db_connect("skills") as conn:
        conn.execute("DELETE FROM skill_chunks WHERE id % 3 = 0")
    before = db_rows(host)
    pid = postmaster_pid(host)
    # memory_db's replay commits, skills_db's fails: only the rollback can undo memory_db
    set_config(host, pg_bin=str(psql_failing_on_skills(tmp_path, host.cluster.bindir,
                                                       "pgbin-failing", "  sleep 2\n")))
    res = cli(host, "restore", archive, "--yes")
    err = " ".join(res.stderr.split())
    assert res.returncode == 1, res.stdout + res.stderr
    assert "COULD NOT roll back" not in err, err
    done = rolled_back(err)
    assert any(x.startswith("memory_db and skills_db (ZFS rollback to @clawdie-pre-restore-")
               for x in done), err
    # the server runs again (a new postmaster: the jail was stopped and started) and
    # holds every row it had before the restore
    assert postmaster_pid(host) != pid
    assert (host.home / ".rig-jails" / "db").exists()  # the jail is marked running
    assert db_rows(host) == before


def test_without_pg_data_dir_the_databases_are_dumped_as_before(host, tmp_path):
    archive = backup(host, tmp_path)
    set_config(host, pg_data_dir="")
    res = cli(host, "restore", archive, "--yes", "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["safety"]["db_snapshot"] is None
    before = work_base(host) / next(p.name for p in work_base(host).iterdir()) / "before"
    assert sorted(p.name for p in before.glob("*_db.sql")) == ["memory_db.sql",
                                                                "skills_db.sql"]
