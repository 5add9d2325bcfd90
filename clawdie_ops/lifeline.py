"""Children die with the tool: psql, pg_dump, zstd never outlive a killed run.

Each child asks the kernel for a signal when its parent dies (Linux prctl
PR_SET_PDEATHSIG, FreeBSD procctl PROC_PDEATHSIG_CTL; elsewhere nothing), so a run killed
with SIGKILL takes its replay, dump or compressor with it. Invoke's local runner is
subclassed to do the same for `c.run`, and keeps the live children at hand so that an
interrupted restore can end them at once instead of waiting for them.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
from typing import Any

from invoke.runners import Local

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_P_PID = 0  # FreeBSD sys/procctl.h: idtype P_PID
_PROC_PDEATHSIG_CTL = 11

_libc: Any = None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
except OSError:  # pragma: no cover - no C library to ask
    _libc = None

_children: set[subprocess.Popen] = set()
_lock = threading.Lock()


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """In a freshly forked child: be sent `sig` when the parent dies. Best effort."""
    parent = os.getppid()
    try:
        if sys.platform.startswith("linux") and _libc is not None:
            ulong = ctypes.c_ulong
            _libc.prctl(_PR_SET_PDEATHSIG, ulong(sig), ulong(0), ulong(0), ulong(0))
        elif sys.platform.startswith("freebsd") and _libc is not None:
            # int procctl(idtype_t, id_t (64 bits), int, void *); id 0: this process
            _libc.procctl.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int,
                                      ctypes.c_void_p]
            value = ctypes.c_int(sig)
            _libc.procctl(_P_PID, 0, _PROC_PDEATHSIG_CTL, ctypes.byref(value))
    except Exception:  # noqa: BLE001 -- never keep a child from starting
        return
    if os.getppid() != parent:  # the parent died before we asked
        os._exit(1)


def popen(args: Any, **kw: Any) -> subprocess.Popen:
    """subprocess.Popen whose child dies with this process."""
    return subprocess.Popen(args, preexec_fn=die_with_parent, **kw)


def terminate_children() -> int:
    """Send SIGTERM to every command `c.run` has running now; how many there were."""
    with _lock:
        live = [p for p in _children if p.poll() is None]
    for p in live:
        try:
            p.terminate()
        except OSError:
            pass
    return len(live)


class LocalRunner(Local):
    """invoke's Local runner, its child tied to this process and tracked while it runs."""

    def start(self, command: str, shell: str, env: dict[str, Any]) -> None:
        if self.using_pty:
            super().start(command, shell, env)
            return
        self.process = subprocess.Popen(command, shell=True, executable=shell, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        stdin=subprocess.PIPE, preexec_fn=die_with_parent)
        with _lock:
            _children.add(self.process)

    def stop(self) -> None:
        super().stop()
        proc = getattr(self, "process", None)
        if proc is not None:
            with _lock:
                _children.discard(proc)
