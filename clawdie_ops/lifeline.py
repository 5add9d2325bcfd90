"""Children die with the tool: psql, pg_dump, zstd never outlive a killed run.

Each child asks the kernel for a signal when its parent dies (Linux prctl
PR_SET_PDEATHSIG, FreeBSD procctl PROC_PDEATHSIG_CTL; elsewhere nothing), so a run killed
with SIGKILL takes its replay, dump or compressor with it. Invoke's local runner is
subclassed to do the same for `c.run`, with each command in a process group of its own:
a run unwinding from a signal (SIGTERM, SIGHUP) ends the whole command, also what it
started (`su` and the initdb under it), and Ctrl-C is passed on to that group. The live
children are kept at hand so that an interrupted restore can end them at once.
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


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # its own group (process_group=0): the command and its own
    except OSError:
        pass


def end(proc: subprocess.Popen, grace: float = 5) -> None:
    """SIGTERM to the command's group, SIGKILL after `grace` seconds."""
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()


def terminate_children() -> int:
    """Send SIGTERM to every command `c.run` has running now; how many there were."""
    with _lock:
        live = [p for p in _children if p.poll() is None]
    for p in live:
        _signal_group(p, signal.SIGTERM)
    return len(live)


class LocalRunner(Local):
    """invoke's Local runner, its child tied to this process and tracked while it runs."""

    def start(self, command: str, shell: str, env: dict[str, Any]) -> None:
        if self.using_pty:
            super().start(command, shell, env)
            return
        self.process = subprocess.Popen(command, shell=True, executable=shell, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        stdin=subprocess.PIPE, preexec_fn=die_with_parent,
                                        process_group=0)
        with _lock:
            _children.add(self.process)

    def send_interrupt(self, interrupt: KeyboardInterrupt) -> None:
        """Ctrl-C reaches the tool's group only: pass it on to the command's."""
        proc = getattr(self, "process", None)
        if self.using_pty or proc is None:
            super().send_interrupt(interrupt)
        else:
            _signal_group(proc, signal.SIGINT)

    def wait(self) -> None:
        try:
            super().wait()
        except KeyboardInterrupt:
            raise  # invoke passes it on (send_interrupt) and keeps waiting
        except BaseException:
            # SIGTERM / SIGHUP unwinding: end the command now, or invoke would wait for
            # its output to close, i.e. for the command to finish on its own.
            proc = getattr(self, "process", None)
            if proc is not None and not self.using_pty and proc.poll() is None:
                end(proc)
            raise

    def stop(self) -> None:
        proc = getattr(self, "process", None)
        if proc is not None and not self.using_pty and proc.poll() is None:
            end(proc)  # unwinding (a signal, an error) with the command still running
        super().stop()
        if proc is not None:
            with _lock:
                _children.discard(proc)
