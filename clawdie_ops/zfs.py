"""ZFS: the only place that builds zfs command lines. Names are validated before any shell.

Portable across OpenZFS (FreeBSD) and older ZFS: `zfs list` without -p, sizes via `zfs get -Hp`.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from .config import Settings
from .errors import DatasetMissing, InvalidName, ZfsError

# ZFS's own component rules: alphanumerics and - _ . : (and a space, which we refuse).
_COMPONENT = r"[A-Za-z0-9][A-Za-z0-9_.:-]*"
_DATASET = re.compile(rf"^{_COMPONENT}(/{_COMPONENT})*$")
_SNAPNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


def check_dataset(name: str) -> str:
    if not _DATASET.match(name) or len(name) > 255 or ".." in name.split("/"):
        raise InvalidName(f"not a valid ZFS dataset name: {name!r}",
                          "use pool/path/to/dataset with letters, digits and - _ . : only")
    return name


def check_snapname(name: str) -> str:
    if not _SNAPNAME.match(name) or len(name) > 200:
        raise InvalidName(f"not a valid snapshot name: {name!r}",
                          "use letters, digits and - _ . : only")
    return name


def split_snapshot(full: str) -> tuple[str, str]:
    if full.count("@") != 1:
        raise InvalidName(f"not a snapshot (dataset@name): {full!r}", "write it as pool/ds@snap")
    ds, snap = full.split("@")
    return check_dataset(ds), check_snapname(snap)


def cmd(s: Settings, *args: str) -> str:
    return shlex.join([s.zfs, *args])


def _run(c, s: Settings, *args: str, hide: bool = True):
    return c.run(cmd(s, *args), hide=hide, warn=True, in_stream=False)


def exists(c, s: Settings, name: str) -> bool:
    return _run(c, s, "list", "-H", "-o", "name", name).exited == 0


def require(c, s: Settings, datasets: list[str]) -> None:
    missing = [d for d in datasets if not exists(c, s, check_dataset(d))]
    if missing:
        raise DatasetMissing(
            f"ZFS dataset{'s' if len(missing) > 1 else ''} not found: {', '.join(missing)}",
            "check ZFS_POOL / ZFS_PREFIX in .env and clawdie.jails, or pass --no-snapshot")


def snapshot_recursive(c, s: Settings, parent: str, name: str) -> None:
    """`zfs snapshot -r parent@name`: atomic across every child, on every ZFS."""
    check_dataset(parent)
    check_snapname(name)
    res = c.run(s.command("snapshot", parent=parent, name=name), hide=True, warn=True,
                in_stream=False)
    if res.exited != 0:
        raise ZfsError(f"snapshot {parent}@{name} failed: {res.stderr.strip()}",
                       "check `zfs list` and that this user may snapshot (root or zfs allow)")


@dataclass(frozen=True)
class Snapshot:
    dataset: str
    name: str
    creation: int  # epoch seconds
    used: int  # bytes

    @property
    def full(self) -> str:
        return f"{self.dataset}@{self.name}"


def snapshots(c, s: Settings, dataset: str) -> list[Snapshot]:
    """Snapshots of one dataset, newest first."""
    check_dataset(dataset)
    res = _run(c, s, "list", "-H", "-o", "name", "-t", "snapshot", "-r", "-d", "1", dataset)
    if res.exited != 0:
        if "does not exist" in res.stderr:
            raise DatasetMissing(f"ZFS dataset not found: {dataset}", "check `zfs list`")
        raise ZfsError(f"listing snapshots of {dataset} failed: {res.stderr.strip()}", "")
    names = [n for n in res.stdout.split("\n") if n.startswith(dataset + "@")]
    if not names:
        return []
    props = _run(c, s, "get", "-Hp", "-o", "name,property,value", "creation,used", *names)
    values: dict[str, dict[str, int]] = {}
    for line in props.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[2].isdigit():
            values.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    snaps = [Snapshot(dataset, n.split("@", 1)[1], values.get(n, {}).get("creation", 0),
                      values.get(n, {}).get("used", 0)) for n in names]
    return sorted(snaps, key=lambda x: (x.creation, names.index(x.full)), reverse=True)
