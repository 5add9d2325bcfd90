"""The faults: what each one does to the rig at its moment, and how the rig is repaired after.

A fault acts on what the scenario of the running command exposes (its PostgreSQL clusters,
its small file systems, its SSH proxies, the target's sshd, the clock file). `fire` returns
what it did, or None when there was nothing to act on (the moment passed): such a case is
counted as missed, never as injected.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tests.helpers import cmdline, descendants

if TYPE_CHECKING:
    from .scenarios import Scenario

FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


@dataclass
class Shot:
    """One armed fault: the case's parameters and what the fault did."""
    kind: str
    step: str  # the step the trigger waits for ("" when by time)
    param: dict = field(default_factory=dict)
    did: str = ""
    undo: list = field(default_factory=list)  # repairs, run after the command ended


def fill(directory: Path) -> Path:
    """Take every free byte of the file system holding `directory` (a small tmpfs)."""
    path = directory / f".fault-filler-{os.getpid()}"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        st = os.statvfs(directory)
        free = st.f_bavail * st.f_frsize
        if free:
            try:
                os.posix_fallocate(fd, 0, free)
            except OSError:
                pass  # a racing writer took some: what is left is still full
    finally:
        os.close(fd)
    return path


def pg_ctl_stop(bindir: Path, datadir: Path, mode: str) -> bool:
    res = subprocess.run(["runuser", "-u", "postgres", "--", str(bindir / "pg_ctl"), "-D",
                          str(datadir), "-m", mode, "-w", "-t", "30", "stop"],
                         capture_output=True, text=True)
    return res.returncode == 0


def fire(shot: Shot, pid: int, sc: Scenario) -> str | None:
    """Inject `shot` now into the run of `pid`; None if there was nothing to hit."""
    k, p = shot.kind, shot.param
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    if k in ("sigkill", "sigterm"):
        os.kill(pid, signal.SIGKILL if k == "sigkill" else signal.SIGTERM)
        return f"{k.upper()} to the tool (pid {pid})"
    if k == "pg-stop":
        target = sc.postgres_for(shot.step, pid)
        if target is None:
            return None
        bindir, datadir, restart = target
        if not pg_ctl_stop(bindir, datadir, p["mode"]):
            return None
        if restart:
            shot.undo.append(restart)
        return f"PostgreSQL {datadir} stopped (-m {p['mode']})"
    if k == "disk-full":
        paths = [fill(d) for d in sc.full_dirs(shot.step)]
        shot.undo.append(lambda: [q.unlink(missing_ok=True) for q in paths])
        return "file system full: " + ", ".join(str(q.parent) for q in paths)
    if k == "ssh-cut":
        proxy = sc.proxy_for(shot.step)
        n = proxy.cut_now()
        return f"SSH link cut ({n} connections dropped)" if n else None
    if k == "zfs-recv-kill":
        hits = [q for q in sc.remote_pids() if _is_receive(cmdline(q), sc.target_pool())]
        for q in hits:
            try:
                os.kill(q, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return f"SIGKILL to zfs receive (pids {hits})" if hits else None
    if k == "sshd-restart":
        sshd = sc.target_sshd()
        listener = sshd.proc.pid
        sessions = descendants(listener) if p["drop_sessions"] else []
        sshd.stop()
        for q in sessions:
            try:
                os.kill(q, signal.SIGKILL)
            except ProcessLookupError:
                pass
        t = threading.Timer(p["down_s"], sshd.start)
        t.start()

        def back() -> None:
            t.join()
            if sshd.proc is None or sshd.proc.poll() is not None:
                sshd.start()
        shot.undo.append(back)
        return (f"sshd restarted ({p['down_s']:.1f}s down, "
                f"{len(sessions)} session processes {'killed' if sessions else 'kept'})")
    if k == "clock-step":
        sc.clock_file.write_text(f"{p['offset']}\n")
        shot.undo.append(lambda: sc.clock_file.write_text("+0\n"))
        return f"clock stepped {p['offset']}"
    raise ValueError(f"unknown fault kind {k}")


def _is_receive(cmd: str, pool: str) -> bool:
    return ("zfs receive" in cmd or "zfs recv" in cmd) and pool in cmd


def repair(shot: Shot) -> None:
    for fn in shot.undo:
        fn()
    shot.undo.clear()


def clock_env(clock_file: Path) -> dict[str, str]:
    """libfaketime reading its offset from `clock_file` on every call: the clock can step."""
    clock_file.write_text("+0\n")
    return {"LD_PRELOAD": str(FAKETIME_LIB), "FAKETIME_TIMESTAMP_FILE": str(clock_file),
            "FAKETIME_NO_CACHE": "1",
            # no shared memory: children run as the postgres user could not open root's
            "FAKETIME_DISABLE_SHM": "1"}


def wait_gone(pids: dict[int, int | None], timeout: float) -> dict[int, str]:
    """Which of `pids` (pid -> start time) still run after `timeout`: their command lines."""
    from tests.helpers import start_time
    deadline = time.monotonic() + timeout
    while True:
        # an empty command line is a zombie: ended, only not reaped yet
        alive = {q: c for q, st in pids.items()
                 if st and start_time(q) == st and (c := cmdline(q))}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)
