"""Plain files of the installation: .env, groups/, the mount allowlist."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator

from ..config.settings import Settings


@dataclass(frozen=True)
class FileItem:
    name: str  # the path inside the archive folder: "env", "groups/main/CLAUDE.md"
    source: Path


def walk(top: Path, prefix: str) -> Iterator[FileItem]:
    """Regular files and folders under `top`, sorted; symlinks are not followed."""
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        rel = Path(dirpath).relative_to(top)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                yield FileItem(f"{prefix}/{(rel / name).as_posix()}".replace("/./", "/"), path)


def items(s: Settings) -> tuple[list[FileItem], list[str]]:
    """The config files to archive, and a note for each expected one that is absent."""
    found = [FileItem("env", s.env_file)]
    missing = []
    if s.groups_dir.is_dir():
        found.extend(walk(s.groups_dir, "groups"))
    else:
        missing.append(f"groups/ not found at {s.groups_dir}")
    if s.allowlist.is_file():
        found.append(FileItem("mount-allowlist.json", s.allowlist))
    else:
        missing.append(f"mount allowlist not found at {s.allowlist}")
    return found, missing
