"""Replication of the jail datasets to another host with syncoid: plan first, then per dataset.

The source is this host (the Context `c`); the target is reached over SSH exactly as the
operator's ssh config says (ssh.resolve), by syncoid for the stream and by Fabric for the
few commands run there (parent dataset, jail stop / start, read-only probes).
"""
from __future__ import annotations

import dataclasses
import glob
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from invoke import Context

from .. import runner
from ..hosts import agent, ssh
from . import datasets, mounts, syncoid, commands as zfs
from ..config import inventory
from ..config.settings import Settings
from ..errors import ClawdieError, ConfigError, DatasetMissing, ZfsError
from ..interrupts import shielded
from ..output import Reporter, human_size
from ..steps import wait_all


@dataclass(frozen=True)
class Pair:
    jail: str | None
    source: str
    target: str
    # "missing" (full send), "common" (incremental), "resumable" (an interrupted receive
    # left a resume token there: syncoid continues it), "diverged" (no common snapshot)
    state: str
    common: str | None = None  # newest snapshot both sides hold
    children: tuple[str, ...] = ()  # the source's descendants (a bastille jail's `root`)
    aside: str | None = None  # diverged: the target is renamed to this first, never destroyed
    why: str = ""  # which dataset diverged or holds the token


def aside_name(target: str, suffix: str) -> str:
    """Where a target that shares no snapshot goes: `jails/db` -> `jails/db.SUFFIX`."""
    return zfs.check_dataset(f"{target}.{suffix}")


def default_suffix(now: datetime | None = None) -> str:
    return f"pre-replicate-{(now or datetime.now()):%Y%m%d-%H%M%S}"


# syncoid before 2.3: the wait for a run's control socket, then the spacing without one
SOCKET_WAIT = 3.0
START_GAP = 2.0


@dataclass
class ReplicationPlan:
    to: str
    host: ssh.SshHost
    target_settings: Settings
    pairs: list[Pair]
    options: syncoid.SyncOptions
    syncoid_bin: str
    local_tools: set[str]
    remote_tools: set[str]
    notes: list[str] = field(default_factory=list)
    conn: Any = field(default=None, repr=False)  # the Fabric Connection to the target
    syncoid_version: tuple[int, ...] | None = None  # 2.1 (Debian 12) and 2.3 (FreeBSD) differ

    @property
    def shared_sockets(self) -> bool:
        """Before 2.3, syncoid names its SSH control socket by the second alone
        (/tmp/syncoid-HOST-SECONDS): two runs started within one second share one master
        connection, and the first to end closes it under the other (ssh exit 255). 2.3 adds
        its pid and a random number. Unknown: as careful as the oldest."""
        return (self.syncoid_version or (0,)) < (2, 3)

    @property
    def parents(self) -> list[str]:
        return sorted({p.target.rsplit("/", 1)[0] for p in self.pairs if "/" in p.target})

    def command(self, pair: Pair) -> runner.Shell:
        return syncoid.command(self.syncoid_bin, pair.source, pair.target, self.host, self.options)

    def describe(self) -> list[str]:
        ts = self.target_settings
        h = self.host
        via = f" (ssh config {h.config_file})" if h.config_file else ""
        both = "both ends" if "mbuffer" in self.local_tools & self.remote_tools else "no"
        pv = "yes (counts the bytes sent)" if "pv" in self.local_tools else "no"
        who = f"{h.user}@" if h.user else ""
        version = ".".join(map(str, self.syncoid_version)) if self.syncoid_version else "?"
        lines = [f"target     {self.to} = {who}{h.hostname}:{h.port}{via}",
                 f"syncoid    {self.syncoid_bin} version {version}",
                 f"helpers    compression {self.options.compress}; mbuffer {both}; pv {pv}"]
        for parent in self.parents:
            lines.append(f"on {self.to:<6} {runner.line(zfs.cmd(ts, 'create', '-p', parent))}")
        for p in self.pairs:
            mode = {"missing": "full (first time)",
                    "common": f"incremental from @{p.common}",
                    "resumable": f"resume the interrupted receive ({p.why})",
                    "diverged": f"full, after setting the target aside ({p.why})"}
            kids = f" with {', '.join(p.children)}" if p.children else ""
            lines.append(f"dataset    {p.source}{kids} -> {p.target}: {mode[p.state]}")
            if p.aside:
                rename = runner.line(zfs.cmd(ts, "rename", p.target, p.aside))
                lines.append(f"on {self.to:<6} {rename} "
                             "(kept, with its children and snapshots, until you drop it: "
                             f"zfs destroy -r {p.aside})")
            if p.jail:
                lines.append(f"on {self.to:<6} stop jail {p.jail} while it receives: "
                             f"{ts.command('jail_stop', jail=p.jail)} (started again if it ran)")
            lines.append(f"run        {runner.line(self.command(p))}")
        return lines + [f"note       {n}" for n in self.notes]


def target_settings(s: Settings, cfg: Mapping[str, Any], to: str) -> tuple[Settings, str]:
    """The target's settings (commands, jail names, pool) and its ssh alias.

    From the inventory entry `clawdie.hosts[to]` = {ssh, root, overrides} when there is one;
    otherwise the target is assumed to be laid out like this host."""
    host = inventory.resolve(cfg, to)  # validated: unknown keys and settings are refused
    over = dict(host.overrides)
    changes: dict[str, Any] = {}
    if host.root:
        changes["root"] = Path(host.root)
    if over.get("home"):
        changes["home"] = Path(str(over["home"]))
    for key in ("zfs", "zfs_pool", "zfs_prefix", "jail_name"):
        if over.get(key):
            changes[key] = str(over[key])
    if over.get("commands"):
        changes["commands"] = {**s.commands, **dict(over["commands"])}
    if over.get("jails"):
        changes["jails"] = tuple(over["jails"])
    return dataclasses.replace(s, **changes), host.ssh


def map_dataset(s: Settings, ts: Settings, dataset: str) -> str:
    """The same dataset under the target's pool and prefix."""
    parent = s.jails_parent
    if not dataset.startswith(parent + "/"):
        raise ConfigError(f"{dataset} is not under {parent}, so it has no name on the target",
                          "replicate the configured jail datasets only")
    return zfs.check_dataset(ts.jails_parent + dataset[len(parent):])


def _probe_pair(mine: zfs.Tree, theirs: zfs.Tree, jd: datasets.JailDataset, target: str,
                suffix: str) -> Pair:
    """The target side of one jail dataset and every descendant: what syncoid -r will meet
    (`mine` and `theirs`: this host's and the target's listings of the jails' parent)."""
    children = tuple(zfs.descendants_in(mine.filesystems, jd.dataset)[1:])
    names = [(jd.dataset, target)] + [(child, target + child[len(jd.dataset):])
                                       for child in children]
    common = None
    for index, (src, tgt) in enumerate(names):
        if tgt not in theirs.filesystems:
            if index == 0:
                return Pair(jd.jail, jd.dataset, target, "missing", children=children)
            continue  # a child not there yet: syncoid sends it in full
        if tgt in theirs.tokens:
            return Pair(jd.jail, jd.dataset, target, "resumable", children=children,
                        why=f"{tgt} holds a receive_resume_token")
        held = set(theirs.snapshots.get(tgt, {}))
        shared = next((n for n in mine.newest_first(src) if n in held), None)
        if shared is None:
            return Pair(jd.jail, jd.dataset, target, "diverged", children=children,
                        aside=aside_name(target, suffix),
                        why=f"{tgt} shares no snapshot with {src}")
        if index == 0:
            common = shared
    return Pair(jd.jail, jd.dataset, target, "common", common, children=children)


def make_plan(c: Context, s: Settings, cfg: Mapping[str, Any], to: str,
              names: list[str] | None = None, target_pool: str = "", target_prefix: str = "",
              compress: str = "auto", bwlimit: str = "", replace_existing: bool = False,
              conn: Context | None = None, aside_suffix: str = "") -> ReplicationPlan:
    """Resolve the target, probe it read-only, and decide each dataset's transfer.

    A target dataset that shares no snapshot with this host is set aside (renamed to
    NAME.SUFFIX, children and snapshots with it) when `replace_existing`; never destroyed."""
    suffix = aside_suffix or default_suffix()
    zfs.check_snapname(suffix)
    ssh.check_host(to)
    ts, alias = target_settings(s, cfg, to)
    if target_pool:
        ts = dataclasses.replace(ts, zfs_pool=zfs.check_dataset(target_pool))
    if target_prefix:
        ts = dataclasses.replace(ts, zfs_prefix=zfs.check_dataset(target_prefix))
    chosen = datasets.select(s, names)
    # Each side read once: one `zfs get -r` of the jails' parent (every dataset, snapshot
    # and resume token) instead of several zfs calls per dataset, each an ssh round trip.
    mine = zfs.tree(c, s, s.jails_parent) or zfs.Tree([], {}, {})
    missing = [jd.dataset for jd in chosen if jd.dataset not in mine.filesystems]
    if missing:
        raise DatasetMissing(f"nothing to replicate: {', '.join(missing)} not found here",
                             "check ZFS_POOL / ZFS_PREFIX in .env, clawdie.jails, or --dataset")
    host = ssh.resolve(c, alias, str(cfg.get("ssh_config") or ""))
    conn = conn or ssh.connect(host)
    local = syncoid.found_tools(runner.run(c, syncoid.probe_cmd()).stdout)
    remote = syncoid.found_tools(runner.run(conn, syncoid.probe_cmd(), host=to).stdout)
    theirs = zfs.tree(conn, ts, ts.jails_parent, where=to) or zfs.Tree([], {}, {})
    pairs = [_probe_pair(mine, theirs, jd, map_dataset(s, ts, jd.dataset), suffix)
             for jd in chosen]
    diverged = [p for p in pairs if p.state == "diverged"]
    if diverged and not replace_existing:
        raise ZfsError(
            f"on {to}: {'; '.join(p.why for p in diverged)}",
            "an incremental cannot start there: pass --replace-existing to set "
            f"{'them' if len(diverged) > 1 else 'it'} aside (renamed to NAME.{suffix}, "
            "kept until you drop it) and send in full")
    taken = [p.aside for p in diverged if p.aside and p.aside in theirs.filesystems]
    if taken:
        raise ZfsError(f"on {to}, {', '.join(taken)} already exist",
                       "drop them (zfs destroy -r) once you no longer need them, or run "
                       "again a second later (the name holds the time)")
    chosen_compress = syncoid.choose_compress(local, remote) if compress == "auto" else compress
    notes = []
    if "pv" not in local:
        notes.append("pv is not installed here: bytes sent are syncoid's estimate, if any")
    delegated = bool(cfg.get("zfs_delegation"))
    if delegated:
        notes.append("ZFS delegation (clawdie.zfs_delegation): syncoid runs zfs as the ssh "
                     "user on both ends, no sudo (--no-privilege-elevation)")
    syncoid_bin = str(cfg.get("syncoid") or "syncoid")
    version = syncoid.parse_version(runner.run(c, syncoid.version_cmd(syncoid_bin)).stdout)
    return ReplicationPlan(to=to, host=host, target_settings=ts, pairs=pairs,
                           syncoid_version=version,
                           options=syncoid.SyncOptions(chosen_compress, bwlimit, delegated),
                           syncoid_bin=syncoid_bin, local_tools=local,
                           remote_tools=remote, notes=notes, conn=conn)


def replicate_one(c: Context, conn: Context, plan: ReplicationPlan, pair: Pair) -> dict[str, Any]:
    """One dataset: jail on the target stopped while it receives, syncoid, jail back."""
    ts = plan.target_settings
    stopped = agent.jail_stop(conn, ts, pair.jail) if pair.jail else False
    start = time.monotonic()
    try:
        if pair.aside:
            zfs.rename(conn, ts, pair.target, pair.aside)
        res = runner.run(c, plan.command(pair))
        # before the jail starts again: a receive cut short earlier can leave the target
        # unmounted, and syncoid's next run succeeds without mounting it
        remounted = mounts.ensure_mounted(conn, ts, pair.target, plan.to) \
            if res.exited == 0 else []
        # a receive cut short may leave the target's earlier state unmounted: mount it
        # again before its jail starts, so the jail does not run on an empty folder
        after_failure = _remount(conn, ts, pair.target, plan.to) if res.exited != 0 else ""
    finally:
        duration = round(time.monotonic() - start, 3)
        if stopped and pair.jail:
            agent.jail_start(conn, ts, pair.jail)
    report = syncoid.parse_output(res.stdout)
    if res.exited != 0:
        reason = report.errors[0] if report.errors else runner.tail(res.stdout)
        hint = ("pass --replace-existing to set it aside (renamed, kept) and send in full"
                if report.refused_existing else
                "run the same replicate again: it continues from the newest snapshot both "
                "sides hold, or from where the receive stopped where ZFS keeps resume tokens")
        raise ZfsError(f"replicating {pair.source} to {plan.to}:{pair.target} failed "
                       f"(syncoid exit {res.exited}): {reason}{after_failure}", hint)
    return {"jail": pair.jail, "source": pair.source, "target": pair.target,
            "mode": report.kind if report.transfers else "none",
            "bytes": report.bytes, "bytes_method": report.method,
            "transfers": [dataclasses.asdict(t) for t in report.transfers],
            "children": list(pair.children), "set_aside": pair.aside,
            "duration_s": duration, "jail_stopped": stopped, "warnings": report.warnings,
            "remounted": remounted}


def _remount(conn: Context, ts: Settings, target: str, to: str) -> str:
    """After a failed receive: what of the target's earlier state had to be mounted again
    (or could not be), as a clause for the error; "" when all was mounted."""
    try:
        if not zfs.exists(conn, ts, target):
            return ""
        again = mounts.ensure_mounted(conn, ts, target, to)
    except ClawdieError as exc:  # the link may be down too: the first error stands
        return f"; then: {exc.message}"
    return f"; {', '.join(again)} mounted again (its earlier state)" if again else ""


def run(c: Context, plan: ReplicationPlan, out: Reporter, jobs: int = 1) -> dict[str, Any]:
    """Every pair, `jobs` at once (each syncoid's fixed cost, its snapshots and SSH
    sessions, is most of an increment's time: BENCHMARKS.md, migrate)."""
    conn = plan.conn or ssh.connect(plan.host)
    ts = plan.target_settings
    start = time.monotonic()
    for parent in plan.parents:
        zfs.create_parents(conn, ts, parent)

    together = jobs > 1 and len(plan.pairs) > 1

    def one(pair: Pair) -> dict[str, Any]:
        label = f"syncoid {pair.source} -> {plan.to}:{pair.target}"
        if together:  # one live status line at a time: none while several run
            item = replicate_one(c, conn, plan, pair)
            out.timings[label] = item["duration_s"]
        else:
            with out.step(label):
                item = replicate_one(c, conn, plan, pair)
        size = human_size(item["bytes"]) if item["bytes"] is not None else "size unknown"
        out.err.print(f"{pair.source} -> {plan.to}:{pair.target}: {item['mode']}, {size} "
                      f"in {item['duration_s']:.1f}s", markup=False)
        for name in item["remounted"]:
            out.err.print(f"  {plan.to}:{name} was received but not mounted: mounted it",
                          markup=False)
        return item

    if together:
        prefix = syncoid.control_socket_prefix(plan.host) if plan.shared_sockets else ""
        done = _at_once(plan.pairs, one, jobs, prefix)
    else:
        done = [one(pair) for pair in plan.pairs]
    known = [d["bytes"] for d in done if d["bytes"] is not None]
    return {"to": plan.to, "target": f"{plan.host.user}@{plan.host.hostname}",
            "compression": plan.options.compress,
            "mbuffer": "mbuffer" in plan.local_tools & plan.remote_tools,
            "datasets": done, "bytes": sum(known) if len(known) == len(done) else None,
            "jobs": max(1, min(jobs, len(plan.pairs))),
            "duration_s": round(time.monotonic() - start, 3)}


def _at_once(pairs: list[Pair], one: Callable[[Pair], dict[str, Any]],
             jobs: int, sockets: str) -> list[dict[str, Any]]:
    """`one` for each pair, `jobs` threads at a time, results in plan order. With `sockets`
    (syncoid before 2.3: its control sockets' prefix) a run starts only once the one before
    has named its socket and the clock has passed that second. After a failure no further
    pair starts; those running finish, then the first failure (in plan order) is raised. An
    interrupt (main thread) ends the running syncoids and waits for their threads, which
    start each jail they stopped again, before it goes on."""
    stop = threading.Event()
    starting = threading.Lock()
    # the last start: its time, the sockets there before it, and whether it has ended
    before: list[tuple[float, set[str], threading.Event]] = []

    def guarded(pair: Pair) -> dict[str, Any] | None:
        ended = threading.Event()
        if sockets:
            with starting:
                if before:
                    _apart(sockets, *before[-1], stop)
                before.append((time.monotonic(), set(glob.glob(glob.escape(sockets) + "*")),
                               ended))
        if stop.is_set():
            return None
        try:
            return one(pair)
        except BaseException:
            stop.set()
            raise
        finally:
            ended.set()

    pool = ThreadPoolExecutor(max_workers=jobs)
    futures = [pool.submit(guarded, pair) for pair in pairs]
    try:
        wait_all(futures, stop)
    finally:
        with shielded():
            pool.shutdown(wait=True)
    for f in futures:
        exc = f.exception()
        if exc is not None:
            raise exc
    return [item for f in futures if (item := f.result()) is not None]


def _apart(prefix: str, started: float, known: set[str], ended: threading.Event,
           stop: threading.Event) -> None:
    """Wait until the syncoid started at `started` (monotonic) has made its control socket,
    one not in `known`, then until the clock is past the second in its name. No wait once
    that run has ended (its master is closed); without a socket after SOCKET_WAIT, until
    START_GAP after that start."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)$")
    while not stop.is_set() and not ended.is_set():
        seconds = [int(m.group(1)) for path in glob.glob(glob.escape(prefix) + "*")
                   if path not in known and (m := pattern.match(path))]
        if seconds:
            stop.wait(max(0.0, max(seconds) + 1.05 - time.time()))
            return
        if time.monotonic() - started > SOCKET_WAIT:
            stop.wait(max(0.0, started + START_GAP - time.monotonic()))
            return
        stop.wait(0.05)
