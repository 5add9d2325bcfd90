"""The migration pair: downtime of `clawdie-ops migrate` against a stop-first migration.

Both move the same installation from an old host to a fresh new host over SSH (the rig's
two-host setup, as in tests/integration/test_migrate.py), with the same share of the data
changed since the last replication:
- A, stop-first: the agent is stopped before anything moves, then the same migration runs,
  its replication now inside the downtime (downtime: from that stop to the end);
- B, `clawdie-ops migrate`: pre-sync while the agent runs, then the window; downtime as
  the tool reports it (agent stop to a healthy doctor on the new host).
"""
from __future__ import annotations

import json
import time

from tests.conftest import context_for
from tests.migrate_helpers import NEW_CRONTAB, OLD_CRONTAB, write_inventory
from tests.rig.postgres import SUPERPASS

from clawdie_ops import agent, config

from . import data
from .measure import Run, measure
from .pairs import CLI, interleave, pair


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


def migrate_pair(rig, args, progress) -> dict:
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

    def prepare():
        rounds[0] += 1
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
        started = time.monotonic()
        if stop_first:
            _agent(old, start=False)
        stopped = time.monotonic() - started
        r = measure(label, [CLI, "migrate", "--to", new.name, "--yes", "--json"],
                    env=old.proc_env(), cwd=old.root, timeout=args.migrate_timeout)
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
                return run(label, prepare(), stop_first)
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
