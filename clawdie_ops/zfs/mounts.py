"""After a receive: every received file system that should be mounted is, or a clear error.

A receive cut short (a killed `zfs receive`, an sshd restart) can leave the target dataset
unmounted; the next syncoid run then succeeds without mounting it, and the jail would
start on an empty folder. So replicate and migrate check `mounted` of each dataset they
received and mount the ones whose `canmount` and `mountpoint` say they should be.
"""
from __future__ import annotations

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
    parents first; return those mounted. Raises ZfsError naming the dataset when one
    cannot be mounted."""
    mounted = []
    for name in zfs.descendants(c, s, dataset):
        props = state(c, s, name)
        if not should_mount(props):
            continue
        res = runner.run(c, zfs.cmd(s, "mount", name))
        if res.exited != 0 or state(c, s, name).get("mounted") != "yes":
            why = (res.stderr or res.stdout).strip().splitlines()
            raise ZfsError(
                f"on {where}, {name} was received but is not mounted (mountpoint "
                f"{props.get('mountpoint')}), and `zfs mount {name}` failed: "
                f"{why[-1] if why else 'still not mounted'}",
                f"on {where}, check that nothing holds {props.get('mountpoint')} (a shell, a "
                f"running jail, files already in it), run `zfs mount {name}`, then replicate "
                "again before starting the jail there")
        mounted.append(name)
    return mounted
