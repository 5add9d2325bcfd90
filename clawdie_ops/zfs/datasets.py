"""Which jail datasets a task acts on: chosen by jail name or dataset, and the jail using one."""
from __future__ import annotations

from dataclasses import dataclass

from ..config.settings import Settings
from ..errors import NotManaged
from .commands import check_dataset


@dataclass(frozen=True)
class JailDataset:
    jail: str | None  # None: not one of the configured jails' datasets (allowed with --force)
    dataset: str


def configured(s: Settings) -> list[JailDataset]:
    return [JailDataset(j, s.dataset(j)) for j in s.jails]


def jail_of(s: Settings, dataset: str) -> str | None:
    """The configured jail whose dataset is `dataset` or one of its ancestors."""
    for jail in s.jails:
        ds = s.dataset(jail)
        if dataset == ds or dataset.startswith(ds + "/"):
            return jail
    return None


def name_to_dataset(s: Settings, name: str) -> str:
    """`db` is short for the db jail's dataset; anything with a / is a dataset name."""
    if "/" not in name and name in s.jails:
        return s.dataset(name)
    return check_dataset(name)


def select(s: Settings, names: list[str] | None, allow_other: bool = False) -> list[JailDataset]:
    """The configured jail datasets, or those named; names outside the set need allow_other."""
    if not names:
        return configured(s)
    chosen: list[JailDataset] = []
    for name in names:
        ds = name_to_dataset(s, name)
        jail = next((j for j in s.jails if s.dataset(j) == ds), None)
        if jail is None and not allow_other:
            raise NotManaged(
                f"{name} is not one of the configured jail datasets "
                f"({', '.join(s.datasets)})",
                "name a jail (db, git, ...) or one of those datasets; see clawdie.jails")
        if all(c.dataset != ds for c in chosen):
            chosen.append(JailDataset(jail, ds))
    return chosen
