"""The files a restore replaces, kept beside their targets until it succeeds.

Each replaced file (or folder) is renamed to a hidden sibling in its own folder,
`.NAME.clawdie-pre-restore-STAMP`: same file system, so setting it aside and putting it back
are renames, which a full disk cannot stop, wherever clawdie.state_dir is. Once the restore
succeeded the siblings move into the run's `before/` folder (a copy when that is on another
file system); one that cannot move stays where it is, and the restore says so.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

TAG = "clawdie-pre-restore"


def sibling(target: Path, stamp: str) -> Path:
    """The hidden name beside `target` that holds it while the restore runs."""
    return target.with_name(f".{target.name}.{TAG}-{stamp}")


def original(side: Path) -> Path:
    """The target a sibling stands for (`store/.messages.db.TAG-STAMP` -> messages.db)."""
    return side.with_name(side.name[1:].split(f".{TAG}-")[0])


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@dataclass
class Kept:
    """The siblings of one restore, each with where it goes in `before/` afterwards."""

    stamp: str
    moves: list[tuple[Path, Path]] = field(default_factory=list)  # (sibling, destination)

    def set_aside(self, target: Path, dest: Path) -> Path | None:
        """Rename `target` (if it exists) to its sibling; None when there was nothing."""
        if not (target.exists() or target.is_symlink()):
            return None
        side = sibling(target, self.stamp)
        os.rename(target, side)
        self.moves.append((side, dest))
        return side

    def put_back(self, target: Path, side: Path | None) -> None:
        """Undo: what the restore put at `target` goes, the sibling is renamed back."""
        _remove(target)
        if side is not None:
            os.rename(side, target)
            self.moves = [m for m in self.moves if m[0] != side]

    def settle(self) -> list[str]:
        """After success: each sibling into `before/`; notes naming those left in place."""
        notes = []
        for side, dest in self.moves:
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(side), str(dest))
            except OSError as exc:
                if dest.exists() and side.exists():  # a partial copy: the sibling is whole
                    _remove(dest)
                notes.append(f"the file replaced at {side.parent}/ is kept as {side} (could "
                             f"not move it to {dest}: {exc.strerror or exc}); remove it once "
                             "satisfied")
        self.moves = []
        return notes


def found(folders: list[Path]) -> list[Path]:
    """Siblings a killed restore left beside its targets (for the next plan's notes)."""
    out = []
    for folder in folders:
        try:
            out += sorted(p for p in folder.iterdir() if f".{TAG}-" in p.name)
        except OSError:
            continue
    return out
