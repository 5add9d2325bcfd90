"""`inv copy ARCHIVE --to NAME`: an archive to an inventory host's backup_dir, checked there."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import settings as config
from .base import operator_task
from .positional import help_requested

if TYPE_CHECKING:
    from rich.console import Console

COPY_HELP = {
    "to": "the inventory host (clawdie.hosts.NAME) whose overrides.backup_dir receives it",
    "retries": "attempts before giving up on a flaky link (each resumes; default 5)",
    "accept-new-host-key": "trust the host's key on first contact and record it",
}


def print_copy(con: Console, r: dict[str, Any]) -> None:
    from ..output import human_size

    how = ("already there, checksum matches" if r["already_there"] else
           f"sent {human_size(r['bytes_sent'])} in {r['seconds']:.1f}s"
           + (f", resumed from {r['resumed_from']}" if r["resumed_from"] else "")
           + (f", {r['attempts']} attempts" if r["attempts"] > 1 else ""))
    con.print(f"copied to {r['host']}:{r['path']} (sha256 {r['sha256'][:16]}… checked "
              f"there; {how})", markup=False)


@operator_task(positional=["archive"], auto_shortflags=False, help={
    "archive": "the archive to send (clawdie-backup-*.tar.zst / .tar.gz, signed or not)",
    **COPY_HELP,
    "dry-run": "print the plan (source, destination, the checksum command there); send nothing",
    "json": "print the result as JSON (path, size, sha256, attempts, bytes sent, resumed)",
})
def copy(c, archive, to=None, retries=5, accept_new_host_key=False, dry_run=False, json=False):
    """Copy an archive to another host's backup directory, resumable and checksummed.

    SFTP into NAME.partial there (a broken link resumes where it stopped), the host itself
    computes the sha256 (clawdie.commands.sha256), and only a match is renamed into place.
    Prune that directory with `prune --host NAME`."""
    if help_requested("copy", archive):
        return None
    from ..actions import copy as action
    from ..output import Reporter

    out = Reporter(as_json=json)
    cfg = config.section(c.config)
    if dry_run:
        lines = action.describe(Path(archive), action.target(cfg, to or ""))

        def plan(con: Console) -> None:
            con.print("[bold]plan[/] (dry run, nothing sent):")
            for ln in lines:
                con.print(f"  {ln}", markup=False)

        out.result({"dry_run": True, "plan": lines}, plan)
        return None
    with out.step(f"copy {Path(archive).name} to {to}"):
        result = action.run(c, cfg, Path(archive), to or "", retries=int(retries),
                            accept_new_host_key=accept_new_host_key,
                            on_retry=lambda n, why: out.warn(f"copy attempt {n} failed "
                                                             f"({why}); resuming"))
    out.result(result, lambda con: print_copy(con, result))
    return result
