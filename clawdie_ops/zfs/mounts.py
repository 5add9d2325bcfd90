"""After a receive: every received file system that should be mounted is, or a clear error.

A receive cut short (a killed `zfs receive`, an sshd restart) can leave the target dataset
unmounted; the next syncoid run then succeeds without mounting it, and the jail would
start on an empty folder. So replicate and migrate check `mounted` of each dataset they
received and mount the ones whose `canmount` and `mountpoint` say they should be.
"""
from __future__ import annotations

import time

from invoke import Context

from .. import runner
from ..config.settings import Settings
from ..errors import ZfsError
from . import commands as zfs

PROPS = ("mounted", "canmount", "mountpoint")


def state(c: Context, s: Settings, dataset: str) -> dict[str, str]:
    """`mounted`, `canmount` and `mountpoint` of one dataset ({} when it cannot be read)."""
    res = runner.run(c, zfs.cmd(s, "get", "-H", "-o", "property,value", ",".join(PROPS),
                                zfs.check_dataset(dataset)))
    if res.exited != 0:
        return {}
    out = {}
    for line in res.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[0] in PROPS:
            out[parts[0]] = parts[1].strip()
    return out


def should_mount(props: dict[str, str]) -> bool:
    """Unmounted although ZFS would mount it at boot: canmount=on and a real mountpoint
    (noauto, off, none and legacy are the operator's choice, left alone)."""
    return (props.get("mounted") == "no" and props.get("canmount", "on") == "on"
            and props.get("mountpoint", "none") not in ("none", "legacy", "-", ""))


def ensure_mounted(c: Context, s: Settings, dataset: str, where: str) -> list[str]:
    """Mount `dataset` and every file system below it that should be mounted and is not,
    parents first; return those mounted. A child left mounted inside an unmounted parent's
    folder would make that folder non-empty and the parent's mount fail, so such children
    are unmounted first (deepest first) and mounted again after their parent. Raises
    ZfsError naming the dataset when one cannot be mounted or unmounted."""
    names = zfs.descendants(c, s, dataset)
    props = {n: _readable_state(c, s, n, where) for n in names}
    need = [n for n in names if should_mount(props[n])]
    if not need:
        return []
    inside = [n for n in names if props[n].get("mounted") == "yes"
              and any(n.startswith(p + "/") for p in need)]
    for name in reversed(inside):
        res = runner.run(c, zfs.cmd(s, "unmount", name))
        if res.exited != 0:
            raise _failed(where, name, props[name], "unmount", res,
                          f"is mounted inside {_parent_in(name, need)}, which is not")
        # its empty mountpoint folder would still keep the parent's folder non-empty
        # (ZFS on Linux refuses that mount; rmdir removes nothing that holds a file)
        runner.run(c, ["rmdir", props[name].get("mountpoint", "")])
    mounted = []
    for name in names:
        if name not in need and name not in inside:
            continue
        res = runner.run(c, zfs.cmd(s, "mount", name))
        if res.exited != 0 or state(c, s, name).get("mounted") != "yes":
            raise _failed(where, name, props[name], "mount", res, "is not mounted")
        if name in need:
            mounted.append(name)
    return mounted


def _readable_state(c: Context, s: Settings, name: str, where: str) -> dict[str, str]:
    """state(), asked once more after a second when ZFS does not answer (a dataset just
    received may be busy): a mount that cannot be checked is an error, never "fine"."""
    props = state(c, s, name)
    if not props:
        time.sleep(1)
        props = state(c, s, name)
    if not props:
        raise ZfsError(f"on {where}, could not read whether {name} is mounted "
                       f"(zfs get {','.join(PROPS)} failed twice)",
                       f"on {where}, run `zfs get mounted {name}` and `zfs mount {name}` "
                       "if it is not, then replicate again before starting the jail there")
    return props


def _parent_in(name: str, need: list[str]) -> str:
    return next(p for p in need if name.startswith(p + "/"))


def _failed(where: str, name: str, props: dict[str, str], verb: str, res, state_: str
            ) -> ZfsError:
    why = (res.stderr or res.stdout).strip().splitlines()
    point = props.get("mountpoint")
    return ZfsError(
        f"on {where}, {name} was received but {state_} (mountpoint {point}), and "
        f"`zfs {verb} {name}` failed: {why[-1] if why else 'still not mounted'}",
        f"on {where}, check that nothing holds {point} (a shell, a running jail, files "
        f"already in it), run `zfs {verb} {name}`, then replicate again before starting "
        "the jail there")
