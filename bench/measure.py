"""Run one command and measure it: wall time, CPU time, and the peak memory of its process tree.

Two memory figures, because they answer different questions:
- `tree_pss`: the largest sum of PSS (proportional set size, /proc/PID/smaps_rollup) over
  every process in the command's tree at one moment, sampled every 20 ms: what the tree
  really holds, each shared page split among its sharers. This is the figure the targets
  use. The PostgreSQL server's backends are not in the tree: they are the db jail's,
  before and after.
- `tree_rss`: the same sum with RSS, an upper bound that counts a shared page once per
  process that maps it.
A child between vfork() and exec() shares its parent's address space; it is counted once
(kcmp(2) tells), not twice.

Not used: `wait4`'s ru_maxrss. A child started with vfork() inherits the high-water mark of
its parent's address space at exec(), so every run would report the benchmark process's
own peak (about 1 GB after generating the data).
"""
from __future__ import annotations

import ctypes
import os
import platform
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")
INTERVAL = 0.02


@dataclass
class Run:
    label: str
    wall_s: float
    cpu_s: float
    tree_pss: int  # bytes
    tree_rss: int  # bytes
    exit: int
    output: str = ""
    at_peak: dict[str, int] | None = None  # program name -> RSS when the tree peaked

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("output")
        return d


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def _pss(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
        for line in fh:
            if line.startswith(b"Pss:"):
                return int(line.split()[1]) * 1024
    return 0


_libc = ctypes.CDLL(None, use_errno=True)
SYS_KCMP = {"x86_64": 312, "aarch64": 272}.get(platform.machine())
KCMP_VM = 1


def same_memory(pid: int, other: int) -> bool:
    """Whether two processes share one address space: a child between vfork() and exec()
    (how Python starts programs) shows its parent's whole PSS; counting both would double
    it. kcmp(2) tells; where it is not available the child is counted (an upper bound)."""
    if SYS_KCMP is None:
        return False
    return _libc.syscall(SYS_KCMP, pid, other, KCMP_VM, 0, 0) == 0


def tree_memory(root: int) -> tuple[int, int, dict[str, int]]:
    """(sum of PSS, sum of RSS) over the tree under `root`, and PSS per program name."""
    kids = _children()
    pss_total, rss_total, todo, parts = 0, 0, [(root, 0)], {}
    while todo:
        pid, parent = todo.pop()
        todo.extend((k, pid) for k in kids.get(pid, ()))
        if parent and same_memory(pid, parent):
            continue
        try:
            with open(f"/proc/{pid}/statm", "rb") as fh:
                rss = int(fh.read().split()[1]) * PAGE
            pss = _pss(pid)
            with open(f"/proc/{pid}/comm") as fh:
                name = fh.read().strip()
        except OSError:
            continue  # ended between the listing and the read
        pss_total += pss
        rss_total += rss
        parts[name] = parts.get(name, 0) + pss
    return pss_total, rss_total, parts


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def measure(label: str, cmd: list[str] | str, *, env: dict[str, str] | None = None,
            cwd: Path | None = None, log: Path | None = None,
            timeout: float | None = None) -> Run:
    """Run `cmd` (a list, or a string for bash) to the end, sampling its tree's memory.

    With `timeout`, a run still going after that many seconds has its whole process group
    killed and reports exit -9 (a hung run is a failure, not a slow sample)."""
    args = ["bash", "-c", cmd] if isinstance(cmd, str) else cmd
    out_path = (log or Path(f"/tmp/clawdie-bench-{os.getpid()}.out"))
    with open(out_path, "w+b") as out:
        started = time.monotonic()
        proc = subprocess.Popen(args, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=timeout is not None)
        killer = None
        if timeout is not None:
            killer = threading.Timer(timeout, _kill_group, (proc.pid,))
            killer.start()
        peak: list = [0, 0, {}]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                pss, rss, parts = tree_memory(proc.pid)
                if pss > peak[0]:
                    peak[0], peak[2] = pss, parts
                peak[1] = max(peak[1], rss)
                done.wait(INTERVAL)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        if killer is not None:
            killer.cancel()
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if log is None:
        out_path.unlink(missing_ok=True)
    return Run(label, round(wall, 3), round(usage.ru_utime + usage.ru_stime, 3), peak[0],
               peak[1], proc.returncode, text, peak[2])
