"""`inv schedule show|install|remove`: the cron jobs of clawdie.schedule, in each user's crontab."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..actions import schedule as sched
from ..config import settings as config
from ..errors import ConfigError
from .base import operator_task, settings
from .positional import help_requested

if TYPE_CHECKING:
    from rich.console import Console

ACTIONS = ("show", "install", "remove")


@operator_task(positional=["action"], auto_shortflags=False, help={
    "action": "show (the jobs and what is installed), install (write or update them), "
              "remove (take them out again)",
    "root": "Clawdie checkout the jobs back up (default: $CLAWDIE_ROOT, else the current "
            "directory)",
    "dry-run": "print each crontab's changes (+/- lines) and write nothing",
    "json": "print the jobs and changes per user as JSON",
})
def schedule(c, action, root=None, dry_run=False, json=False):
    """Install the runbook's cron jobs, each in the crontab of the user it runs as.

    backup (weekly, then prune), drill --latest (nightly), sanoid --cron (root). Lines end
    in `# clawdie-ops:JOB`; only those are ever replaced or removed, so installing twice
    leaves one set and the crontab's other lines stay. Jobs, times and users live in
    clawdie.schedule (README: Operating it). Editing another user's crontab needs root."""
    if help_requested("schedule", action):
        return
    if action not in ACTIONS:
        raise ConfigError(f"unknown schedule action {action!r}",
                          f"use one of: {', '.join(ACTIONS)}")
    from ..output import Reporter

    out = Reporter(as_json=json)
    s = settings(c, root, require_env=False)
    cfg = config.section(c.config)
    result = sched.apply(c, s, cfg, action, dry_run=dry_run or action == "show")

    def human(con: Console) -> None:
        for tab in result["crontabs"]:
            con.print(f"[bold]crontab of {tab['user']}[/]", highlight=False)
            if action == "show":
                for line in tab["lines"]:
                    name = line.rsplit(sched.MARK, 1)[1]
                    state = ("installed" if name in tab["installed"] else
                             "paused" if name in tab["paused"] else "not installed")
                    con.print(f"  [{state}] {line}", markup=False)
                continue
            for line in tab["diff"] or ["  (no change)"]:
                con.print(f"  {line}", markup=False)
        if dry_run:
            con.print("dry run: nothing written")

    out.result(result, human)
    return result

