"""Restored files get back the mode the manifest recorded at backup (a 0600 messages.db
stays 0600), and, when restore runs as root, the owner of the file they replace, so the
agent can still write what it owned."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

Owner = tuple[int, int]


def recorded_mode(files: Mapping[str, Mapping[str, Any]], name: str, cap: int = 0o777
                  ) -> int | None:
    """The permission bits the manifest holds for member `name` (masked by `cap`)."""
    mode = files.get(name, {}).get("mode")
    return mode & cap if isinstance(mode, int) and not isinstance(mode, bool) else None


def owner_like(target: Path) -> Owner | None:
    """(uid, gid) of `target`, else of its nearest existing folder; None unless root (only
    root can give a file away, and anyone else writes files as themselves anyway)."""
    if os.geteuid() != 0:
        return None
    for p in [target, *target.parents]:
        try:
            st = os.lstat(p)
        except OSError:
            continue
        return st.st_uid, st.st_gid
    return None


def settle(path: Path, mode: int | None, owner: Owner | None) -> None:
    if owner is not None:
        os.chown(path, *owner, follow_symlinks=False)
    if mode is not None:
        os.chmod(path, mode)


def settle_tree(top: Path, prefix: str, files: Mapping[str, Mapping[str, Any]],
                owner: Owner | None) -> None:
    """Every folder and file below `top` (the item `prefix`, e.g. "groups"): the owner, and
    for files the mode recorded for `prefix/rel`."""
    settle(top, None, owner)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames:
            settle(Path(dirpath) / name, None, owner)
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(top).as_posix()
            settle(path, recorded_mode(files, f"{prefix}/{rel}"), owner)
