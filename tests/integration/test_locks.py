"""One run at a time: a second backup, or a restore during a backup, waits or is refused
naming the holder; two backups in one minute get two names; what a killed backup leaves is
reported by doctor and swept by the next backup."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import CLI, cli
from tests.helpers import leftovers, set_config, wait_until
from tests.integration.test_restore import state, work_dirs
from tests.rig.hosts import linux_commands

HOLD = 8  # seconds the slowed backup holds its locks


def slow_snapshot(h, marker: Path) -> None:
    """The backup's snapshot command pauses (and says it started): the backup holds the
    installation's and the backup folder's locks meanwhile."""
    cmds = linux_commands()
    cmds["snapshot"] = f"touch {marker} && sleep {HOLD} && {{zfs}} snapshot -r {{parent}}@{{name}}"
    set_config(h, commands=cmds)


def gone(pid: int) -> bool:
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return True


def start(h, *args: str, env: dict | None = None) -> subprocess.Popen:
    e = h.proc_env()
    e.update(env or {})
    return subprocess.Popen([CLI, *args], env=e, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=h.root)


def test_second_backup_is_refused_naming_the_first_then_waits_and_gets_its_own_name(host):
    marker = host.base / "snapshot-started"
    slow_snapshot(host, marker)
    first = start(host, "backup", "--json")
    wait_until(lambda: marker.exists() or first.poll() is not None, 60, "the first backup")
    files_before = leftovers(host.home / "backups")

    res = cli(host, "backup")
    assert res.returncode == 75, res.stderr
    err = " ".join(res.stderr.split())
    assert "Traceback" not in err
    assert f"is busy: another clawdie-ops run holds it: pid {first.pid} (clawdie-ops backup" in err
    assert "since" in err and "--wait" in err
    assert leftovers(host.home / "backups") == files_before  # the refused run wrote nothing

    # A restore of the same installation during the backup is refused the same way.
    before = state(host)
    res = cli(host, "restore", str(host.home / "backups" / "none.tar.zst"), "--yes")
    assert res.returncode == 75 and f"pid {first.pid}" in res.stderr
    assert state(host) == before and work_dirs(host) == []

    # With --wait it waits for the first and then runs; the two archives have two names.
    started = time.monotonic()
    second = cli(host, "backup", "--json", "--wait", "120")
    waited = time.monotonic() - started
    assert second.returncode == 0, second.stderr
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    a, b = Path(json.loads(out)["archive"]), Path(json.loads(second.stdout)["archive"])
    assert a != b and a.exists() and b.exists()
    assert b.stat().st_mtime >= a.stat().st_mtime and waited > 1
    for archive in (a, b):
        assert cli(host, "inspect", str(archive)).returncode == 0


def test_killed_backup_leftovers_are_reported_then_swept(host, tmp_path):
    """SIGKILL while the archive is being written: a .partial and the spool stay behind,
    no compressor survives; doctor names them; the next backup removes them."""
    slow = tmp_path / "bin"
    slow.mkdir()
    real = subprocess.run(["sh", "-c", "command -v zstd"], capture_output=True, text=True,
                          check=True).stdout.strip()
    pidfile = tmp_path / "zstd.pid"
    # The compressor says who it is, then stays a while before it starts compressing.
    (slow / "zstd").write_text(f"#!/bin/sh\necho $$ > {pidfile}\nsleep 5\n"
                               f"exec {real} \"$@\"\n")
    (slow / "zstd").chmod(0o755)
    out_dir = host.home / "backups"
    proc = start(host, "backup", env={"PATH": f"{slow}:{os.environ['PATH']}"})
    wait_until(lambda: pidfile.exists() or proc.poll() is not None, 120,
               "the archive write to begin")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    left = leftovers(out_dir)
    assert any(n.endswith(".partial") for n in left), left
    assert any(n.startswith(".clawdie-backup-spool-") for n in left), left
    # The compressor dies with the tool (parent-death signal), not 5 s later.
    zpid = int(pidfile.read_text())
    wait_until(lambda: gone(zpid), 3, "the compressor to end with the killed backup")

    res = cli(host, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(res.stdout)["checks"]}
    assert checks["leftovers"]["status"] == "warn"
    assert "partial archive" in checks["leftovers"]["detail"]
    assert "backup spool" in checks["leftovers"]["detail"]

    res = cli(host, "backup", "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert len(report["swept"]) >= 2
    assert leftovers(out_dir) == [Path(report["archive"]).name]
    res = cli(host, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(res.stdout)["checks"]}
    assert checks["leftovers"]["status"] == "ok", checks["leftovers"]
