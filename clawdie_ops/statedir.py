"""The tool's private state folder (clawdie.state_dir): restore staging, locks, nothing else.

It lives outside the agent-writable Clawdie checkout, belongs to the user running the tool
and is 0700, so no other local user (the agent's included) can read or swap what restore
verified. Each installation gets its own subfolder, named after its root.
"""
from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

from .errors import ConfigError


def ensure_private(path: Path, what: str = "clawdie.state_dir") -> Path:
    """`path` as a folder owned by this user, not a link, mode 0700 (created if missing)."""
    path = Path(os.path.abspath(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot create {path} ({what}): {exc.strerror}",
                          f"create it, or set {what} to a folder this user may write") from None
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path} ({what}) is not a plain folder",
                          f"remove it, or set {what} to another folder")
    if st.st_uid != os.geteuid():
        raise ConfigError(f"{path} ({what}) belongs to uid {st.st_uid}, not to this user "
                          f"(uid {os.geteuid()}): another user could read or swap what is "
                          "staged there", f"set {what} to a folder of this user's own")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def root(state_dir: Path) -> Path:
    return ensure_private(state_dir)


def slug(path: Path) -> str:
    """A file name for a folder: readable tail plus a hash of the whole path."""
    real = os.path.realpath(path)
    tail = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(real).name or "root")[:40]
    return f"{tail}-{hashlib.sha256(real.encode()).hexdigest()[:10]}"


def installation_dir(state_dir: Path, clawdie_root: Path) -> Path:
    """<state_dir>/installs/<slug of the root>: where restore stages and keeps its copies."""
    base = ensure_private(root(state_dir) / "installs")
    return ensure_private(base / slug(clawdie_root))


def locks_dir(state_dir: Path) -> Path:
    return ensure_private(root(state_dir) / "locks")


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True
