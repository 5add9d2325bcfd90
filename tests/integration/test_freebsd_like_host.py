"""A host as FreeBSD and bastille make it: no bash anywhere (here, on the other host's
sshd sessions, for root's login shell), and each jail a dataset `jails/NAME` with its
files in the child `NAME/root`. Every action leaves the target equal to the source, file
by file, the `root` children included."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from tests.conftest import cli
from tests.helpers import jail_digest
from tests.integration.test_restore import state, stop_agent
from tests.integration.test_zfs_snapshots import RIG_PATH, configure, zfs_snapshots
from tests.migrate_helpers import (dataset_state, db_state, files_state, migrate, snapshots,
                                   sqlite_state, write_inventory)
from tests.rig.hosts import JAILS, RIG_BIN
from tests.rig.services import without_bash, zfs_retry


def run_json(h, *args: str) -> dict:
    return json.loads(cli(h, *args, "--json", check=True, env=RIG_PATH).stdout)


def assert_no_bash(rig, *hosts) -> None:
    """The test proves something only if bash really fails where the tool runs."""
    here = subprocess.run(without_bash(["bash", "-c", "true"], rig.base), capture_output=True)
    assert here.returncode != 0
    for h in hosts:
        ssh = ["ssh", "-F", str(rig.ssh_config), h.alias]
        there = subprocess.run([*ssh, "bash -c true"], capture_output=True, timeout=30)
        assert there.returncode != 0, f"bash works on {h.name}'s sessions"
        shell = subprocess.run([*ssh, "echo $0"], capture_output=True, text=True, timeout=30)
        assert shell.returncode == 0 and shell.stdout.strip().endswith("sh"), shell


@pytest.fixture
def pair(rig):
    old = rig.new_host(ssh=True, no_bash=True)
    new = rig.new_host(ssh=True, no_bash=True, populated=False, datasets=False)
    (old.home / "backups").mkdir(exist_ok=True)
    yield old, new
    rig.drop(old)
    rig.drop(new)


def test_backup_restore_replicate_rollback_and_sanoid_without_bash(rig, pair, tmp_path):
    old, new = pair
    assert_no_bash(rig, old, new)

    # backup, then restore over a damaged installation: everything as it was
    original = state(old)
    archive = json.loads(cli(old, "backup", "--json", check=True).stdout)
    names = {s.split("@")[0] for s in archive["snapshots"]}
    assert {old.dataset(j) for j in JAILS} | {old.root_dataset(j) for j in JAILS} <= names
    with old.db_connect("memory") as conn:
        conn.execute("DROP TABLE memories CASCADE")
    shutil.rmtree(old.root / "groups")
    res = cli(old, "restore", archive["archive"], "--yes", "--json")
    assert res.returncode == 0, res.stderr
    stop_agent(old)
    assert state(old) == original

    # replicate: every jail and its root child arrive byte for byte, over sessions
    # without bash on the other end
    configure(old, ssh_config=str(rig.ssh_config), hosts={new.alias: {
        "ssh": new.alias, "root": str(new.root), "overrides": {"home": str(new.home)}}})
    first = run_json(old, "replicate", "--to", new.alias, "--target-pool", new.pool_name)
    assert [d["mode"] for d in first["datasets"]] == ["full"] * 4
    assert dataset_state(new) == dataset_state(old)

    # rollback: the jail's files (in root) and its jail.conf come back together
    db_files, db_top = old.jail_files("db"), old.pool.mount_of(old.dataset("db"))
    before = (jail_digest(db_top), jail_digest(db_files))
    snap = run_json(old, "snapshot", "--dataset", "db", "--tag", "drill")["name"]
    (db_files / "data.bin").write_bytes(os.urandom(5000))
    (db_files / "etc" / "rc.conf").unlink()
    (db_top / "fstab").write_text("changed\n")
    done = run_json(old, "rollback", f"db@{snap}", "--yes")
    assert [d["dataset"] for d in done["datasets"]] == [old.dataset("db"),
                                                        old.root_dataset("db")]
    assert (jail_digest(db_top), jail_digest(db_files)) == before

    # sanoid with the generated config: each jail and its root get the same snapshots
    confdir = tmp_path / "sanoid"
    confdir.mkdir()
    run_json(old, "sanoid-config", "--write", str(confdir))
    sanoid = without_bash(["sanoid", "--configdir", str(confdir), "--cache-dir",
                           str(tmp_path / "cache"), "--run-dir", str(tmp_path / "run"),
                           "--cron"], rig.base)
    res = subprocess.run(sanoid, env={**os.environ, "PATH": f"{RIG_BIN}:{os.environ['PATH']}"},
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    for j in JAILS:
        autos = [n.split("@")[1] for n in zfs_snapshots(old.dataset(j)) if "@autosnap_" in n]
        assert autos and autos == [n.split("@")[1] for n in zfs_snapshots(old.root_dataset(j))
                                   if "@autosnap_" in n]

    # and the increment of all that reaches the other host, root children included
    time.sleep(1.1)
    second = run_json(old, "replicate", "--to", new.alias, "--target-pool", new.pool_name)
    assert {d["mode"] for d in second["datasets"]} == {"incremental"}
    assert dataset_state(new) == dataset_state(old)


def test_migrate_onto_a_host_prepared_by_step_1_sets_its_jails_aside_without_bash(rig):
    """The new host as the runbook's step 1 leaves it: bastille created its jails (their
    datasets hold a fresh jail), PostgreSQL holds the roles and empty databases. No --force:
    its jail datasets are renamed aside, named in the plan and the report, never destroyed."""
    old = rig.new_host(ssh=True, no_bash=True)
    new = rig.new_host(ssh=True, no_bash=True, populated=False, datasets=True,
                       with_roles=True)
    try:
        new.root.mkdir(parents=True, exist_ok=True)
        for h in (old, new):
            (h.home / "backups").mkdir(exist_ok=True)
            (h.home / "crontab").write_text("0 * * * * sanoid --cron\n")
        assert_no_bash(rig, old, new)
        theirs = {j: jail_digest(new.jail_files(j)) for j in JAILS}
        assert all(theirs.values())  # a fresh jail's files, made on the new host
        write_inventory(rig, old, new)
        cli(old, "migrate-step", "agent-start", check=True)

        dry = json.loads(cli(old, "migrate", "--to", new.name, "--dry-run", "--json").stdout)
        assert dry["preflight"] == "ok", dry
        checks = {c["name"]: c for c in dry["checks"]}
        assert checks["new host is empty"]["status"] == "ok"
        aside = checks["new host's jail datasets"]["detail"]
        for j in JAILS:
            assert f"{new.dataset(j)} -> {new.dataset(j)}.pre-migrate-" in aside
        assert not any(".pre-migrate-" in d for d in snapshots(new))  # nothing renamed yet

        res, report = migrate(old, new)  # no --force
        assert res.returncode == 0, res.stderr + res.stdout
        assert report["status"] == "done"
        kept = report["set_aside"]
        assert sorted(k.split(".pre-migrate-")[0] for k in kept) == \
            sorted(new.dataset(j) for j in JAILS)
        for j, name in zip(sorted(JAILS), sorted(kept), strict=True):
            # kept whole, root child included, with the files the new host had made
            assert jail_digest(new.pool.mount_of(f"{name}/root")) == theirs[j]
        # the old host's datasets and their root children arrived file by file
        assert dataset_state(new) == dataset_state(old)
        assert sqlite_state(new) == sqlite_state(old)
        assert db_state(new) == db_state(old)
        skip = ("WARDEN_DB_IP", "ZFS_POOL")
        assert files_state(new, skip) == files_state(old, skip)
        assert new.agent_running() and not old.agent_running()
        text = cli(old, "migrate", "--to", new.name).stdout  # the stored report, for a person
        assert "completed earlier" in text
    finally:
        rig.drop(old)
        rig.drop(new)


def test_doctor_checks_the_jails_root_dataset_and_the_path_it_runs_in(host):
    code = cli(host, "migrate-step", "jails-start", "--json", check=True)
    assert code.returncode == 0
    doc = json.loads(cli(host, "doctor", "--json").stdout)
    checks = {c["name"]: c for c in doc["checks"]}
    assert checks["jail paths"]["status"] == "ok", checks["jail paths"]
    assert "db" in checks["jail paths"]["detail"]
    # a jail started from somewhere else than its root dataset
    (host.home / ".rig-jails" / "git").write_text("/usr/local/bastille/jails/git/root\n")
    checks = {c["name"]: c for c in json.loads(cli(host, "doctor", "--json").stdout)["checks"]}
    assert checks["jail paths"]["status"] == "fail"
    assert f"but {host.root_dataset('git')} is mounted at {host.jail_files('git')}" in \
        checks["jail paths"]["detail"]
    # a jail dataset without its root child is not bastille's layout
    zfs_retry("destroy", "-r", host.root_dataset("cms"))
    checks = {c["name"]: c for c in json.loads(cli(host, "doctor", "--json").stdout)["checks"]}
    assert checks["jail datasets"]["status"] == "fail"
    assert host.root_dataset("cms") in checks["jail datasets"]["detail"]


def test_remote_commands_go_through_sh_where_roots_login_shell_is_not_posix(rig):
    """sshd runs each command through root's login shell, csh on older FreeBSD installs:
    every command clawdie-ops sends over Fabric is handed to /bin/sh -c, the temporary
    config files (`${TMPDIR:-/tmp}`) included."""
    from types import SimpleNamespace

    from invoke import Context

    from clawdie_ops import runner
    from clawdie_ops.hosts import remote, ssh as sshmod

    h = rig.new_host(ssh=True, no_bash=True, login_shell=str(RIG_BIN / "csh-like"),
                     populated=False, datasets=False)
    try:
        posix = 'echo "${TMPDIR:-/tmp}" "$(echo sub)" 2>&1'
        # the control: handed to the login shell as it is, POSIX syntax is refused there
        raw = subprocess.run(["ssh", "-F", str(rig.ssh_config), h.alias, posix],
                             capture_output=True, text=True, timeout=30)
        assert raw.returncode != 0 and "csh-like" in raw.stderr
        conn = sshmod.connect(sshmod.resolve(Context(), h.alias, str(rig.ssh_config)))
        try:
            res = runner.run(conn, runner.Shell(posix))
            assert res.exited == 0 and res.stdout.split() == ["/tmp", "sub"], res
            where = SimpleNamespace(label=f"{h.name} (csh-like root shell)")
            path = remote.write_temp_config(conn, where, {"clawdie": {"x": 1}})
            assert json.loads(open(path).read()) == {"clawdie": {"x": 1}}
            assert os.stat(path).st_mode & 0o777 == 0o600
            remote.remove_temp_config(conn, where, path)
            assert not os.path.exists(path)
        finally:
            conn.close()
    finally:
        rig.drop(h)
