"""Every failure of `backup` is produced for real, says what to do, and leaves no archive."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import cli
from tests.helpers import CACHE, leftovers, set_config
from tests.rig import content
from tests.rig.postgres import pg14_bindir
from tests.rig.services import ZFS, sh, zfs_retry


def set_env(h, key: str, value: str) -> None:
    h.env[key] = value
    (h.root / ".env").write_text(content.env_text(h.env))


def fails(h, *args: str, out: Path | None = None) -> str:
    out = out or h.home / "backups"
    res = cli(h, "backup", *args)
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr, res.stderr
    assert leftovers(out) == [], f"left behind: {leftovers(out)}"
    # Secrets never show up in an error.
    assert content.MEMORY_PASSWORD not in res.stderr and content.SKILLS_PASSWORD not in res.stderr
    return res.stderr


def test_pg_dump_missing_gives_install_hint(host):
    set_config(host, pg_bin="/nonexistent/pgbin")
    err = fails(host)
    assert "pg_dump not found" in err and "apt-get install postgresql-client-18" in err


def test_pg_dump_missing_hint_defaults_to_runbook(host):
    """FreeBSD's client package of the server's major version (18 on this host)."""
    cfg = json.loads((host.home / ".invoke.json").read_text())
    del cfg["clawdie"]["commands"]["pg_install_hint"]
    cfg["clawdie"]["pg_bin"] = "/nonexistent/pgbin"
    (host.home / ".invoke.json").write_text(json.dumps(cfg))
    assert "pkg install postgresql18-client" in fails(host)


def test_pg_dump_older_than_server_is_refused_before_dumping(host):
    set_config(host, pg_bin=str(pg14_bindir(CACHE)))
    err = fails(host)
    assert "pg_dump 14." in err and "older than the PostgreSQL 18." in err
    assert host.address in err


def test_database_unreachable(host):
    set_env(host, "DB_PORT", "5499")
    err = fails(host)
    assert "cannot reach PostgreSQL" in err and f"{host.address}:5499" in err
    assert "db jail" in err


def test_wrong_password(host):
    set_env(host, "MEMORY_DB_PASSWORD", "not the password")
    err = fails(host)
    assert "refused the password" in err and "MEMORY_DB_PASSWORD" in err


def test_dataset_missing(host):
    zfs_retry("destroy", "-r", host.dataset("cms"))  # with its `root` child
    err = fails(host)
    assert host.dataset("cms") in err and "--no-snapshot" in err
    # With --no-snapshot the same installation backs up.
    assert cli(host, "backup", "--no-snapshot").returncode == 0


def test_output_directory_missing_or_read_only(host):
    assert "does not exist" in fails(host, "--output", str(host.base / "nope"),
                                     out=host.home / "backups")
    ro = f"{host.pool.name}/ro"
    sh(ZFS, "create", ro)
    mnt = host.pool.mount_of(ro)
    sh(ZFS, "set", "readonly=on", ro)
    err = fails(host, "--output", str(mnt), out=mnt)
    assert "not writable" in err and str(mnt) in err


@pytest.mark.parametrize("headroom", [20_000, 300_000])
def test_output_directory_full_leaves_nothing(host, headroom):
    """20 kB free: refused by the preflight. 300 kB: passes it, runs out while writing."""
    small = f"{host.pool.name}/small"
    sh(ZFS, "create", small)
    used = int(sh(ZFS, "get", "-Hp", "-o", "value", "used", small).stdout)
    sh(ZFS, "set", f"quota={used + headroom}", small)
    mnt = host.pool.mount_of(small)
    if headroom < 100_000:
        err = fails(host, "--output", str(mnt), "--no-snapshot", out=mnt)
        assert "not enough space" in err and str(mnt) in err
    else:  # with snapshots: the error says the snapshot taken before the failure was kept
        err = fails(host, "--output", str(mnt), out=mnt)
        assert "ran out of space during the backup" in err and str(mnt) in err
        assert f"snapshot {host.pool.name}/clawdie/jails@clawdie-backup-" in err
        assert "was kept" in err


def test_env_missing_or_unreadable(host):
    env = host.root / ".env"
    env.rename(host.root / "env.moved")
    err = fails(host)
    assert ".env not found" in err and str(env) in err and "--root" in err
    env.mkdir()  # present, but not a readable file
    assert ".env unreadable" in fails(host)


def test_messages_db_missing(host):
    (host.root / "store" / "messages.db").unlink()
    assert "messages.db not found" in fails(host)
