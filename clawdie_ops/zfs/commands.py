"""ZFS: the only place that builds zfs command lines. Names are validated before any shell.

Portable across OpenZFS (FreeBSD) and older ZFS: `zfs list` without -p, sizes via `zfs get -Hp`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from invoke import Context, Result

from .. import runner
from ..config.settings import Settings
from ..errors import DatasetMissing, InvalidName, ZfsError
from ..runner import Shell

# ZFS's own component rules: alphanumerics and - _ . : (and a space, which we refuse).
_COMPONENT = r"[A-Za-z0-9][A-Za-z0-9_.:-]*"
_DATASET = re.compile(rf"^{_COMPONENT}(/{_COMPONENT})*$")
_SNAPNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


def check_dataset(name: str) -> str:
    if not _DATASET.match(name) or len(name) > 255 or ".." in name.split("/"):
        raise InvalidName(f"not a valid ZFS dataset name: {name!r}",
                          "use pool/path/to/dataset with letters, digits and - _ . : only")
    return name


_SNAP_HINT = "check `zfs list` and that this user may snapshot (root or zfs allow)"

# Prefixes sanoid and syncoid own: they prune snapshots named so by their own rules.
MANAGED_PREFIXES = ("autosnap", "syncoid")


def manual_name(tag: str, now: datetime) -> str:
    """`TAG_YYYY-MM-DD_HH:MM:SS`, sanoid's layout, under a tag sanoid will never prune."""
    check_snapname(tag)
    if tag.lower().startswith(MANAGED_PREFIXES):
        raise InvalidName(f"snapshot tag {tag!r} starts like sanoid's or syncoid's own snapshots",
                          "their pruning would delete it: pick another --tag")
    return check_snapname(f"{tag}_{now:%Y-%m-%d_%H:%M:%S}")


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


def cmd(s: Settings, *args: str) -> list[str]:
    return [s.zfs, *args]


def _run(c: Context, s: Settings, *args: str) -> Result:
    return runner.run(c, cmd(s, *args))


def exists(c: Context, s: Settings, name: str) -> bool:
    return _run(c, s, "list", "-H", "-o", "name", name).exited == 0


def require(c: Context, s: Settings, datasets: list[str],
            listed: list[str] | None = None) -> None:
    """Every dataset exists; those in `listed` (one `file_systems` call) need no `zfs list`."""
    known = set(listed or ())
    missing = [d for d in datasets if check_dataset(d) not in known and not exists(c, s, d)]
    if missing:
        raise DatasetMissing(
            f"ZFS dataset{'s' if len(missing) > 1 else ''} not found: {', '.join(missing)}",
            "check ZFS_POOL / ZFS_PREFIX in .env and clawdie.jails, or pass --no-snapshot")


def snapshot_command(s: Settings, parent: str, name: str) -> Shell:
    """The configured `snapshot` template (`zfs snapshot -r parent@name`), names checked."""
    check_dataset(parent)
    check_snapname(name)
    return Shell(s.command("snapshot", parent=parent, name=name))


def run_snapshot(c: Context, cmd: Shell, parent: str, name: str) -> None:
    runner.run(c, cmd, check=True, what=f"snapshot {parent}@{name}", error=ZfsError,
               hint=_SNAP_HINT)


def snapshot_recursive(c: Context, s: Settings, parent: str, name: str) -> None:
    """`zfs snapshot -r parent@name`: atomic across every child, on every ZFS."""
    run_snapshot(c, snapshot_command(s, parent, name), parent, name)


@dataclass(frozen=True)
class Snapshot:
    dataset: str
    name: str
    creation: int  # epoch seconds
    used: int  # bytes only this snapshot holds (freed when it alone is destroyed)
    referenced: int = 0  # bytes of the dataset as it was at the snapshot

    @property
    def full(self) -> str:
        return f"{self.dataset}@{self.name}"


def snapshots(c: Context, s: Settings, dataset: str) -> list[Snapshot]:
    """Snapshots of one dataset, newest first."""
    check_dataset(dataset)
    res = _run(c, s, "list", "-H", "-o", "name", "-t", "snapshot", "-r", "-d", "1", dataset)
    if res.exited != 0:
        if "does not exist" in res.stderr:
            raise DatasetMissing(f"ZFS dataset not found: {dataset}", "check `zfs list`")
        raise runner.failure(res, f"listing snapshots of {dataset}", error=ZfsError)
    names = [n for n in res.stdout.split("\n") if n.startswith(dataset + "@")]
    if not names:
        return []
    values = numbers(c, s, names, ("creation", "used", "referenced"))
    snaps = [Snapshot(dataset, n.split("@", 1)[1], values.get(n, {}).get("creation", 0),
                      values.get(n, {}).get("used", 0), values.get(n, {}).get("referenced", 0))
             for n in names]
    return sorted(snaps, key=lambda x: (x.creation, names.index(x.full)), reverse=True)


def numbers(c: Context, s: Settings, names: list[str],
            props: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Numeric properties of datasets or snapshots via `zfs get -Hp` (old ZFS has no `list -p`)."""
    if not names:
        return {}
    res = _run(c, s, "get", "-Hp", "-o", "name,property,value", ",".join(props), *names)
    values: dict[str, dict[str, int]] = {}
    for line in res.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[2].isdigit():
            values.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    return values


def snapshot_cmd(s: Settings, datasets: list[str], name: str) -> list[str]:
    """`zfs snapshot -r a@n b@n ...`: each dataset with its descendants (a jail's `root`),
    atomic across them all on OpenZFS."""
    check_snapname(name)
    return cmd(s, "snapshot", "-r", *[f"{check_dataset(d)}@{name}" for d in datasets])


def snapshot_each(c: Context, s: Settings, datasets: list[str], name: str) -> bool:
    """Snapshot several datasets (and their descendants) under one name; True when it was
    one atomic command.

    Older ZFS (zfs-fuse) takes one snapshot per command ("too many arguments"): then each
    dataset gets its own `-r` command, in order, and the set is no longer atomic."""
    if len(datasets) > 1:
        res = runner.run(c, snapshot_cmd(s, datasets, name))
        if res.exited == 0:
            return True
        if "too many arguments" not in res.stderr:
            raise runner.failure(res, f"snapshot @{name} of {', '.join(datasets)}", _SNAP_HINT,
                                 error=ZfsError)
    for ds in datasets:
        runner.run(c, snapshot_cmd(s, [ds], name), check=True, what=f"snapshot {ds}@{name}",
                   error=ZfsError, hint=_SNAP_HINT)
    return len(datasets) == 1


def rollback_cmd(s: Settings, full: str) -> list[str]:
    """`zfs rollback -r ds@snap`: -r destroys the newer snapshots of `ds`, which the caller
    listed; it does not touch `ds`'s children (each is rolled back by its own command)."""
    ds, snap = split_snapshot(full)
    return cmd(s, "rollback", "-r", f"{ds}@{snap}")


def rollback(c: Context, s: Settings, full: str) -> None:
    runner.run(c, rollback_cmd(s, full), check=True, what=f"rollback to {full}", error=ZfsError,
               hint="check that nothing holds the dataset busy (a running jail, a shell "
                    "inside its mountpoint) and try again")


def written_since(c: Context, s: Settings, dataset: str, snap: str) -> int | None:
    """Bytes written to `dataset` since `snap` (OpenZFS `written@snap`); None where unknown."""
    check_dataset(dataset)
    check_snapname(snap)
    res = _run(c, s, "get", "-Hp", "-o", "value", f"written@{snap}", dataset)
    value = res.stdout.strip()
    return int(value) if res.exited == 0 and value.isdigit() else None


def create_parents(c: Context, s: Settings, dataset: str) -> None:
    """`zfs create -p dataset`: the dataset and any missing parents (none changed if present)."""
    runner.run(c, cmd(s, "create", "-p", check_dataset(dataset)), check=True,
               what=f"creating {dataset}", error=ZfsError,
               hint="check the pool exists (`zpool list`) and that this user may create "
                    "datasets")


def mountpoint(c: Context, s: Settings, dataset: str) -> str:
    res = _run(c, s, "get", "-H", "-o", "value", "mountpoint", check_dataset(dataset))
    if res.exited != 0:
        raise DatasetMissing(f"ZFS dataset not found: {dataset}", "check `zfs list`")
    return res.stdout.strip()


def descendants(c: Context, s: Settings, dataset: str) -> list[str]:
    """`dataset` and every file system below it (a bastille jail's `root`), parents first."""
    names = file_systems(c, s, dataset)
    if names is None:
        raise DatasetMissing(f"ZFS dataset not found: {dataset}", "check `zfs list`")
    return descendants_in(names, dataset)


def file_systems(c: Context, s: Settings, dataset: str) -> list[str] | None:
    """`dataset` and everything below it, in one `zfs list -r`; None if it does not exist."""
    res = _run(c, s, "list", "-H", "-o", "name", "-r", check_dataset(dataset))
    if res.exited != 0:
        if "does not exist" in res.stderr:
            return None
        raise ZfsError(f"listing {dataset} and its children failed: {res.stderr.strip()}", "")
    return [n.strip() for n in res.stdout.splitlines() if n.strip() and "@" not in n]


@dataclass
class Tree:
    """The file systems under a dataset, each one's snapshots (name -> creation, in the order
    ZFS lists them) and any receive_resume_token: what replication probes, read at once."""
    filesystems: list[str]
    snapshots: dict[str, dict[str, int]]
    tokens: dict[str, str]

    def newest_first(self, fs: str) -> list[str]:
        snaps = self.snapshots.get(fs, {})
        order = list(snaps)
        return sorted(order, key=lambda n: (snaps[n], order.index(n)), reverse=True)

    def newest(self, fs: str) -> int | None:
        """The creation time of `fs`'s newest snapshot; None when it has none."""
        return max(self.snapshots.get(fs, {}).values(), default=None)


TREE_PROPS = ("creation", "receive_resume_token")


def _listing_hint(dataset: str, there: str = "") -> str:
    """What to check when a recursive listing of `dataset` fails (`there`: on another host)."""
    return (f"check that `zfs list -r {dataset}` works {there}as this user (ZFS running, the "
            "pool imported)")


def tree(c: Context, s: Settings, dataset: str, where: str = "") -> Tree | None:
    """`dataset`, every file system below it and all their snapshots, in one `zfs get -r`
    (two where ZFS has no resumable receives, such as zfs-fuse); None if it does not exist.
    `where`: the host `c` runs on, for the error."""
    def get(*props: str) -> Result:
        return _run(c, s, "get", "-rHp", "-o", "name,property,value", ",".join(props),
                    check_dataset(dataset))
    res = get(*TREE_PROPS)
    if res.exited != 0 and "does not exist" not in res.stderr:
        res = get(*TREE_PROPS[:1])  # no receive_resume_token here
    if res.exited != 0:
        if "does not exist" in res.stderr:
            return None
        on = f" on {where}" if where else ""
        raise runner.failure(res, f"listing {dataset} and its snapshots{on}", error=ZfsError,
                             hint=_listing_hint(dataset, "there " if where else ""))
    out = Tree([], {}, {})
    for line in res.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        name, prop, value = (x.strip() for x in parts)
        fs, at, snap = name.partition("@")
        if prop == "creation" and value.isdigit():
            if at:
                out.snapshots.setdefault(fs, {})[snap] = int(value)
            else:
                out.filesystems.append(name)
        elif prop == "receive_resume_token" and not at and value not in ("", "-"):
            out.tokens[name] = value
    return out


def mountpoints(c: Context, s: Settings, dataset: str) -> dict[str, str] | None:
    """`dataset` and every file system below it, with its mountpoint, in one `zfs list -r`
    (parents first); None if it does not exist."""
    res = _run(c, s, "list", "-H", "-o", "name,mountpoint", "-r", check_dataset(dataset))
    if res.exited != 0:
        if "does not exist" in res.stderr:
            return None
        raise ZfsError(f"listing {dataset} and its children failed: {res.stderr.strip()}",
                       _listing_hint(dataset))
    rows = (line.split("\t") for line in res.stdout.splitlines())
    return {r[0].strip(): r[1].strip() for r in rows if len(r) == 2 and "@" not in r[0]}


def descendants_in(names: list[str], dataset: str) -> list[str]:
    """Of a `file_systems` listing: `dataset` and the file systems below it, parents first."""
    return sorted({n for n in names if n == dataset or n.startswith(dataset + "/")},
                  key=lambda n: (n.count("/"), n))


def snapshot_names(c: Context, s: Settings, dataset: str) -> set[str]:
    """The names (after the @) of `dataset`'s own snapshots, without reading their sizes."""
    res = _run(c, s, "list", "-H", "-o", "name", "-t", "snapshot", "-r", "-d", "1",
               check_dataset(dataset))
    if res.exited != 0:
        raise runner.failure(res, f"listing snapshots of {dataset}", error=ZfsError)
    return {n.split("@", 1)[1] for n in res.stdout.split("\n") if n.startswith(dataset + "@")}


def used(c: Context, s: Settings, datasets: list[str]) -> dict[str, int]:
    """`used` of each dataset: its own data, its children's and its snapshots' (what a
    recursive send must find room for; `referenced` leaves the children out)."""
    return {name: v.get("used", 0) for name, v in numbers(c, s, datasets, ("used",)).items()}


def resume_token(c: Context, s: Settings, dataset: str) -> str | None:
    """The `receive_resume_token` an interrupted `zfs receive -s` left, or None (also where
    this ZFS has no resumable receives)."""
    res = _run(c, s, "get", "-H", "-o", "value", "receive_resume_token", check_dataset(dataset))
    value = res.stdout.strip()
    return value if res.exited == 0 and value not in ("", "-") else None


def rename(c: Context, s: Settings, old: str, new: str) -> None:
    """`zfs rename old new`: the dataset, its children and snapshots keep every byte."""
    runner.run(c, cmd(s, "rename", check_dataset(old), check_dataset(new)), check=True,
               what=f"renaming {old} to {new}", error=ZfsError,
               hint="check that nothing holds it busy (a running jail, a shell in its "
                    "mountpoint) and that the new name is free")
