"""The migration pair: downtime of `clawdie-ops migrate` against a stop-first migration.

Both move the same installation from an old host to a fresh new host over SSH (the rig's
two-host setup, as in tests/integration/test_migrate.py), with the same share of the data
changed since the last replication:
- A, stop-first: the data changes, the agent is stopped before anything moves, then the
  same migration runs, its replication inside the downtime (downtime: from that stop to
  the end, less the cut-over steps after the doctor);
- B, `clawdie-ops migrate`: pre-sync while the agent runs, the data changes right after it
  (bench/syncoid_hook.py, as the old host's syncoid), then the window; downtime as the
  tool reports it (agent stop to a healthy doctor on the new host).
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from tests.conftest import context_for
from tests.migrate_helpers import NEW_CRONTAB, OLD_CRONTAB, write_inventory
from tests.rig.hosts import JAILS
from tests.rig.postgres import SUPERPASS

from clawdie_ops.hosts import agent
from clawdie_ops.config import settings as config

from . import data
from .measure import Run, measure
from .pairs import CLI, interleave, pair

REPO = Path(__file__).resolve().parent.parent


def _agent(h, start: bool) -> None:
    c = context_for(h)
    s = config.load(c.config, root=h.root)
    (agent.start if start else agent.stop)(c, s)


def _new_host(rig):
    new = rig.new_host("new", ssh=True, populated=False, datasets=False, with_roles=True)
    new.root.mkdir(parents=True, exist_ok=True)  # runbook step 1: the checkout exists
    (new.home / "backups").mkdir(exist_ok=True)
    (new.home / "crontab").write_text(NEW_CRONTAB)
    return new


def migrate_pair(rig, args, work: Path, progress) -> dict:
    scale = args.scale * args.migrate_scale
    old = rig.host("old", rows=200, ssh=True)
    data.populate(old, scale, args.seed)
    data.fill_datasets(old, scale, args.seed)
    (old.home / "backups").mkdir(exist_ok=True)
    sizes = data.state_bytes(old)
    progress(f"  old host: {sum(sizes.values()) / 2**20:.0f} MiB of state, "
             f"{data.dataset_bytes(old) / 2**20:.0f} MiB in the jail datasets")
    windows: dict[str, dict] = {}  # seconds per step of the last run of each side
    rounds = [0]

    hook = Path(__file__).with_name("syncoid_hook.py")
    settings = json.loads((old.home / ".invoke.json").read_text())
    settings["clawdie"]["syncoid"] = str(hook)  # write_inventory keeps it
    (old.home / ".invoke.json").write_text(json.dumps(settings, indent=2))
    real_syncoid = shutil.which("syncoid") or "/usr/sbin/syncoid"

    def prepare(stop_first: bool):
        rounds[0] += 1
        if stop_first:  # no pre-sync to come: the data changed before the migration
            data.mutate(old, args.changed, args.seed + rounds[0])
        (old.home / "crontab").write_text(OLD_CRONTAB)
        for f in (old.home / "backups").iterdir():
            f.unlink()
        if not old.agent_running():
            _agent(old, start=True)
        new = _new_host(rig)
        write_inventory(rig, old, new, overrides={
            "db_host": new.address, "zfs_pool": new.pool_name,
            "db_admin": {"user": "postgres", "password": SUPERPASS}})
        return new

    def run(label: str, new, stop_first: bool) -> Run:
        env = {**old.proc_env(), "BENCH_REAL_SYNCOID": real_syncoid}
        if not stop_first:  # the change lands between the pre-sync and the cut-over
            state = work / f"mutate-{rounds[0]}.json"
            state.write_text(json.dumps({
                "calls": 0, "after": len(JAILS), "python": sys.executable, "repo": str(REPO),
                "name": old.name, "address": old.address, "base": str(old.base),
                "datadir": str(old.cluster.datadir),
                "pool": old.pool.name, "share": args.changed, "seed": args.seed + rounds[0]}))
            env["BENCH_MUTATE"] = str(state)
        started = time.monotonic()
        if stop_first:
            _agent(old, start=False)
        stopped = time.monotonic() - started
        r = measure(label, [CLI, "migrate", "--to", new.name, "--yes", "--json"],
                    env=env, cwd=old.root, timeout=args.migrate_timeout)
        if not stop_first and not json.loads(state.read_text()).get("done"):
            raise RuntimeError("the change after the pre-sync was not applied (the syncoid "
                               "hook did not run as the old host's clawdie.syncoid)")
        rig.drop(new)
        if r.exit != 0:
            raise RuntimeError(f"migrate exited {r.exit}:\n{r.output[-3000:]}")
        report = json.loads(r.output[r.output.index("{"):])
        if stop_first:
            # Down from our stop to the end of the migration, less the cut-over steps after
            # the healthy doctor (the tool's own figure stops there too).
            tail = sum(st.get("seconds") or 0 for st in report.get("steps", [])
                       if st["phase"] == "cutover")
            down = stopped + r.wall_s - tail
        else:
            down = float(report["downtime_s"])
        windows[label] = {st["id"]: st.get("seconds") for st in report.get("steps", [])}
        r.wall_s = round(down, 3)  # the figure compared is the downtime
        return r

    failures: list[str] = []

    def attempt(label: str, stop_first: bool) -> Run:
        """One migration; a failed one is noted and tried again on a fresh new host (the
        tool's own advice), so one flaky syncoid receive on zfs-fuse does not end the run."""
        for _ in range(3):
            try:
                return run(label, prepare(stop_first), stop_first)
            except RuntimeError as exc:
                failures.append(f"{label}: {str(exc).strip().splitlines()[-1][:300]}")
                progress(f"  {label}: failed, trying again on a fresh host ({failures[-1]})")
        raise RuntimeError(f"{label}: three migrations in a row failed: {failures}")

    got = interleave(args.migrate_runs, {
        "stop-first": lambda i: attempt("stop-first", True),
        "migrate": lambda i: attempt("migrate", False)}, progress)
    res = pair("migrate", "stop-first migration (downtime)", "clawdie-ops migrate (downtime)",
               got["stop-first"], got["migrate"])
    res["changed"] = args.changed
    res["scale"] = scale
    for side in ("a", "b"):
        res[side]["median"]["downtime_s"] = res[side]["median"]["wall_s"]
    res["steps"] = windows
    res["failed_attempts"] = failures
    res["dataset_bytes"] = data.dataset_bytes(old)
    res["downtime_share"] = round(res["b"]["median"]["wall_s"] / res["a"]["median"]["wall_s"], 3)
    rig.drop(old)
    return res
