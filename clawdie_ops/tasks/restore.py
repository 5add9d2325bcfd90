"""`inv restore`: flags in, plan and summary out; the work is in clawdie_ops.actions.restore."""
from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from invoke import Context

from ..errors import Terminated
from .base import operator_task, seconds
from .doctor import print_checks
from .positional import help_requested

if TYPE_CHECKING:
    from rich.console import Console


@operator_task(iterable=["only"], help={
    "archive": "the clawdie-backup-*.tar.gz / .tar.zst archive to restore",
    "root": "Clawdie checkout to restore into (default: $CLAWDIE_ROOT, else the current "
            "directory)",
    "only": "restore only this item (repeat, or comma-separate): env, messages.db, "
            "memory_db.sql, skills_db.sql, groups/, mount-allowlist.json",
    "dry-run": "verify the archive, print the plan (every command, every path) and change "
               "nothing",
    "yes": "do not ask for confirmation (needed when there is no terminal)",
    "start": "start the agent at the end (default: when it was running, or on a full restore)",
    "no-start": "leave the agent stopped at the end",
    "json": "print a JSON summary (items, connections used, safety copies, doctor) on stdout",
    "allow-unsigned": "accept an archive that is not signed (one made before clawdie-ops "
                      "signed its archives), with a loud warning; every other check still "
                      "applies, and an archive signed by an unknown key is still refused",
    "use-archive-server": "send the database passwords to the server the archive's .env "
                          "names, when neither clawdie.db_host nor this installation's .env "
                          "names one (check the address in --dry-run first)",
    "wait": "when a backup or another restore holds the installation, wait up to this many "
            "seconds for it (default 0: refuse at once, naming it)",
})
def restore(c: Context, archive, root=None, only=None, dry_run=False, yes=False, start=False,
            no_start=False, json=False, allow_unsigned=False, use_archive_server=False, wait=0):
    """Restore an archive in the runbook's order, keeping the current state to roll back to.

    Verifies the archive first (nothing changes if it fails), then: .env, stop the agent,
    messages.db, memory_db and skills_db (one transaction each), groups/, the mount
    allowlist, start the agent, doctor. Any failing step rolls back the steps before it."""
    # Long on purpose: the lock, the plan, the question and the report of one restore, in the
    # order an operator sees them.
    if help_requested("restore", archive):
        return
    from ..actions.restore import run as action
    from ..output import Reporter, confirm

    out = Reporter(as_json=json)
    opts = action.RestoreOptions(only=list(only or []), dry_run=dry_run,
                                 start_agent=True if start else (False if no_start else None),
                                 allow_unsigned=allow_unsigned,
                                 use_archive_server=use_archive_server)
    held = ExitStack()
    if not dry_run:  # one backup or restore of an installation at a time
        held.enter_context(action.installation_lock(c.config, root, seconds(wait)))
    with held:
        plan = action.prepare(c, c.config, Path(archive), root, opts, out)
        if plan.verified.signer is None:
            out.warn(plan.verified.unsigned_warning)
        lines = plan.describe()
        if dry_run:
            data = {"dry_run": True, "archive": str(plan.verified.path), "items": plan.items,
                    "plan": lines, "commands": plan.commands(),
                    "connections": {t.item: t.report() for t in plan.targets}}

            def show_plan(con: Console) -> None:
                con.print("[bold]plan[/] (dry run, nothing changed):")
                for line in lines:
                    con.print(f"  {line}", markup=False)
            out.result(data, show_plan)
            return
        if not json:
            out.err.print("[bold]plan:[/]")
            for line in lines:
                out.err.print(f"  {line}", markup=False)
        try:
            confirm(f"Restore {', '.join(plan.items)} from {plan.verified.path.name} onto "
                    f"{plan.settings.root}?", yes)
        except BaseException:
            action.discard(plan)  # the staged copy goes; nothing else was changed
            raise
        result = action.execute(c, plan, out)
        try:
            out.result(result, lambda con: _print_restored(con, plan, result))
        except (KeyboardInterrupt, Terminated):
            raise action.interrupted_after(plan, "its report was not printed") from None


def _print_restored(con: Console, plan: Any, result: dict[str, Any]) -> None:
    con.print(f"restored {', '.join(result['items'])} from {plan.verified.path.name} "
              f"into {result['root']} ({result['duration_s']:.1f}s)", markup=False)
    for item, conn in result["connections"].items():
        con.print(f"  {item} -> {conn['database']} as {conn['user']} at {conn['address']} "
                  f"(PostgreSQL {conn['version']}, system identifier "
                  f"{conn['system_identifier']})", markup=False)
    con.print(f"  pre-restore state kept in {result['safety']['dir']}"
              + (f" and ZFS snapshot {result['safety']['snapshot']}"
                 if result["safety"]["snapshot"] else ""), markup=False)
    for t in plan.targets:
        if t.aside:
            con.print(f"  {t.howto()}", markup=False)
    for note in result["notes"]:
        con.print(f"  note: {note}", markup=False)
    con.print("doctor:")
    print_checks(con, result["doctor"])
