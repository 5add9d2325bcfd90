"""`inv doctor`: one line per health check; exit code 0 ok, 1 warnings, 2 failures."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from invoke.exceptions import Exit

from invoke import Context

from ..config import settings as config
from ..errors import ClawdieError
from .base import operator_task, settings

if TYPE_CHECKING:
    from rich.console import Console

UNKNOWN = 3
MARK = {"ok": "[green]ok  [/]", "warn": "[yellow]warn[/]", "fail": "[bold red]FAIL[/]"}


def print_checks(con: Console, checks: list[dict[str, Any]]) -> None:
    width = max((len(ch["name"]) for ch in checks), default=0)
    for ch in checks:
        con.print(f"  {MARK[ch['status']]} {ch['name']:<{width}}  ", end="")
        con.print(ch["detail"], markup=False)
        if ch["fix"] and ch["status"] != "ok":
            con.print(f"       {'':<{width}}  -> {ch['fix']}", markup=False)


@operator_task(help={
    "root": "Clawdie checkout to check (default: $CLAWDIE_ROOT, else the current directory)",
    "json": "print the checks as JSON ({status, checks: [{name, status, detail, fix}]})",
})
def doctor(c: Context, root=None, json=False):
    """Check the installation's health, one line per check (ok / warn / fail).

    Agent alive, databases reachable with the .env credentials, pg_dump present and not
    older than the server, jail datasets present, newest snapshot and backup age against
    clawdie.doctor's thresholds, free space for the next backup.
    Exit code 0 when all is ok, 1 with warnings, 2 with a failure, 3 when doctor itself
    could not run (a bad setting): Nagios' OK / WARNING / CRITICAL / UNKNOWN."""
    from ..actions import doctor as action
    from ..output import Reporter

    out = Reporter(as_json=json)
    try:
        s = settings(c, root, require_env=False)
        checks = action.run_checks(c, s, config.section(c.config)["doctor"])
    except ClawdieError as exc:
        exc.exit_code = UNKNOWN  # not a finding about the installation: Nagios' UNKNOWN
        raise
    data: dict[str, Any] = {"status": action.worst(checks),
                            "checks": [ch.as_dict() for ch in checks]}

    def human(con: Console) -> None:
        print_checks(con, data["checks"])

    out.result(data, human)
    code = action.exit_code(checks)
    if code:
        raise Exit(code=code)
