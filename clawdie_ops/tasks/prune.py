"""`inv prune`: flags in, the keep/remove table out; the work is in clawdie_ops.actions.prune."""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import inventory, settings as config
from ..errors import ConfigError, OutputError
from .base import operator_task, settings

if TYPE_CHECKING:
    from rich.console import Console

    from ..actions import prune as action


def _local(s: config.Settings, output: str | None) -> action.LocalStore:
    from .. import locks
    from ..actions import prune as action
    from ..archive.verify import keys_for

    directory = Path(output) if output else s.backup_dir
    # the backup folder's lock, which a backup holds while it writes there
    return action.LocalStore(directory, keys=keys_for(s),
                             lock=lambda: locks.hold(locks.backup_dir(s.state_dir, directory)))


def _store(c, cfg: dict[str, Any], host: str | None, output: str | None,
           accept_new_host_key: bool) -> tuple[Any, dict[str, Any], Any]:
    """(store, the settings that apply there, an open connection to close or None)."""
    if not host:
        return _local(settings(c, require_env=False), output), cfg, None
    h = inventory.resolve(cfg, host)
    host_cfg = inventory.apply(cfg, h.settings_overrides())
    if h.local:
        return _local(config.load({"clawdie": host_cfg}, require_env=False), output), \
            host_cfg, None
    from ..actions import prune as action
    from ..hosts import remote

    directory = output or str(h.overrides.get("backup_dir") or "")
    if not directory:
        raise ConfigError(f"no backup directory for host {h.name}",
                          f"set clawdie.hosts.{h.name}.overrides.backup_dir, or pass --output "
                          "DIR (a path on that host)")
    s = config.load({"clawdie": host_cfg}, require_env=False)
    conn = remote.context_for(c, h, cfg, accept_new_host_key=accept_new_host_key)
    store = action.RemoteStore(conn, directory, h.name,
                               lambda path: s.command("archive_manifest", path=path))
    return store, host_cfg, conn


def print_result(con: Console, result: dict[str, Any]) -> None:
    from rich.table import Table

    from ..output import human_size

    if not con.is_terminal:
        con.width = max(con.width, 200)  # cron logs: one line per archive
    verb = "would remove" if result["dry_run"] else "removed"
    table = Table(box=None, pad_edge=False, title=f"{result['host']}:{result['directory']}",
                  title_justify="left")
    for col in ("archive", "time (from)", "size", "action", "why kept"):
        table.add_column(col, overflow="fold")
    for a in result["archives"]:
        act = "keep" if a["action"] == "keep" else f"[red]{verb}[/]"
        table.add_row(a["name"], f"{a['timestamp']} ({a['time_from']})", human_size(a["size"]),
                      act, ", ".join(a["reasons"]))
    con.print(table)
    for x in result["verified"]:
        mark = "verified" if x["verified"] else "[red]fails verification[/]"
        con.print(f"  {x['name']}: {mark} ({x['detail']})", highlight=False)
    for x in result["left_alone"]:
        con.print(f"  left alone: {x['name']}: {x['why']}", markup=False)
    for name in result["stale_partials"]:
        con.print(f"  stale partial file: {name} "
                  f"({'would sweep' if result['dry_run'] else 'swept'})", markup=False)
    for err in result["errors"]:
        con.print(f"  [red]could not remove[/] {err}")
    gone = [a for a in result["archives"] if a["action"] == "remove"]
    con.print(f"{len(gone)} {verb}, {result['kept']} kept"
              + ("" if result["dry_run"] else f", {human_size(result['freed_bytes'])} freed"),
              highlight=False)


@operator_task(monitor="prune", auto_shortflags=False, help={
    "output": "the backup directory to prune (default: clawdie.backup_dir; with --host, "
              "that host's clawdie.hosts.NAME.overrides.backup_dir)",
    "keep-last": "keep the N newest archives (default: clawdie.retention.last, else 4)",
    "keep-daily": "keep the newest archive of each of the last N days that have one",
    "keep-weekly": "keep the newest archive of each of the last N ISO weeks that have one",
    "keep-monthly": "keep the newest archive of each of the last N months that have one",
    "host": "prune an inventory host's backup directory over SSH (an offsite copy) instead "
            "of this machine's",
    "accept-new-host-key": "with --host: trust that host's key on first contact and record it",
    "dry-run": "list what would go and which rule keeps each archive that stays; remove nothing",
    "json": "print the decisions as JSON (archives with action and reasons, removed, swept)",
})
def prune(c, output=None, keep_last=None, keep_daily=None, keep_weekly=None, keep_monthly=None,
          host=None, accept_new_host_key=False, dry_run=False, json=False):
    """Remove old archives by the retention policy; ages come from each archive's manifest.

    Never removed: the newest archive that verifies, an archive whose manifest cannot be
    read (it is listed instead), a backup or copy still being written, anything not named
    clawdie-backup-DD.mmm.YYYY-HHMM.tar.{gz,zst}. Partial files and spool folders nothing
    has written to for clawdie.retention.stale_partial_hours (24) are swept.
    Without any keep-* flag or setting: the runbook's "keep the last 4"."""
    from ..actions import prune as action
    from ..hosts import remote
    from ..monitoring import count_archives
    from ..output import Reporter

    out = Reporter(as_json=json)
    cfg = config.section(c.config)
    store, host_cfg, conn = _store(c, cfg, host, output, accept_new_host_key)
    try:
        retention = dict(host_cfg.get("retention") or {})
        policy = action.policy_from(retention, last=keep_last, daily=keep_daily,
                                    weekly=keep_weekly, monthly=keep_monthly)
        stale = float(retention.get("stale_partial_hours") or action.STALE_PARTIAL_HOURS)
        started = time.monotonic()
        result = action.run(store, policy, dry_run=dry_run, stale_hours=stale,
                            on_step=out.step)
        result["duration_s"] = round(time.monotonic() - started, 3)
    finally:
        if conn is not None:
            remote.close(conn)
    if isinstance(store, action.LocalStore):
        result["archives_in_dir"] = count_archives(store.path)
    out.result(result, lambda con: print_result(con, result))
    if result["errors"]:
        raise OutputError(f"prune could not remove {len(result['errors'])} file(s) in "
                          f"{result['host']}:{result['directory']}: {result['errors'][0]}",
                          "check the permissions there; everything else was done")
    return result
