"""A restore interrupted at its database step (SIGTERM, Ctrl-C, a dropped session) leaves the
installation exactly as it was and says what it rolled back; one killed outright (SIGKILL)
takes its psql with it, and the same restore run again succeeds. Staging is private and
outside the checkout; restored files keep their modes."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from tests import archive_kit as kit
from tests.conftest import CLI
from tests.helpers import wait_until
from tests.integration.test_restore import (backup, databases, rolled_back, state, work_base,
                                            work_dirs)
from tests.helpers import set_config
from tests.rig.postgres import SUPERPASS

SLEEP = 6  # seconds the slowed dump holds its transaction open, mid-replay


def slowed(archive: Path, dest: Path, item: str = "memory_db.sql") -> Path:
    """The archive with a pause at the end of one dump: its psql sits in the middle of its
    single transaction (tables dropped, recreated, filled, not committed) long enough for
    a signal to arrive there."""
    return kit.repack(archive, dest, kit.edit_member(
        item, lambda sql: sql + f"\nSELECT pg_sleep({SLEEP});\n".encode()))


def modes(h) -> dict[str, int]:
    """Permission bits of every file restore may replace."""
    allow = h.home / ".config" / "clawdie-cp" / "mount-allowlist.json"
    files = [h.root / ".env", h.root / "store" / "messages.db", allow,
             *sorted(p for p in (h.root / "groups").rglob("*") if p.is_file())]
    return {str(p): stat.S_IMODE(p.stat().st_mode) for p in files if p.exists()}


def sleeping(h, db: str = "memory_db") -> bool:
    with h.cluster.connect() as conn:
        return bool(conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
            " AND query LIKE 'SELECT pg_sleep%%'", [db]).fetchone()[0])


def start_restore(h, archive: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([CLI, "restore", str(archive), "--yes", "--no-start", *args],
                            env=env or h.proc_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=h.root,
                            start_new_session=True)  # its own group: Ctrl-C reaches it all


def children_of_run(h) -> list[str]:
    """Processes still working on this host's restore staging (psql -f STAGING/...)."""
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True,
                        check=True).stdout.splitlines()
    return [line for line in ps if str(work_base(h)) in line]


def interrupt(proc: subprocess.Popen, how: str) -> None:
    if how == "ctrl-c":  # the terminal sends SIGINT to the whole foreground group
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal({"sigterm": signal.SIGTERM, "sighup": signal.SIGHUP,
                          "sigkill": signal.SIGKILL}[how])


def interrupted_restore(h, archive: Path, how: str, env: dict | None = None
                        ) -> tuple[int, str, int]:
    """Start a restore of a slowed archive, interrupt it once memory_db's replay is under
    way; (exit code, stderr on one line, its pid)."""
    proc = start_restore(h, archive, env=env)
    wait_until(lambda: sleeping(h) or proc.poll() is not None, 120,
               "the memory_db replay to be under way")
    assert proc.poll() is None, proc.communicate()
    interrupt(proc, how)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, " ".join(err.split()), proc.pid


def change_after_backup(h) -> None:
    """The installation moves on after the backup: a restore would overwrite all this."""
    with h.db_connect("memory") as conn:
        conn.execute("INSERT INTO users (handle) VALUES ('after-backup')")
    with h.db_connect("skills") as conn:
        conn.execute("DELETE FROM skill_chunks WHERE id % 2 = 0")
    (h.root / "groups" / "main" / "CLAUDE.md").write_text("changed after the backup\n")


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c", "sighup"])
def test_interrupt_during_the_database_step_rolls_back_everything(host, tmp_path, how):
    set_config(host, pg_data_dir="")  # the dump/aside safety: PostgreSQL in no dataset
    archive = slowed(backup(host), tmp_path / "slow.tar.gz")
    change_after_backup(host)
    before, before_modes = state(host), modes(host)

    code, err, _ = interrupted_restore(host, archive, how)
    assert code == 1, err
    assert "Traceback" not in err
    assert "restore failed at step 'database memory_db.sql, skills_db.sql': interrupted" in err
    # skills_db finished its replay in the other thread: its undo is not lost.
    assert rolled_back(err) == {"memory_db (from its pre-restore dump)",
                                "skills_db (from its pre-restore dump)", "messages.db", ".env"}
    assert "nothing needed rolling back" not in err
    assert state(host) == before and modes(host) == before_modes
    (work,) = work_dirs(host)
    assert sorted(p.name for p in (work_base(host) / work).iterdir()) == ["before"]
    assert children_of_run(host) == [] and not sleeping(host)


def test_interrupt_with_databases_set_aside_renames_them_back(host, tmp_path):
    set_config(host, pg_data_dir="")  # the dump/aside safety: PostgreSQL in no dataset
    set_config(host, db_admin={"user": "postgres", "password": SUPERPASS})
    archive = slowed(backup(host), tmp_path / "slow.tar.gz")
    change_after_backup(host)
    before, oids = state(host), databases(host)

    code, err, _ = interrupted_restore(host, archive, "sigterm")
    assert code == 1 and "interrupted" in err, err
    assert {x.split(" (")[0] for x in rolled_back(err)} == {"memory_db", "skills_db",
                                                            "messages.db", ".env"}
    assert databases(host) == oids  # the very same databases, under their names
    assert state(host) == before
    (work,) = work_dirs(host)
    assert not (work_base(host) / work / "before" / "databases.txt").exists()


def test_restore_killed_outright_then_run_again_succeeds(host, tmp_path):
    """SIGKILL mid-replay: no child outlives the tool, its transaction never commits, and
    the same restore run again succeeds (issue 13's 'row counts differ' on the rerun)."""
    good = backup(host)
    archive = slowed(good, tmp_path / "slow.tar.gz")
    original = state(host)
    change_after_backup(host)
    env_then = (host.root / ".env").read_bytes()

    # Its temporary folder its own: any clawdie-ops run on this machine sweeps the password
    # files that dead processes left in /tmp, another test worker's as well.
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**host.proc_env(), "TMPDIR": str(tmpdir)}
    code, _, pid = interrupted_restore(host, archive, "sigkill", env=env)
    assert code == -signal.SIGKILL
    # The psql replaying the dump dies with the tool (parent-death signal).
    wait_until(lambda: children_of_run(host) == [], 10, "the killed run's psql to end")
    (first,) = work_dirs(host)
    # doctor names the interrupted restore (and where its pre-restore copies are).
    doc = subprocess.run([CLI, "doctor", "--json"], env=env, capture_output=True,
                         text=True, timeout=120, stdin=subprocess.DEVNULL, cwd=host.root)
    left = {c["name"]: c for c in json.loads(doc.stdout)["checks"]}["leftovers"]
    assert left["status"] == "warn" and f"interrupted restore {work_base(host) / first}" in \
        left["detail"] and "restore again" in left["fix"], left

    res = subprocess.run([CLI, "restore", str(archive), "--yes", "--no-start", "--json"],
                         env=env, capture_output=True, text=True, timeout=300,
                         stdin=subprocess.DEVNULL, cwd=host.root)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert state(host) == original
    # The killed run's staging and its psql password files are swept, its pre-restore
    # copies are kept, and the report says so.
    swept = [n for n in report["notes"] if n.startswith("removed what a killed run left")]
    (restore,) = [n for n in swept if "interrupted restore" in n]
    assert first in restore
    # What the killed run replaced waits beside its target (a hidden sibling), and the
    # plan names it; the databases' copy was the db jail's snapshot, so before/ was empty.
    side = host.root / f"..env.clawdie-pre-restore-{first.removeprefix('restore-')}"
    assert side.read_bytes() == env_then
    assert any(f"a killed restore left {side}" in n for n in report["notes"]), report["notes"]
    passfiles = [n for n in swept if "password file" in n]
    assert passfiles and all(f"clawdie-pgpass-{pid}-" in n for n in passfiles)
    assert not list(tmpdir.glob(f"clawdie-pgpass-{pid}-*"))
    assert first not in work_dirs(host)
    assert children_of_run(host) == []


def test_interrupt_after_the_restore_completed_says_the_archive_stands(host, tmp_path):
    """SIGTERM during the closing doctor checks (the campaign's restore-16): the restore is
    complete and stays; the tool says so, not that it rolled anything back."""
    original = state(host)
    archive = backup(host)
    change_after_backup(host)
    mark = tmp_path / "doctor-started"
    cmds = json.loads((host.home / ".invoke.json").read_text())["clawdie"]["commands"]
    # only the doctor asks for a running jail's path during a restore
    cmds["jail_path"] = f"touch {mark} && sleep 8 && {cmds['jail_path']}"
    set_config(host, commands=cmds)
    proc = start_restore(host, archive)
    wait_until(lambda: mark.exists() or proc.poll() is not None, 180, "the doctor's checks")
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    err = " ".join(err.split())
    assert proc.returncode == 130, err
    assert "interrupted after the restore completed" in err and "the doctor's checks did " \
        "not finish" in err and "clawdie-ops doctor" in err, err
    assert "rolled back" not in err and "Traceback" not in err
    assert state(host) == original


def test_restore_keeps_modes_and_stages_outside_the_checkout(host):
    (host.root / "store" / "messages.db").chmod(0o600)
    (host.root / "groups" / "main" / "CLAUDE.md").chmod(0o640)
    (host.root / ".env").chmod(0o600)
    wanted = modes(host)
    archive = backup(host)
    for p in (host.root / "store" / "messages.db", host.root / "groups" / "main" / "CLAUDE.md"):
        p.chmod(0o666)
    res = subprocess.run([CLI, "restore", str(archive), "--yes", "--no-start", "--json"],
                         env=host.proc_env(), capture_output=True, text=True, timeout=300,
                         stdin=subprocess.DEVNULL, cwd=host.root)
    assert res.returncode == 0, res.stderr
    assert modes(host) == wanted  # 0600 messages.db stays 0600, 0640 stays 0640
    kept = Path(json.loads(res.stdout)["safety"]["dir"])
    # Staging and the pre-restore copies live in the private state folder, not in the
    # agent's checkout; every folder on the way is this user's and 0700.
    assert not (host.root / ".clawdie-ops").exists()
    assert kept.is_relative_to(host.state_dir)
    for folder in (host.state_dir, host.state_dir / "installs", work_base(host), kept.parent,
                   kept):
        st = folder.stat()
        assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid(), folder
