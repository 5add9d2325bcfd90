"""sanoid.conf for the jail datasets, with the backup runbook's retention table."""
from __future__ import annotations

from dataclasses import dataclass

from ..config.settings import Settings
from .commands import check_dataset


@dataclass(frozen=True)
class Retention:
    hourly: int
    daily: int
    monthly: int


# The runbook's table (setup/sanoid.ts): the database jail keeps more, the others less.
RETENTION: dict[str, Retention] = {
    "db": Retention(hourly=24, daily=14, monthly=3),
    "jail": Retention(hourly=12, daily=7, monthly=2),
}
TEMPLATE = "clawdie_{cls}"


def class_of(jail: str) -> str:
    return "db" if jail == "db" else "jail"


def datasets(s: Settings) -> dict[str, str]:
    """Dataset -> retention class, for every configured jail (management included)."""
    return {check_dataset(s.dataset(j)): class_of(j) for j in s.jails}


def render(s: Settings) -> str:
    """The whole sanoid.conf: one section per dataset, one template per class.

    Every period is written out (weekly, yearly and frequently as 0) so sanoid's own
    defaults (48 hourly, 90 daily, 6 monthly) never leak into the policy."""
    chosen = datasets(s)
    lines = [
        "# sanoid.conf for the Clawdie jail datasets, written by `clawdie-ops sanoid-config`.",
        "# Retention (backup runbook): db 24 hourly, 14 daily, 3 monthly;",
        "# git, cms, management 12 hourly, 7 daily, 2 monthly.",
        "",
    ]
    for ds, cls in chosen.items():
        lines += [f"[{ds}]", f"\tuse_template = {TEMPLATE.format(cls=cls)}", ""]
    for cls in sorted(set(chosen.values())):
        r = RETENTION[cls]
        lines += [
            f"[template_{TEMPLATE.format(cls=cls)}]",
            "\tfrequently = 0",
            f"\thourly = {r.hourly}",
            f"\tdaily = {r.daily}",
            "\tweekly = 0",
            f"\tmonthly = {r.monthly}",
            "\tyearly = 0",
            "\tautosnap = yes",
            "\tautoprune = yes",
            "",
        ]
    return "\n".join(lines)
