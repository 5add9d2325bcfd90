"""`inv backup`: flags in, summary out; the work is in clawdie_ops.actions.backup."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

from invoke import Context

from ..actions import backup as action
from ..output import Reporter, human_size
from .base import operator_task, settings


@operator_task(help={
    "root": "Clawdie checkout to back up (default: $CLAWDIE_ROOT, else the current directory)",
    "output": "directory for the archive (default: clawdie.backup_dir, i.e. ~)",
    "skip-skills": "leave out skills_db (large, and regenerable with the setup step)",
    "no-snapshot": "do not take ZFS snapshots of the jail datasets first",
    "compression": "gzip (.tar.gz, the runbook's format) or zstd (.tar.zst, faster)",
    "dry-run": "print the plan (every command, every path) and change nothing",
    "json": "print a JSON summary (path, size, sha256, items, duration) on stdout",
})
def backup(c: Context, root=None, output=None, skip_skills=False, no_snapshot=False,
           compression=None, dry_run=False, json=False):
    """Back up the installation into one archive (mode 0600).

    ZFS snapshots of the jail datasets, messages.db, memory_db and skills_db, .env, groups/
    and the mount allowlist, with a manifest of checksums and row counts."""
    out = Reporter(as_json=json)
    s = settings(c, root)
    opts = action.BackupOptions(output=Path(output) if output else None,
                                skip_skills=skip_skills, snapshot=not no_snapshot,
                                compression=compression, dry_run=dry_run)
    result = action.run(c, s, opts, out)

    def human(con: Console) -> None:
        if result.get("dry_run"):
            con.print("[bold]plan[/] (dry run, nothing changed):")
            for line in result["plan"]:
                con.print(f"  {line}", markup=False)
            return
        con.print(f"backup written: {result['archive']} ({human_size(result['size'])}, "
                  f"sha256 {result['sha256'][:16]}…, {result['duration_s']:.1f}s)", markup=False)

    out.result(result, human)
