"""`inv drill`: flags in, report / JSON / JUnit out; the work is in clawdie_ops.actions.drill."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from invoke import Context

from ..config import settings as config
from ..errors import ConfigError, DrillFailed
from .base import operator_task, settings
from .positional import help_requested, positional_unless

if TYPE_CHECKING:
    from rich.console import Console

MARK = {"pass": "[green]pass[/]", "fail": "[bold red]FAIL[/]", "skip": "[dim]skip[/]"}


@operator_task(monitor="drill", positional=["archive"],
               klass=positional_unless("archive", "latest"), auto_shortflags=False, help={
    "archive": "the archive to drill (or use --latest DIR)",
    "latest": "drill the newest clawdie-backup-* archive in this directory",
    "json": "print the report as JSON on stdout",
    "junit": "also write a JUnit XML report to this path (CI systems display it)",
    "pg-host": "PostgreSQL server for the scratch databases (default: clawdie.drill.host; "
               "empty: a throwaway cluster started for the drill)",
    "pg-port": "its port (default: clawdie.drill.port, else 5432)",
    "pg-user": "a role there that may create databases (password: clawdie.drill.password "
               "or PGPASSWORD)",
    "pg-bin": "folder with initdb, pg_ctl and psql for the throwaway cluster "
              "(default: clawdie.drill.pg_bin, else found on this host)",
    "allow-unsigned": "accept an archive that is not signed (made before clawdie-ops signed "
                      "its archives), with a loud warning; every other check still applies",
})
def drill(c: Context, archive=None, latest=None, json=False, junit=None, pg_host=None,
          pg_port=None, pg_user=None, pg_bin=None, allow_unsigned=False):
    """Restore an archive into a scratch sandbox and check it against its manifest.

    Checksums, integrity_check and row counts of messages.db, every dump replayed into a
    scratch database with matching row counts, every file; each step timed. Never touches
    the live installation, and leaves no scratch database or folder behind.
    Exits non-zero naming the first mismatch."""
    if help_requested("drill", archive):
        return
    if bool(archive) == bool(latest):
        raise ConfigError("give either an ARCHIVE or --latest DIR", "see clawdie-ops drill --help")
    from rich.table import Table
    from rich.text import Text

    from ..actions import drill as action
    from ..output import Reporter

    out = Reporter(as_json=json)
    s = settings(c, require_env=False)
    opts = action.DrillOptions(archive=Path(archive) if archive else None,
                               latest=Path(latest) if latest else None,
                               pg_host=pg_host or "", pg_port=str(pg_port or ""),
                               pg_user=pg_user or "", pg_bin=pg_bin or "",
                               allow_unsigned=allow_unsigned)
    try:
        result = action.run(c, s, config.section(c.config)["drill"], opts, out)
    except Exception as exc:
        # CI shows the JUnit report: it says why even when the drill could not start.
        if junit:
            _write_junit(Path(junit), action.failed_before_start(
                str(archive or latest), getattr(exc, "message", f"{type(exc).__name__}: {exc}")))
        raise
    if junit:
        _write_junit(Path(junit), result)
        result["junit"] = str(junit)

    def human(con: Console) -> None:
        if not con.is_terminal:
            con.width = max(con.width, 160)  # CI logs: one line per check
        table = Table(title=f"restore drill of {Path(result['archive']).name}",
                      title_justify="left", box=None, pad_edge=False)
        for col in ("check", "result", "seconds", "detail"):
            table.add_column(col, justify="right" if col == "seconds" else "left",
                             overflow="fold")
        for ch in result["checks"]:
            table.add_row(Text(ch["name"]), MARK[ch["status"]], f"{ch['seconds']:.2f}",
                          Text(ch["detail"]))
        con.print(table)
        verdict = "[green]passed[/]" if result["ok"] else "[bold red]failed[/]"
        con.print(f"drill {verdict} in {result['duration_s']:.1f}s")

    out.result(result, human)
    if not result["ok"]:
        failures = [ch for ch in result["checks"] if ch["status"] == "fail"]
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise DrillFailed(f"drill of {Path(result['archive']).name} failed: "
                          f"{failures[0]['name']}: {failures[0]['detail']}{more}",
                          "do not rely on this archive for a restore; see the report above")
    return result


def _write_junit(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    from ..actions import drill as action

    tmp.write_bytes(action.junit_xml(result))
    os.replace(tmp, path)
