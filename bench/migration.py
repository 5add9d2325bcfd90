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
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import context_for
from tests.migrate_helpers import NEW_CRONTAB, OLD_CRONTAB, write_inventory
from tests.rig.hosts import JAILS, PREFIX
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


def _new_host(rig, jails: bool = True):
    """The new host as the runbook's step 1 leaves it: bastille's jails created, empty, its
    own PostgreSQL running in the db jail (so a same-major migration can move PostgreSQL
    with its dataset, as on a Clawdie host; the tests' new_jails). `jails=False`: no jail
    datasets at all (the physical floor's syncoid creates them)."""
    new = rig.new_host("new", ssh=True, populated=False, datasets=jails, with_roles=True)
    new.root.mkdir(parents=True, exist_ok=True)  # runbook step 1: the checkout exists
    (new.home / "backups").mkdir(exist_ok=True)
    (new.home / "crontab").write_text(NEW_CRONTAB)
    return new


def _db_jail_up(h) -> None:
    """The old host's db jail (and the PostgreSQL in it) started, as `bastille start db`."""
    from tests.rig.hosts import PG_JAIL, RIG_BIN
    from tests.rig.services import ZFS
    subprocess.run([str(RIG_BIN / "rig-jail"), "start", PG_JAIL, str(h.home),
                    f"{h.dataset(PG_JAIL)}/root", ZFS], check=True, capture_output=True)


def migrate_pair(rig, args, work: Path, progress, pg_old: int | None = None,
                 sides: tuple[str, ...] = ("stop-first", "migrate")) -> dict:
    """Stop-first against migrate (`sides`), on an old host running PostgreSQL `pg_old`
    (default: the rig's) moving to fresh new hosts with the rig's default major."""
    scale = args.migrate_scale
    kw = {"pg": pg_old} if pg_old else {}
    old = rig.host(f"old{pg_old or ''}", rows=200, ssh=True, **kw)
    data.populate(old, scale, args.seed)
    data.fill_datasets(old, scale, args.seed)
    (old.home / "backups").mkdir(exist_ok=True)
    sizes = data.state_bytes(old)
    progress(f"  old host: {sum(sizes.values()) / 2**20:.0f} MiB of state, "
             f"{data.dataset_bytes(old) / 2**20:.0f} MiB in the jail datasets")
    windows: dict[str, list] = {"stop-first": [], "migrate": []}  # (downtime, steps) per run
    rounds = [0]

    hook = Path(__file__).with_name("syncoid_hook.py")
    settings = json.loads((old.home / ".invoke.json").read_text())
    settings["clawdie"]["syncoid"] = str(hook)  # write_inventory keeps it
    (old.home / ".invoke.json").write_text(json.dumps(settings, indent=2))
    real_syncoid = shutil.which("syncoid") or "/usr/sbin/syncoid"

    def prepare(stop_first: bool):
        rounds[0] += 1
        _db_jail_up(old)  # a migration that moved PostgreSQL with its dataset stopped it
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
        rig.drop(new)
        if r.exit != 0:
            raise RuntimeError(f"migrate exited {r.exit}:\n{r.output[-3000:]}")
        if not stop_first and not json.loads(state.read_text()).get("done"):
            raise RuntimeError("the change after the pre-sync was not applied (the syncoid "
                               "hook did not run as the old host's clawdie.syncoid)")
        report = json.loads(r.output[r.output.index("{"):])
        if stop_first:
            # Down from our stop to the end of the migration, less the cut-over steps after
            # the healthy doctor (the tool's own figure stops there too).
            tail = sum(st.get("seconds") or 0 for st in report.get("steps", [])
                       if st["phase"] == "cutover")
            down = stopped + r.wall_s - tail
        else:
            down = float(report["downtime_s"])
        windows[label].append((down, step_seconds(report)))
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

    every = {"stop-first": lambda i: attempt("stop-first", True),
             "migrate": lambda i: attempt("migrate", False)}
    got = interleave(args.migrate_runs, {k: every[k] for k in sides}, progress)
    res = pair("migrate", "stop-first migration (downtime)", "clawdie-ops migrate (downtime)",
               got.get("stop-first") or got["migrate"], got["migrate"])
    res["changed"] = args.changed
    res["scale"] = scale
    for side in ("a", "b"):
        res[side]["median"]["downtime_s"] = res[side]["median"]["wall_s"]
    res["steps"] = {label: median_run(runs) for label, runs in windows.items()}
    res["paths"] = {label: runs[-1][1].get("_path", "") for label, runs in windows.items() if runs}
    res["failed_attempts"] = failures
    res["dataset_bytes"] = data.dataset_bytes(old)
    res["downtime_share"] = round(res["b"]["median"]["wall_s"] / res["a"]["median"]["wall_s"], 3)
    res["pg_major"] = old.cluster.major
    if getattr(args, "floor", True):
        res["floor"] = physical_floor(rig, old, args, progress)
        res["floor_share"] = round(res["b"]["median"]["wall_s"] / res["floor"]["median_s"], 2)
    res["_old"] = old  # kept for the upgrade pair; run.py drops it
    return res


def step_seconds(report: dict) -> dict:
    """Each step's duration, in the order the report lists them (window steps phase
    "downtime"); `_path`: how PostgreSQL moved, when the report says."""
    out: dict = {st["id"]: st.get("seconds") for st in report.get("steps", [])
                 if st.get("phase") in ("downtime", "presync")}
    out["_phases"] = {st["id"]: st.get("phase") for st in report.get("steps", [])}
    pg = report.get("postgres")
    path = pg.get("path") if isinstance(pg, dict) else None
    out["_path"] = f"PostgreSQL by {path}" if path else ""
    return out


def median_run(runs: list[tuple[float, dict]]) -> dict:
    """The steps of the run whose downtime is the median (the lower middle of an even count)."""
    if not runs:
        return {}
    ordered = sorted(runs, key=lambda r: r[0])
    down, steps = ordered[(len(ordered) - 1) // 2]
    return {**steps, "_downtime_s": round(down, 3)}


# -- the physical floor of the window -----------------------------------------------------
def floor_sum(parts: dict[str, float]) -> float:
    return round(sum(parts.values()), 3)


def physical_floor(rig, old, args, progress) -> dict:
    """What the window cannot go below on this rig: stop the agent (and, where PostgreSQL's
    data directory is in the db jail's dataset, the server), send the increment of every
    jail dataset with syncoid (the product's own command line), start them again, doctor.

    On a fresh new host after a full pre-sync, with args.changed of the data changed before
    each run (the agent at work), args.migrate_runs times. The start is on the old host:
    the same commands the new host runs, on the same machine."""
    from invoke import Context

    from clawdie_ops.hosts import ssh
    from clawdie_ops.zfs import syncoid
    from tests.rig.hosts import RIG_BIN
    from tests.rig.services import ZFS as ZFS_BIN, sh

    _db_jail_up(old)  # the last migration moved PostgreSQL with its dataset
    new = _new_host(rig, jails=False)
    env = {**old.proc_env(), "PATH": f"{RIG_BIN}:{old.proc_env()['PATH']}"}
    host = ssh.resolve(Context(), new.alias, str(rig.ssh_config))
    opts = syncoid.SyncOptions("zstd-fast" if shutil.which("zstd") else "none")
    real = shutil.which("syncoid") or "/usr/sbin/syncoid"
    sh(ZFS_BIN, "create", "-p", f"{new.pool_name}/{PREFIX}/jails")
    sends = [str(syncoid.command(real, old.dataset(j), new.dataset(j), host, opts))
             for j in JAILS]
    in_dataset = pg_in_dataset(old)

    def send() -> None:
        for line in sends:
            res = subprocess.run(["sh", "-c", line], env=env, capture_output=True, text=True)
            if res.returncode:
                raise RuntimeError(f"floor: syncoid failed: {res.stdout[-800:]}")

    if not old.agent_running():
        _agent(old, start=True)
    send()  # the pre-sync: full streams, not measured
    runs = []
    try:
        for i in range(args.migrate_runs):
            data.mutate(old, args.changed, args.seed + 1000 + i)
            parts: dict[str, float] = {}
            t = time.monotonic()
            _agent(old, start=False)
            if in_dataset:
                old.cluster.stop()
            parts["stop"] = time.monotonic() - t
            t = time.monotonic()
            send()
            parts["send"] = time.monotonic() - t
            t = time.monotonic()
            if in_dataset:
                old.cluster.start()
            _agent(old, start=True)
            parts["start"] = time.monotonic() - t
            doctor = measure("doctor", [CLI, "doctor"], env=old.proc_env(), cwd=old.root)
            parts["doctor"] = doctor.wall_s
            parts = {k: round(v, 3) for k, v in parts.items()}
            runs.append(parts)
            progress(f"  floor       run {i + 1}/{args.migrate_runs}: {floor_sum(parts):7.2f} s "
                     f"({', '.join(f'{k} {v:.2f}' for k, v in parts.items())})")
    finally:
        rig.drop(new)
    ordered = sorted(runs, key=floor_sum)
    mid = ordered[(len(ordered) - 1) // 2]
    return {"runs": runs, "median": mid, "median_s": floor_sum(mid),
            "postgres_in_dataset": in_dataset}


def pg_in_dataset(h) -> bool:
    """Whether this rig host keeps PostgreSQL's data directory inside the db jail's dataset
    (as a real host does; the pgmove rig), so the floor stops and starts the server too."""
    try:
        mnt = h.pool.mount_of(h.dataset("db"))
    except Exception:  # noqa: BLE001 -- no such dataset: not inside
        return False
    return str(h.cluster.datadir).startswith(str(mnt))


# -- the upgrade path: 15 -> 18 by dump, against same-major by dataset ----------------------
def upgrade_pair(rig, args, work: Path, same_major: dict, progress) -> dict:
    """A: the old host runs PostgreSQL 15 and the new one 18 (the dump path, as the plan
    names it); B: the migrate pair's own runs, 18 -> 18 (the dataset path where it exists).
    Same scale, same changed share, same rig and process."""
    import argparse

    a = argparse.Namespace(**{**vars(args), "migrate_runs": args.upgrade_runs, "floor": False})
    res15 = migrate_pair(rig, a, work, progress, pg_old=15, sides=("migrate",))
    rig.drop(res15.pop("_old"))
    runs_a = res15["b"]["runs"]
    how = (same_major.get("paths") or {}).get("migrate")
    out = {"pair": "upgrade", "a": {**res15["b"], "label": "migrate 15 -> 18 (dump)"},
           "b": {**same_major["b"], "label": f"migrate {same_major.get('pg_major', 18)} -> 18 "
                                             f"({how or 'same major'})"},
           "steps": {"15 -> 18": res15["steps"].get("migrate", {}),
                     "same major": same_major["steps"].get("migrate", {})},
           "runs_a": len(runs_a), "scale": res15["scale"], "changed": args.changed}
    out["ratio"] = round(out["a"]["median"]["wall_s"] / out["b"]["median"]["wall_s"], 2)
    return out
