"""`doctor` on the rig: every check says ok on a healthy host, and fails (or warns) for the
real condition it watches: a stopped agent, a wrong password, an old pg_dump, a missing
dataset, no snapshot, no backup, a full disk."""
from __future__ import annotations

import json
import time

from tests.conftest import cli
from tests.helpers import CACHE, set_config, wait_until
from tests.integration.test_restore import backup, start_agent, stop_agent, write_env
from tests.rig.postgres import pg14_bindir
from tests.rig.services import ZFS, sh, zfs_retry

NAMES = [".env", "agent", "database memory_db", "database skills_db", "pg_dump",
         "jail datasets", "snapshots", "backups", "free space"]


def doctor(h) -> tuple[int, dict[str, dict]]:
    res = cli(h, "doctor", "--json")
    assert "Traceback" not in res.stderr, res.stderr
    doc = json.loads(res.stdout)
    return res.returncode, {c["name"]: c for c in doc["checks"]}


def test_doctor_says_ok_on_a_healthy_host(host):
    start_agent(host)
    try:
        backup(host)  # snapshots the jail datasets and writes an archive
        code, checks = doctor(host)
        assert list(checks) == NAMES
        assert {n: c["status"] for n, c in checks.items()} == {n: "ok" for n in NAMES}, checks
        assert code == 0
        assert f"at {host.address}:5432 as memory_user (PostgreSQL 15." in \
            checks["database memory_db"]["detail"]
        res = cli(host, "doctor")
        assert res.returncode == 0
        lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
        assert len(lines) == len(NAMES) and all(ln.split()[0] == "ok" for ln in lines)
    finally:
        stop_agent(host)


def test_doctor_fails_for_each_real_condition(host):
    # No backup has run: no snapshot, no archive. The agent is not running.
    write_env(host, SKILLS_DB_PASSWORD="not the password")
    set_config(host, pg_bin=str(pg14_bindir(CACHE)))
    zfs_retry("destroy", "-r", host.dataset("git"))
    tiny = f"{host.pool_name}/clawdie/tiny"
    sh(ZFS, "create", "-o", "quota=2M", tiny)
    mnt = host.pool.mount_of(tiny)
    set_config(host, backup_dir=str(mnt))
    code, checks = doctor(host)
    status = {n: c["status"] for n, c in checks.items()}
    assert status == {".env": "ok", "agent": "fail", "database memory_db": "ok",
                      "database skills_db": "fail", "pg_dump": "fail", "jail datasets": "fail",
                      "snapshots": "fail", "backups": "fail", "free space": "fail"}, checks
    assert code == 2
    assert "not running" in checks["agent"]["detail"] and "fake_agent" in checks["agent"]["fix"]
    assert "refused the password" in checks["database skills_db"]["detail"]
    assert "pg_dump 14." in checks["pg_dump"]["detail"]
    assert "older than the PostgreSQL 15." in checks["pg_dump"]["detail"]
    assert host.dataset("git") in checks["jail datasets"]["detail"]
    assert "no snapshot of" in checks["snapshots"]["detail"]
    assert f"no clawdie-backup-* archive in {mnt}" in checks["backups"]["detail"]
    assert "free in" in checks["free space"]["detail"]
    assert all(checks[n]["fix"] for n, s in status.items() if s == "fail")
    res = cli(host, "doctor")
    assert res.returncode == 2 and res.stdout.count("FAIL") == 7


def test_doctor_warns_when_snapshots_and_backups_age(host):
    backup(host)
    start_agent(host)
    try:
        set_config(host, doctor={"snapshot_warn_hours": 0.0002, "snapshot_fail_hours": 24,
                                 "backup_warn_hours": 0.0002, "backup_fail_hours": 24})
        # older than 0.72s: past the warning, far from the failure
        newest = max(p.stat().st_mtime for p in (host.home / "backups").iterdir())
        wait_until(lambda: time.time() - newest > 1.0, 10, "the backup to age past 0.72s")
        code, checks = doctor(host)
        assert checks["snapshots"]["status"] == "warn", checks["snapshots"]
        assert checks["backups"]["status"] == "warn", checks["backups"]
        assert code == 1
        set_config(host, doctor={"snapshot_fail_hours": 0.0002, "snapshot_warn_hours": 0.0001})
        code, checks = doctor(host)
        assert checks["snapshots"]["status"] == "fail" and code == 2
    finally:
        stop_agent(host)
