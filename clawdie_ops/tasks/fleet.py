"""`inv fleet TASK --hosts a,b,c`: a table with one line per host; the work is in actions/fleet."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from invoke.exceptions import Exit

from ..actions import fleet as action
from ..config import settings as config
from .base import operator_task
from .positional import help_requested

if TYPE_CHECKING:
    from rich.console import Console

MARK = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "failed": "[bold red]FAILED[/]"}


def print_runs(con: Console, task: str, runs: list[dict[str, Any]]) -> None:
    from rich.table import Table

    if not con.is_terminal:
        con.width = max(con.width, 200)  # cron logs: one line per host
    table = Table(box=None, pad_edge=False, title=f"fleet {task}", title_justify="left")
    for col in ("host", "result", "seconds", "detail"):
        table.add_column(col, justify="right" if col == "seconds" else "left", overflow="fold")
    for r in runs:
        detail = r["summary"] or r["error"] + (f" -> {r['hint']}" if r["hint"] else "")
        table.add_row(r["host"], MARK[r["status"]], f"{r['seconds']:.1f}", detail)
    con.print(table)


@operator_task(positional=["task"], auto_shortflags=False, help={
    "task": "what each host runs: " + ", ".join(action.TASKS),
    "hosts": "comma-separated inventory hosts (clawdie.hosts) or ssh aliases",
    "group": "instead of --hosts: the hosts of clawdie.groups.NAME",
    "args": "extra flags for the task on every host, quoted as one (e.g. '--no-snapshot'); "
            "drill defaults to --latest with each host's overrides.backup_dir",
    "workers": f"hosts worked on at the same time (default {action.WORKERS})",
    "accept-new-host-key": "trust a host's key on first contact and record it",
    "dry-run": "pass --dry-run to backup or prune on every host: each prints its plan, "
               "nothing changes (drill and doctor change nothing anyway)",
    "json": "print one object per host (status, exit code, summary, error, the task's JSON)",
})
def fleet(c, task, hosts=None, group=None, args=None, workers=action.WORKERS,
          accept_new_host_key=False, dry_run=False, json=False):
    """Run backup, drill, doctor or prune on many hosts at once, one line per host.

    Each host runs its own clawdie-ops over SSH (Fabric), with its inventory overrides; a
    host that fails or cannot be reached gets its line and the others go on. Exit code 0
    when every host is ok, 1 when some only warn (doctor), 2 when any failed.
    --args='...' passes flags on (the = keeps invoke from reading them as fleet's own)."""
    if help_requested("fleet", task):
        return None
    from ..output import Reporter

    out = Reporter(as_json=json)
    cfg = config.section(c.config)
    targets = action.hosts_for(cfg, hosts, group)
    extra = action.parse_args(args)
    if dry_run and task in ("backup", "prune"):
        extra.append("--dry-run")
    if task not in action.TASKS:
        action.task_args(task, targets[0], extra)  # raises the error that names the tasks
    with out.step(f"{task} on {len(targets)} host(s)"):
        runs = [r.as_dict() for r in action.run(c, cfg, task, targets, extra, int(workers),
                                                accept_new_host_key)]
    failed = [r["host"] for r in runs if r["status"] == "failed"]
    data = {"task": task, "hosts": runs, "failed": failed,
            "ok": [r["host"] for r in runs if r["status"] == "ok"],
            "warn": [r["host"] for r in runs if r["status"] == "warn"]}
    out.result(data, lambda con: print_runs(con, task, runs))
    code = 2 if failed else 1 if data["warn"] else 0
    if code:
        raise Exit(code=code)
    return data
