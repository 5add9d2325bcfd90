"""The measured pairs: the runbook's way (A) against clawdie-ops (B), interleaved A/B, B/A, ...

Each pair returns a dict: both sides' runs and medians, the ratio of medians (A over B:
how many times faster clawdie-ops is), and what else the pair compares (archive sizes).
"""
from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Callable

from .measure import Run, measure
from . import runbook

CLI = str(Path(sys.executable).parent / "clawdie-ops")


def available(task: str) -> bool:
    """Whether this clawdie-ops has `task` yet (restore, drill and migrate land separately)."""
    res = subprocess.run([CLI, "--help", task], capture_output=True, text=True)
    return res.returncode == 0


def median(runs: list[Run]) -> dict:
    return {"wall_s": round(statistics.median(r.wall_s for r in runs), 3),
            "cpu_s": round(statistics.median(r.cpu_s for r in runs), 3),
            "tree_pss": max(r.tree_pss for r in runs),
            "tree_rss": max(r.tree_rss for r in runs)}


def check(run: Run) -> Run:
    if run.exit != 0:
        raise RuntimeError(f"{run.label} exited {run.exit}:\n{run.output[-3000:]}")
    return run


def interleave(runs: int, sides: dict[str, Callable[[int], Run]],
               progress: Callable[[str], None]) -> dict[str, list[Run]]:
    """Run every side `runs` times, rotating which goes first, so drift hits all alike."""
    names = list(sides)
    out: dict[str, list[Run]] = {n: [] for n in names}
    for i in range(runs):
        order = names[i % len(names):] + names[:i % len(names)]
        for name in order:
            run = check(sides[name](i))
            parts = ", ".join(f"{k} {v / 2**20:.0f}" for k, v in sorted(
                (run.at_peak or {}).items(), key=lambda kv: -kv[1]))
            progress(f"  {name:<11} run {i + 1}/{runs}: {run.wall_s:7.2f} s  "
                     f"tree RSS {run.tree_rss / 2**20:6.1f} MiB, PSS "
                     f"{run.tree_pss / 2**20:.0f} ({parts})")
            out[name].append(run)
    return out


def pair(name: str, a_label: str, b_label: str, a: list[Run], b: list[Run], **extra) -> dict:
    ma, mb = median(a), median(b)
    return {"pair": name, "a": {"label": a_label, "median": ma, "runs": [r.as_dict() for r in a]},
            "b": {"label": b_label, "median": mb, "runs": [r.as_dict() for r in b]},
            "ratio": round(ma["wall_s"] / mb["wall_s"], 2) if mb["wall_s"] else None, **extra}


# -- backup ------------------------------------------------------------------------------
class Backups:
    """Runs both backups of one host, keeping the newest archive of each for the restores."""

    def __init__(self, h, work: Path) -> None:
        self.h = h
        self.out = h.home / "bench-out"
        self.out.mkdir(exist_ok=True)
        self.pgpass = runbook.passfile(h, work / f"pgpass-{h.name}")
        self.latest: dict[str, Path] = {}
        self.sizes: dict[str, list[int]] = {"runbook": [], "clawdie-ops": []}
        self.steps: list[dict] = []
        self.content_bytes = 0  # the archive's content, uncompressed (the runbook's du -sb)

    def _keep(self, side: str, archive: Path) -> None:
        old = self.latest.get(side)
        if old and old != archive:
            old.unlink(missing_ok=True)
        self.latest[side] = archive
        self.sizes[side].append(archive.stat().st_size)

    def runbook(self, i: int, tag: str = "") -> Run:
        name = f"runbook-{self.h.name}{tag}-{i}-{time.time_ns() % 10**9}"
        run = measure("runbook", runbook.backup_script(self.h, self.out, name, self.pgpass))
        check(run)
        self.content_bytes = int(run.output.split()[0])
        self._keep("runbook", self.out / f"{name}.tar.gz")
        return run

    def ours(self, i: int, *flags: str) -> Run:
        run = check(measure("clawdie-ops", [CLI, "backup", "--json", "--output", str(self.out),
                                            *flags], env=self.h.proc_env(), cwd=self.h.root))
        result = json.loads(run.output[run.output.index("{"):])
        self.steps.append(result.get("steps", {}))
        self._keep("clawdie-ops", Path(result["archive"]))
        return run


def backup_pair(b: Backups, runs: int, progress) -> dict:
    got = interleave(runs, {"runbook": b.runbook, "clawdie-ops": b.ours}, progress)
    size_a = statistics.median(b.sizes["runbook"])
    size_b = statistics.median(b.sizes["clawdie-ops"])
    return pair("backup", "runbook: snapshot, pg_dump x2 in turn, cp, tar -czf",
                "clawdie-ops backup", got["runbook"], got["clawdie-ops"],
                sizes={"a": int(size_a), "b": int(size_b)},
                size_ratio=round(size_b / size_a, 4), steps=b.steps[-1] if b.steps else {},
                content_bytes=b.content_bytes)


def scale_pair(small: Backups, big: Backups, runs: int, factor: float, progress) -> dict:
    got = interleave(runs, {"1x": small.ours, f"{factor:g}x": big.ours}, progress)
    res = pair("scale", "clawdie-ops backup at 1x", f"clawdie-ops backup at {factor:g}x",
               got["1x"], got[f"{factor:g}x"])
    ma, mb = res["a"]["median"], res["b"]["median"]
    res["time_growth"] = round(mb["wall_s"] / ma["wall_s"], 2)
    res["memory_growth"] = round(mb["tree_rss"] / ma["tree_rss"], 3)
    res["ratio"] = None  # not a race: the growth figures are the point
    return res


# -- restore and drill --------------------------------------------------------------------
def restore_pair(b: Backups, runs: int, with_drill: bool, work: Path, progress) -> list[dict]:
    rb_archive, our_archive = b.latest["runbook"], b.latest["clawdie-ops"]
    rb_name = rb_archive.name.removesuffix(".tar.gz")

    def manual(i: int) -> Run:
        scratch = work / f"manual-{i}"
        try:
            return measure("manual", runbook.restore_script(b.h, rb_archive, rb_name, b.pgpass,
                                                            scratch))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    steps: dict[str, dict] = {}

    def ours(i: int) -> Run:
        run = measure("restore", [CLI, "restore", str(our_archive), "--yes", "--json"],
                      env=b.h.proc_env(), cwd=b.h.root)
        if run.exit == 0:
            steps["restore"] = json.loads(run.output[run.output.index("{"):]).get("steps", {})
        return run

    def drill(i: int) -> Run:
        return measure("drill", [CLI, "drill", str(our_archive), "--json"],
                       env=b.h.proc_env(), cwd=b.h.root)

    sides = {"manual": manual, "restore": ours}
    if with_drill:
        sides["drill"] = drill
    got = interleave(runs, sides, progress)
    out = [pair("restore", "runbook: tar -xzf, cp, psql < dump x2 in turn",
                "clawdie-ops restore", got["manual"], got["restore"],
                steps=steps.get("restore", {}))]
    if with_drill:
        out.append(pair("drill", "clawdie-ops restore", "clawdie-ops drill (scratch restore "
                        "+ verify)", got["restore"], got["drill"]))
    return out
