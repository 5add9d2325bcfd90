"""`inv backup`: flags in, summary out; the work is in clawdie_ops.actions.backup."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from invoke import Context

from ..config import settings as config
from ..errors import ClawdieError, HostError
from .base import operator_task, seconds, settings
from .copy import COPY_HELP, print_copy

if TYPE_CHECKING:
    from rich.console import Console


@operator_task(monitor="backup", help={
    "root": "Clawdie checkout to back up (default: $CLAWDIE_ROOT, else the current directory)",
    "output": "directory for the archive (default: clawdie.backup_dir, i.e. ~)",
    "skip-skills": "leave out skills_db (large, and regenerable with the setup step)",
    "databases-only": "only memory_db, skills_db and .env (migrate's window uses it: "
                      "messages.db and the files move by what changed)",
    "no-databases": "leave out memory_db and skills_db, and touch no PostgreSQL (migrate's "
                    "final archive when the databases travel in the db jail's dataset)",
    "no-snapshot": "do not take ZFS snapshots of the jail datasets first",
    "compression": "gzip (.tar.gz, the runbook's format) or zstd (.tar.zst, faster)",
    "copy-to": "then send the archive to this inventory host's backup_dir (offsite copy: "
               "resumable, sha256 checked there; see `copy`)",
    "retries": COPY_HELP["retries"],
    "accept-new-host-key": "with --copy-to: " + COPY_HELP["accept-new-host-key"],
    "dry-run": "print the plan (every command, every path) and change nothing",
    "json": "print a JSON summary (path, size, sha256, items, duration) on stdout",
    "wait": "when another backup or a restore holds the installation or the backup folder, "
            "wait up to this many seconds for it (default 0: refuse at once, naming it)",
})
def backup(c: Context, root=None, output=None, skip_skills=False, databases_only=False,
           no_databases=False,
           no_snapshot=False,
           compression=None, copy_to=None, retries=5, accept_new_host_key=False,
           dry_run=False, json=False, wait=0):
    """Back up the installation into one archive (mode 0600).

    ZFS snapshots of the jail datasets, messages.db, memory_db and skills_db, .env, groups/
    and the mount allowlist, with a manifest of checksums and row counts."""
    from ..actions import backup as action
    from ..archive.catalog import count_archives
    from ..output import Reporter, human_size

    if copy_to:  # Fabric and paramiko only for an offsite copy
        from ..actions import copy as copy_action

    out = Reporter(as_json=json)
    s = settings(c, root)
    opts = action.BackupOptions(output=Path(output) if output else None,
                                skip_skills=skip_skills, snapshot=not no_snapshot,
                                databases_only=bool(databases_only),
                                databases=not no_databases,
                                compression=compression, dry_run=dry_run,
                                wait=seconds(wait))
    cfg = config.section(c.config)
    target = copy_action.target(cfg, copy_to) if copy_to else None  # before anything is written
    result = action.run(c, s, opts, out)
    if target is not None and result.get("dry_run"):
        result["plan"] += copy_action.describe(Path(result["archive"]), target)

    def human(con: Console) -> None:
        if result.get("dry_run"):
            con.print("[bold]plan[/] (dry run, nothing changed):")
            for line in result["plan"]:
                con.print(f"  {line}", markup=False)
            return
        con.print(f"backup written: {result['archive']} ({human_size(result['size'])}, "
                  f"sha256 {result['sha256'][:16]}…, {result['duration_s']:.1f}s)", markup=False)
        if result.get("copy"):
            print_copy(con, result["copy"])

    if result.get("dry_run"):
        out.result(result, human)
        return result
    result["archives_in_dir"] = count_archives(Path(result["archive"]).parent)
    if copy_to:
        try:
            with out.step(f"copy to {copy_to}"):
                result["copy"] = copy_action.run(
                    c, cfg, Path(result["archive"]), copy_to, sha256=result["sha256"],
                    size=result["size"], retries=int(retries),
                    accept_new_host_key=accept_new_host_key,
                    on_retry=lambda n, why: out.warn(f"copy attempt {n} failed ({why}); "
                                                     "resuming"))
        except ClawdieError as exc:
            result["copy_error"] = exc.message
            out.result(result, human)  # the archive here is complete: say so first
            raise HostError(f"backup written to {result['archive']}, but the copy to "
                            f"{copy_to} failed: {exc.message}",
                            f"{exc.hint + '; then ' if exc.hint else ''}run clawdie-ops copy "
                            f"{result['archive']} --to {copy_to} (it resumes)") from None
    out.result(result, human)
    return result
