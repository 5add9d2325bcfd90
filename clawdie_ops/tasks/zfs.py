"""`inv snapshot`, `snapshots`, `rollback`, `sanoid-config`, `replicate`: flags in, summary out."""
from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Any
from datetime import datetime
from pathlib import Path

from invoke import Context

from ..config import settings as config
from ..zfs import commands as zfs
from ..errors import ConfigError, DatasetMissing, OutputError
from .. import runner
from .base import jobs as count_jobs, operator_task, settings
from .positional import help_requested

if TYPE_CHECKING:
    from rich.console import Console

ROOT_HELP = "Clawdie checkout whose .env names the pool (default: $CLAWDIE_ROOT, else the cwd)"
DATASET_HELP = "a jail (db, git, cms, management) or dataset name; repeat it (default: all jails)"


def _print_plan(con: Console, lines: list[str], dry_run: bool) -> None:
    con.print(f"[bold]plan[/]{' (dry run, nothing changed)' if dry_run else ''}:")
    for line in lines:
        con.print(f"  {line}", markup=False)


def _table(con: Console, header: list[str], rows: list[list[str]]) -> None:
    """Aligned columns that never truncate a dataset name (scripts read them too)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        con.out("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip(),
                highlight=False)


def _when(epoch: int) -> str:
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


@operator_task(iterable=["dataset"], help={
    "dataset": DATASET_HELP + "; other datasets are allowed here",
    "tag": "first part of the snapshot name, TAG_YYYY-MM-DD_HH:MM:SS (default: clawdie)",
    "root": ROOT_HELP,
    "dry-run": "print the zfs command and change nothing",
    "json": "print the snapshot name and the datasets as JSON",
})
def snapshot(c: Context, dataset=None, tag="clawdie", root=None, dry_run=False, json=False):
    """Snapshot the jail datasets and their descendants under one name (`zfs snapshot -r`).

    All jails: one atomic `zfs snapshot -r` of their parent. --dataset: `zfs snapshot -r`
    of each (atomic across them where ZFS takes several in one command)."""
    from ..output import Reporter
    from ..zfs import datasets

    out = Reporter(as_json=json)
    s = settings(c, root)
    chosen = [jd.dataset for jd in datasets.select(s, dataset, allow_other=True)]
    name = zfs.manual_name(tag, datetime.now())
    everything = not dataset
    missing = [d for d in ([s.jails_parent] if everything else []) + chosen
               if not zfs.exists(c, s, d)]
    if missing:
        raise DatasetMissing(f"ZFS dataset{'s' if len(missing) > 1 else ''} not found: "
                             f"{', '.join(missing)}",
                             "check ZFS_POOL / ZFS_PREFIX in .env, clawdie.jails, or --dataset")
    command = (s.command("snapshot", parent=s.jails_parent, name=name) if everything
               else runner.line(zfs.snapshot_cmd(s, chosen, name)))
    # -r either way: a bastille jail's files are in its child dataset `root`
    tree = [d for ds in chosen for d in zfs.descendants(c, s, ds)]
    result = {"name": name, "snapshots": [f"{d}@{name}" for d in tree],
              "recursive_parent": s.jails_parent if everything else None,
              "command": command, "dry_run": dry_run}
    if not dry_run:
        if everything:
            zfs.snapshot_recursive(c, s, s.jails_parent, name)
            result["atomic"] = True
        else:
            result["atomic"] = zfs.snapshot_each(c, s, chosen, name)

    def human(con: Console) -> None:
        if dry_run:
            _print_plan(con, [f"run        {command}"], True)
            return
        how = "" if result["atomic"] else " (one at a time: this ZFS cannot do it atomically)"
        con.print(f"snapshot @{name} of {', '.join(chosen)} and their descendants{how}",
                  markup=False)

    out.result(result, human)


@operator_task(iterable=["dataset"], help={
    "dataset": DATASET_HELP + "; other datasets are allowed here",
    "root": ROOT_HELP,
    "json": "print the snapshots as JSON (creation as epoch seconds, sizes in bytes)",
})
def snapshots(c: Context, dataset=None, root=None, json=False):
    """List the snapshots of the jail datasets, newest first, with creation time and size.

    `used` is what only that snapshot holds; `refer` what the dataset held at it."""
    from ..output import Reporter, human_size
    from ..zfs import datasets

    out = Reporter(as_json=json)
    s = settings(c, root)
    listing: list[dict[str, Any]] = []
    for jd in datasets.select(s, dataset, allow_other=True):
        snaps = zfs.snapshots(c, s, jd.dataset)
        listing.append({"dataset": jd.dataset, "jail": jd.jail, "snapshots": [
            {"name": x.name, "snapshot": x.full, "creation": x.creation,
             "created": _when(x.creation), "used": x.used, "referenced": x.referenced}
            for x in snaps]})

    def human(con: Console) -> None:
        rows = []
        for entry in listing:
            if not entry["snapshots"]:
                rows.append([entry["dataset"], "(no snapshots)", "", "", ""])
            rows += [[entry["dataset"], "@" + x["name"], x["created"], human_size(x["used"]),
                      human_size(x["referenced"])] for x in entry["snapshots"]]
        _table(con, ["dataset", "snapshot", "created", "used", "refer"], rows)

    out.result({"datasets": listing}, human)


ROLLBACK_HELP = {
    "target": "DATASET@SNAPSHOT to go back to (or JAIL@SNAPSHOT, e.g. db@autosnap_...)",
    "yes": "do not ask for confirmation (required when not on a terminal)",
    "force": "allow a dataset outside the configured jail datasets",
    "root": ROOT_HELP,
    "dry-run": "print what would be destroyed and every command, and change nothing",
    "json": "print the plan / result as JSON",
}


@operator_task(help=dict(ROLLBACK_HELP))
def rollback(c: Context, target, yes=False, force=False, root=None, dry_run=False, json=False):
    """Roll a jail dataset back to a snapshot: destroys every newer snapshot and change.

    Shows exactly what is destroyed, stops the jail using the dataset first (started again
    afterwards if it was running), and asks before doing it."""
    if target in ("-h", "--help"):
        rollback.help = dict(ROLLBACK_HELP)  # invoke used up the texts parsing this call
        help_requested("rollback", target)
        return
    from ..output import Reporter, confirm
    from ..zfs import rollback as rb

    out = Reporter(as_json=json)
    s = settings(c, root)
    plan = rb.make_plan(c, s, target, force=force)
    lines = plan.describe(s)
    if dry_run:
        out.result({"dry_run": True, "plan": lines, **plan.as_dict()},
                   lambda con: _print_plan(con, lines, True))
        return
    _print_plan(out.err, lines, False)
    lost = f"{len(plan.destroys)} newer snapshot{'s' if len(plan.destroys) != 1 else ''}"
    confirm(f"Roll back {plan.dataset} to @{plan.snapshot.name}, destroying {lost} and "
            "every change since?", yes)
    result = rb.run(c, s, plan)

    def human(con: Console) -> None:
        con.print(f"rolled back {plan.dataset} to @{plan.snapshot.name}; destroyed "
                  f"{len(result['destroyed'])} snapshot(s)"
                  f"{f'; jail {plan.jail} restarted' if result['jail_restarted'] else ''}",
                  markup=False)

    out.result(result, human)


@operator_task(help={
    "write": "write the config to this file (or to sanoid.conf in this directory) "
             "instead of printing it",
    "yes": "overwrite an existing, different file without asking",
    "root": ROOT_HELP,
    "dry-run": "with --write: say what would be written where, and write nothing",
    "json": "print the config, the datasets with their retention class, and the path written",
})
def sanoid_config(c: Context, write=None, yes=False, root=None, dry_run=False, json=False):
    """sanoid.conf for the jail datasets with the runbook's retention.

    db: 24 hourly, 14 daily, 3 monthly; git, cms, management: 12, 7, 2. Autosnap and
    autoprune on; sanoid's defaults file stays as the package installed it."""
    from ..output import Reporter, confirm
    from ..zfs import sanoid

    out = Reporter(as_json=json)
    s = settings(c, root)
    text = sanoid.render(s)
    path = None
    if write:
        path = Path(write).expanduser()
        if path.is_dir():
            path = path / "sanoid.conf"
        if not path.parent.is_dir():
            raise OutputError(f"directory does not exist: {path.parent}",
                              "create it (sanoid reads /etc/sanoid/sanoid.conf by default)")
        if not dry_run:
            if path.exists() and path.read_text(errors="replace") != text:
                confirm(f"{path} exists and differs; replace it?", yes)
            _write_atomic(path, text)
    result = {"config": text, "datasets": sanoid.datasets(s),
              "written": str(path) if path and not dry_run else None, "dry_run": dry_run,
              "retention": {k: vars(v) for k, v in sanoid.RETENTION.items()}}

    def human(con: Console) -> None:
        if not write:
            con.out(text, end="", highlight=False)
        elif dry_run:
            _print_plan(con, [f"write      {path} ({len(text)} bytes, mode 0644)"], True)
        else:
            con.print(f"sanoid config written: {path}", markup=False)

    out.result(result, human)


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".sanoid.conf.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc}",
                          "check the directory's permissions") from None


# Too many flags for one letter each (invoke would hand out `--` itself): long flags only.
@operator_task(monitor="replicate", iterable=["dataset"], auto_shortflags=False, help={
    "to": "target host: an inventory name (clawdie.hosts) or an ssh alias / host name",
    "dataset": DATASET_HELP,
    "target-pool": "the target's pool when it differs (default: the inventory's zfs_pool, "
                   "else this host's)",
    "target-prefix": "the target's ZFS_PREFIX when it differs (default: likewise)",
    "compress": "syncoid compression: auto (zstd, else lzop, when both ends have it), "
                "zstd-fast, lzo, none, ...",
    "bwlimit": "limit the stream to this many bytes per second (500k, 20m)",
    "replace-existing": "set aside target datasets that share no snapshot with this host "
                        "(renamed to NAME.SUFFIX with their children, kept until you drop "
                        "them; asks first), then send in full",
    "aside-suffix": "the SUFFIX of datasets set aside (default pre-replicate-YYYYmmdd-HHMMSS)",
    "yes": "do not ask before setting target datasets aside",
    "jobs": "replicate this many jail datasets at once (default 1); each syncoid's fixed "
            "cost, snapshots and SSH sessions, is most of a small increment's time; "
            "each stream gets the whole bandwidth limit",
    "root": ROOT_HELP,
    "dry-run": "resolve and probe the target, print every command, change nothing",
    "json": "print a summary: bytes sent and duration per dataset",
})
def replicate(c: Context, to=None, dataset=None, target_pool=None, target_prefix=None,
              compress="auto", bwlimit=None, replace_existing=False, aside_suffix=None,
              yes=False, jobs=1, root=None, dry_run=False, json=False):
    """Replicate the jail datasets to another host with syncoid over SSH.

    Full the first time, incremental after; the jail using a dataset on the target is
    stopped while it receives. SSH settings come from your ssh config (clawdie.ssh_config)."""
    if not to:
        raise ConfigError("replicate needs a target host", "pass --to HOST (an ssh alias)")
    jobs = count_jobs(jobs)
    from ..output import Reporter, confirm, human_size
    from ..zfs import replication

    out = Reporter(as_json=json)
    s = settings(c, root)
    cfg = config.section(c.config)
    plan = replication.make_plan(c, s, cfg, to, dataset, target_pool or "",
                                 target_prefix or "", compress, bwlimit or "", replace_existing,
                                 aside_suffix=aside_suffix or "")
    try:
        lines = plan.describe()
        if jobs > 1:
            gap = (", each started once the one before has named its SSH control socket and "
                   "the clock has passed that second (syncoid before 2.3 names it by the "
                   "second)" if plan.shared_sockets else "")
            lines.append(f"at once    {min(jobs, len(plan.pairs))} of these datasets{gap}; "
                         "after a failure no further one starts")
        if dry_run:
            out.result({"dry_run": True, "plan": lines},
                       lambda con: _print_plan(con, lines, True))
            return
        if any(p.state == "diverged" for p in plan.pairs):
            _print_plan(out.err, lines, False)
            confirm(f"Set aside (rename) the datasets on {to} that share no snapshot with "
                    "this host, and send these in full?", yes)
        result = replication.run(c, plan, out, jobs)
    finally:
        if plan.conn is not None:
            plan.conn.close()

    def human(con: Console) -> None:
        _table(con, ["dataset", "target", "mode", "sent", "time"], [
            [d["source"], f"{to}:{d['target']}", d["mode"],
             human_size(d["bytes"]) if d["bytes"] is not None else "?",
             f"{d['duration_s']:.1f}s"] for d in result["datasets"]])
        for d in result["datasets"]:
            if d.get("set_aside"):
                con.print(f"kept on {to}: {d['set_aside']} (what {d['target']} held before); "
                          f"drop it once you no longer need it: zfs destroy -r "
                          f"{d['set_aside']}", markup=False)

    out.result(result, human)
    return result
