"""Rollback of a jail dataset to a snapshot: what it destroys is decided and shown first."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from invoke import Context

from .. import runner
from ..hosts import agent
from . import datasets, commands as zfs
from ..config.settings import Settings
from ..errors import DatasetMissing, NotManaged
from ..output import human_size


@dataclass
class RollbackPlan:
    dataset: str
    snapshot: zfs.Snapshot
    jail: str | None  # the jail using the dataset, stopped around the rollback
    jail_running: bool
    managed: bool  # one of the configured jail datasets
    destroys: list[zfs.Snapshot]  # the newer snapshots, newest first
    written: int | None  # bytes written since the snapshot (OpenZFS written@); None: unknown
    referenced_now: int
    command: str
    notes: list[str] = field(default_factory=list)

    @property
    def snapshot_bytes(self) -> int:
        """Space only the destroyed snapshots hold (their `used`, summed)."""
        return sum(x.used for x in self.destroys)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "snapshot": self.snapshot.full,
            "snapshot_created": self.snapshot.creation, "jail": self.jail,
            "jail_running": self.jail_running, "managed": self.managed,
            "destroys": [{"snapshot": x.full, "creation": x.creation, "used": x.used}
                         for x in self.destroys],
            "destroyed_snapshot_bytes": self.snapshot_bytes,
            "written_since": self.written,
            "referenced_now": self.referenced_now,
            "referenced_at_snapshot": self.snapshot.referenced,
            "command": self.command,
        }

    def describe(self, s: Settings) -> list[str]:
        when = datetime.fromtimestamp(self.snapshot.creation).strftime("%Y-%m-%d %H:%M:%S")
        lines = [f"rollback   {self.dataset} to @{self.snapshot.name} (taken {when})"]
        if self.destroys:
            lines.append(f"destroys   {len(self.destroys)} newer snapshot"
                         f"{'s' if len(self.destroys) > 1 else ''} "
                         f"({human_size(self.snapshot_bytes)} held only by them):")
            lines += [f"             {x.full}  (used {human_size(x.used)})" for x in self.destroys]
        else:
            lines.append("destroys   no snapshots (none is newer)")
        if self.written is not None:
            lines.append(f"destroys   every change since @{self.snapshot.name}: "
                         f"{human_size(self.written)} written since (ZFS written@)")
        else:
            delta = self.referenced_now - self.snapshot.referenced
            lines.append(f"destroys   every change since @{self.snapshot.name}; this ZFS cannot "
                         f"count bytes written since a snapshot: the dataset references "
                         f"{human_size(self.referenced_now)} now, "
                         f"{human_size(self.snapshot.referenced)} at the snapshot "
                         f"({'+' if delta >= 0 else '-'}{human_size(abs(delta))})")
        if self.jail:
            if self.jail_running:
                stop = s.command("jail_stop", jail=self.jail)
                lines.append(f"jail       stop {self.jail} first: {stop}")
            else:
                lines.append(f"jail       {self.jail} is not running (left stopped)")
        lines.append(f"run        {self.command}")
        if self.jail and self.jail_running:
            lines.append(f"jail       start {self.jail} again: "
                         f"{s.command('jail_start', jail=self.jail)}")
        return lines + [f"note       {n}" for n in self.notes]


def parse_target(s: Settings, target: str) -> tuple[str, str]:
    """`pool/ds@snap`, or `db@snap` for the db jail's dataset."""
    if target.count("@") != 1:
        zfs.split_snapshot(target)  # raises the clear "write it as pool/ds@snap" error
    ds, snap = target.split("@")
    return zfs.split_snapshot(f"{datasets.name_to_dataset(s, ds)}@{snap}")


def make_plan(c: Context, s: Settings, target: str, force: bool = False) -> RollbackPlan:
    """Everything the rollback would do and destroy; changes nothing."""
    ds, snap = parse_target(s, target)
    managed = ds in s.datasets
    notes = []
    if not managed:
        if not force:
            raise NotManaged(f"{ds} is not one of the configured jail datasets "
                             f"({', '.join(s.datasets)})",
                             "check the name; pass --force to roll back another dataset anyway")
        notes.append(f"{ds} is outside the configured jail datasets (--force)")
    if not zfs.exists(c, s, ds):
        raise DatasetMissing(f"ZFS dataset not found: {ds}", "check the name with `zfs list`")
    snaps = zfs.snapshots(c, s, ds)
    index = next((i for i, x in enumerate(snaps) if x.name == snap), None)
    if index is None:
        raise DatasetMissing(f"snapshot not found: {ds}@{snap}",
                             f"list the snapshots with `clawdie-ops snapshots --dataset {ds}`")
    jail = datasets.jail_of(s, ds)
    now = zfs.numbers(c, s, [ds], ("referenced",)).get(ds, {}).get("referenced", 0)
    return RollbackPlan(
        dataset=ds, snapshot=snaps[index], jail=jail,
        jail_running=agent.jail_running(c, s, jail) if jail else False, managed=managed,
        destroys=snaps[:index], written=zfs.written_since(c, s, ds, snap), referenced_now=now,
        command=runner.line(zfs.rollback_cmd(s, f"{ds}@{snap}")), notes=notes)


def run(c: Context, s: Settings, plan: RollbackPlan) -> dict[str, Any]:
    """Stop the jail, roll back, start the jail again if it was running (even on failure)."""
    stopped = agent.jail_stop(c, s, plan.jail) if plan.jail else False
    try:
        zfs.rollback(c, s, plan.snapshot.full)
    finally:
        if stopped and plan.jail:
            agent.jail_start(c, s, plan.jail)
    left = {x.name for x in zfs.snapshots(c, s, plan.dataset)}
    result = plan.as_dict()
    result.update(jail_stopped=stopped, jail_restarted=stopped,
                  destroyed=[x.full for x in plan.destroys if x.name not in left])
    return result
