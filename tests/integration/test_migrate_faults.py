"""Migrations that go wrong: each ends with the old host running and intact, and a clear report."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import CLI, cli
from tests.helpers import psql_failing_on_skills
from tests.migrate_helpers import (assert_old_intact, install_entry, journal_path, migrate,
                                   snapshots, two_hosts, whole_state, write_inventory)
from tests.rig.proxy import through_proxy


def _big_attachment(old, size: int = 1_000_000) -> None:
    """Incompressible data, so the archive upload is the one big stream of the migration."""
    path = old.root / "groups" / "main" / "attachments" / "video.bin"
    path.write_bytes(random.Random(5).randbytes(size))


def test_unreachable_new_host_stops_at_preflight_and_changes_nothing(rig):
    old, new = two_hosts(rig)
    write_inventory(rig, old, new)
    new.sshd.stop()  # the new host is down
    before, snaps = whole_state(old), snapshots(old)
    res = cli(old, "migrate", "--to", new.name, "--yes")  # what a person reads
    assert res.returncode != 0
    assert "cannot reach" in res.stderr and new.name in res.stderr
    assert "nothing was changed" in res.stderr
    assert "failed" in res.stdout and "stopped at: connect" in res.stdout
    assert_old_intact(old, before, snaps)
    assert not journal_path(old, new).exists() or \
        json.loads(journal_path(old, new).read_text())["status"] == "failed"
    rig.drop(old)
    rig.drop(new)


def test_installing_clawdie_ops_on_the_new_host_fails_clearly_and_changes_nothing(rig):
    old, new = two_hosts(rig, new_has_tool=False, jails=("db",))
    before, snaps = whole_state(old), snapshots(old)
    venv = new.home / ".local" / "clawdie-ops"
    # no such Python there
    write_inventory(rig, old, new, install={"python": "/nonexistent/python3"})
    res = cli(old, "migrate", "--to", new.name, "--yes")
    assert res.returncode != 0
    assert "stopped at: tools" in res.stdout
    assert "Traceback" not in res.stderr + res.stdout
    assert "'/nonexistent/python3' not found there" in res.stderr
    assert f"clawdie.hosts.{new.name}.install.python" in res.stderr
    # a Python, but pip cannot reach any index for the dependencies
    python = install_entry()["python"]
    write_inventory(rig, old, new, install={"python": python, "pip_args": "--no-index"})
    res = cli(old, "migrate", "--to", new.name, "--yes")
    assert res.returncode != 0 and "stopped at: tools" in res.stdout
    assert "Traceback" not in res.stderr + res.stdout
    assert "pip could not install clawdie-ops" in res.stderr and "pip_args" in res.stderr
    assert "the virtualenv stays, the next run completes it" in res.stderr
    assert "nothing else was changed on either host" in res.stderr
    # the old host is as it was; the new host holds only the half-made virtualenv, which
    # the next run completes, and no upload is left in its temp dir
    assert_old_intact(old, before, snaps)
    assert not (new.root / ".env").exists() and (venv / "bin" / "python").exists()
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("clawdie-ops.*/*.whl"))
    write_inventory(rig, old, new, install=install_entry())
    ok = cli(old, "migrate", "--to", new.name, "--dry-run")
    assert "clawdie-ops is not installed" in ok.stderr  # a dry run still installs nothing
    rig.drop(old)
    rig.drop(new)


def test_unknown_host_key_is_refused_unless_the_operator_accepts_it(rig):
    old, new = two_hosts(rig)
    empty = rig.base / f"known_hosts-{new.name}"
    empty.write_text("")
    alias = f"rig-{new.name}-fresh"
    with open(rig.ssh_config, "a") as fh:
        fh.write(f"\nHost {alias}\n  HostName {new.address}\n  Port 2222\n  User root\n"
                 f"  IdentityFile {rig.client_key}\n  IdentitiesOnly yes\n"
                 f"  UserKnownHostsFile {empty}\n  StrictHostKeyChecking no\n")
    write_inventory(rig, old, new, ssh=alias)
    res, report = migrate(old, new)
    assert res.returncode != 0
    # even with StrictHostKeyChecking no in the ssh config: refused
    assert "host key" in res.stderr and "unknown" in res.stderr
    assert "--accept-new-host-key" in res.stderr
    assert report["stopped_at"] == "connect" and old.agent_running()
    assert empty.read_text() == ""
    ok = cli(old, "migrate", "--to", new.name, "--dry-run", "--accept-new-host-key")
    assert ok.returncode == 0, ok.stderr
    assert new.sshd.host_pubkey in empty.read_text()
    rig.drop(old)
    rig.drop(new)


def test_guard_refuses_when_the_new_host_would_use_the_old_database(rig):
    # No db_host override: the old .env's WARDEN_DB_IP (the old host's PostgreSQL) would
    # be in force on the new host after the restore.
    old, new = two_hosts(rig)
    write_inventory(rig, old, new, overrides={"zfs_pool": new.pool_name})
    before, snaps = whole_state(old), snapshots(old)
    res, report = migrate(old, new)
    assert res.returncode != 0
    assert report["stopped_at"] == "evaluate"
    assert "OLD host's PostgreSQL" in res.stderr and "db_host" in res.stderr
    guard = next(ch for ch in report["checks"] if ch["name"] == "database identity")
    assert guard["status"] == "fail"
    assert_old_intact(old, before, snaps)
    assert not (new.root / ".env").exists()
    rig.drop(old)
    rig.drop(new)


def test_connection_cut_during_the_archive_copy_is_resumed(rig):
    old, new = two_hosts(rig, jails=("db",))
    _big_attachment(old)
    alias, proxy = through_proxy(rig, new, cut_after=300_000, cuts=1)
    try:
        # the operator's link to the new host goes through the proxy; syncoid (old -> new)
        # keeps the direct one
        write_inventory(rig, old, new, ssh=alias, peer_ssh=new.alias)
        # --no-delta: the attachment travels in the archive, whose copy is cut
        res, report = migrate(old, new, "--no-delta")
    finally:
        proxy.stop()
    assert res.returncode == 0, res.stderr + res.stdout
    assert proxy.cut_count == 1
    copy = report["copy"]
    assert copy["attempts"] == 2 and copy["resumed_from"] and copy["resumed_from"][0] > 0
    assert copy["bytes_sent"] < 2 * report["moved"]["archive"]["size"]
    assert new.agent_running() and not old.agent_running()
    arrived = Path(report["moved"]["archive"]["new"])
    assert arrived.exists() and not arrived.with_name(arrived.name + ".partial").exists()
    assert (new.root / "groups" / "main" / "attachments" / "video.bin").read_bytes() == \
        (old.root / "groups" / "main" / "attachments" / "video.bin").read_bytes()
    rig.drop(old)
    rig.drop(new)


def test_link_down_for_good_rolls_back_and_the_same_command_then_continues(rig):
    old, new = two_hosts(rig)
    _big_attachment(old)
    alias, proxy = through_proxy(rig, new, cut_after=300_000, cuts=-1)
    try:
        write_inventory(rig, old, new, ssh=alias, peer_ssh=new.alias)
        before, snaps = whole_state(old), snapshots(old)
        res, report = migrate(old, new, "--retries", "2", "--no-delta")
        assert res.returncode != 0
        assert report["stopped_at"] == "copy-archive"
        assert "failed after 2 attempts" in res.stderr
        assert "agent runs again" in res.stderr and "continues where it stopped" in res.stderr
        assert report["undone"] == ["started the agent on the old host again"]
        assert report["old_host"]["agent_running"] is True
        holds = report["new_host"]
        assert holds["datasets_received"] and not holds["restored"] and not holds["archive"]
        assert len(holds["datasets"]) == 4 and holds["agent_running"] is False
        assert_old_intact(old, before, snaps)

        proxy.cut_after = None  # the link is repaired
        res, report = migrate(old, new, "--no-delta")
    finally:
        proxy.stop()
    assert res.returncode == 0, res.stderr + res.stdout
    assert report["resumed"] is True
    assert {"pause-new-schedule", "presync"} <= set(report["skipped"])
    assert new.agent_running() and not old.agent_running()
    assert not list((new.home / "backups").glob("*.partial"))
    rig.drop(old)
    rig.drop(new)


def _failing_psql(tmp: Path, real: Path) -> Path:
    """pg tools (those in `real`) whose psql fails replaying skills_db from the restore's
    staging copy."""
    return psql_failing_on_skills(tmp, real, "pgbin-failing")


def test_restore_failing_on_the_new_host_rolls_back_and_reports(rig, tmp_path):
    old, new = two_hosts(rig, jails=("db",))
    write_inventory(rig, old, new, overrides={
        "db_host": new.address, "zfs_pool": new.pool_name,
        "pg_bin": str(_failing_psql(tmp_path, new.cluster.bindir))})
    before, snaps = whole_state(old), snapshots(old)
    res, report = migrate(old, new)
    assert res.returncode != 0
    assert report["stopped_at"] == "restore"
    assert "No space left on device" in res.stderr and "restore" in res.stderr
    assert report["undone"] == ["started the agent on the old host again"]
    assert report["old_host"]["agent_running"] is True
    assert report["old_host"]["added"][0].endswith((".tar.gz", ".tar.zst"))
    holds = report["new_host"]
    assert holds["archive"] and Path(holds["archive"]).exists()
    assert holds["restored"] is False and holds["agent_running"] is False
    assert_old_intact(old, before, snaps)
    rig.drop(old)
    rig.drop(new)


def test_a_killed_run_continues_inside_the_downtime_window(rig):
    old, new = two_hosts(rig, jails=("db",))
    slow = {"jail_start": "sleep 15 && mkdir -p {home}/.rig-jails && "
                          "touch {home}/.rig-jails/{jail_name}"}
    commands = json.loads((new.home / ".invoke.json").read_text())["clawdie"]["commands"]
    write_inventory(rig, old, new, overrides={"db_host": new.address,
                                              "zfs_pool": new.pool_name,
                                              "commands": {**commands, **slow}})
    journal = journal_path(old, new)
    proc = subprocess.Popen([CLI, "migrate", "--to", new.name, "--yes", "--json"],
                            env=old.proc_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=old.root)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        # past the copy and the final sync (they run side by side): in the slow jail start
        if journal.exists() and {"copy-archive", "final-sync"} <= \
                set(json.loads(journal.read_text())["steps"]):
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)  # the operator's machine dies mid-window
    proc.communicate()
    first = json.loads(journal.read_text())
    archive = first["steps"]["copy-archive"]["result"]["dest"]
    assert not old.agent_running(), "no rollback happened: the agent is still stopped"
    # the killed run could not remove its 0600 temporary configs; the journal lists them
    stale = [Path(p) for p in first["temp_configs"]]
    assert stale and all(p.exists() for p in stale)

    write_inventory(rig, old, new)  # the slow jail start is gone
    res, report = migrate(old, new)
    assert res.returncode == 0, res.stderr + res.stdout
    assert report["resumed"] is True
    assert {"stop-old-agent", "final-backup", "final-sync", "copy-archive"} <= \
        set(report["skipped"])
    assert report["moved"]["archive"]["new"] == archive.split(":", 1)[1]
    assert report["downtime_s"] >= report_gap(first)
    assert not [p for p in stale if p.exists()], "the next run removes them"
    assert not json.loads(journal.read_text()).get("temp_configs")
    assert new.agent_running() and not old.agent_running()
    rig.drop(old)
    rig.drop(new)


def report_gap(journal: dict) -> float:
    """Seconds from the agent stop to the last step the killed run finished."""
    last = max(step["at"] for step in journal["steps"].values())
    return last - journal["window"]["agent_stopped_at"]
