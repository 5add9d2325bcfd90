"""One run at a time: an flock per installation, per backup folder and per migrated host.

The lock files live in the private state folder. flock ends with its holder, so a killed
run never leaves a lock behind; the file also says who holds it (pid, command, since when)
so that a refused run can name it.
"""
from __future__ import annotations

import fcntl
import json
import os
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from . import statedir
from .errors import LockHeld

POLL = 0.2  # seconds between tries while waiting


@dataclass(frozen=True)
class Holder:
    pid: int
    command: str
    since: float

    def describe(self) -> str:
        when = datetime.fromtimestamp(self.since).strftime("%Y-%m-%d %H:%M:%S")
        age = max(0, int(time.time() - self.since))
        return f"pid {self.pid} ({self.command}), since {when} ({age}s ago)"


def installation(state_dir: Path, clawdie_root: Path) -> tuple[Path, str]:
    return (statedir.locks_dir(state_dir) / f"install-{statedir.slug(clawdie_root)}.lock",
            f"the installation at {clawdie_root}")


def backup_dir(state_dir: Path, directory: Path) -> tuple[Path, str]:
    return (statedir.locks_dir(state_dir) / f"backups-{statedir.slug(directory)}.lock",
            f"the backup folder {directory}")


def host(state_dir: Path, name: str) -> tuple[Path, str]:
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)[:80]
    return statedir.locks_dir(state_dir) / f"host-{safe}.lock", f"host {name} (a migration)"


def read_holder(path: Path) -> Holder | None:
    """Who holds (or last held, when it was killed) the lock at `path`, if it says."""
    try:
        doc = json.loads(path.read_text() or "null")
        return Holder(int(doc["pid"]), str(doc["command"]), float(doc["since"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def holder_if_held(path: Path) -> Holder | None:
    """The holder named in the file when that process still runs (doctor's view; no flock)."""
    h = read_holder(path)
    return h if h is not None and statedir.pid_alive(h.pid) else None


def _command() -> str:
    args = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else ["?"]
    text = shlex.join(args)
    return text if len(text) <= 160 else text[:157] + "..."


@contextmanager
def hold(lock: tuple[Path, str], wait: float = 0) -> Iterator[None]:
    """Hold `lock` (from installation(), backup_dir() or host()) for the block; wait up to
    `wait` seconds for another holder, else raise LockHeld naming it."""
    path, what = lock
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0),
                 0o600)
    try:
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    h = read_holder(path)
                    who = h.describe() if h else "a process that has not said who it is yet"
                    waited = f" after waiting {wait:g}s" if wait > 0 else ""
                    raise LockHeld(
                        f"{what} is busy{waited}: another clawdie-ops run holds it: {who}",
                        "let it finish, or pass --wait SECONDS to wait for it; nothing was "
                        "changed") from None
                time.sleep(POLL)
        me = json.dumps({"pid": os.getpid(), "command": _command(), "since": time.time()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # released cleanly: nobody to name
    finally:
        os.close(fd)  # closing releases the flock
