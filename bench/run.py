"""`nox -s bench -- [--scale 1.0] [--runs 3]`: build an installation on the rig, race the pairs.

Prints a table, writes every run to a JSON file, and with --markdown rewrites the table
section of BENCHMARKS.md. Never part of the test suite: timings are not assertions.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, UTC
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import data, pairs, small  # noqa: E402
from tests.rig.hosts import Rig  # noqa: E402
from tests.rig.postgres import DEFAULT_MAJOR, bindir_for  # noqa: E402

MiB = 2**20
PAIRS = ("backup", "restore", "drill", "small", "startup", "migrate", "upgrade", "scale")
# The default run: issue 15's figures (drill is not among its targets: --pairs drill)
DEFAULT = ("backup", "restore", "small", "startup", "migrate", "upgrade", "scale")
# Not in the default set: see bench/experiments.py
EXPERIMENTS = ("codecs", "formats", "floor", "encryption")
# Issue 15's targets (BENCHMARKS.md lists them with the figures of each run).
TARGETS = {"backup": 4.5, "restore": 1.5, "rss": 150 * MiB, "memory_growth": 1.1,
           "downtime": 0.2, "downtime_floor": 2.0, "version_s": 0.2, "small_floor": 2.0}


def say(text: str) -> None:
    print(text, flush=True)


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    mem = next(int(line.split()[1]) * 1024 for line in open("/proc/meminfo")
               if line.startswith("MemTotal"))

    def version(*cmd: str) -> str:
        try:
            res = subprocess.run(cmd, capture_output=True, text=True)
            return (res.stdout or res.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "missing"
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem / 2**30, 1),
            "kernel": platform.release(), "os": platform.freedesktop_os_release().get(
                "PRETTY_NAME", platform.system()),
            "postgresql": version(str(bindir_for(DEFAULT_MAJOR) / "pg_dump"), "--version"),
            "zstd": version("zstd", "--version"),
            "gzip": version("gzip", "--version"), "pigz": version("pigz", "--version")}


def build(rig: Rig, name: str, scale: float, seed: int, hnsw: bool = False) -> tuple:
    started = time.monotonic()
    h = rig.host(name, rows=200)
    data.populate(h, scale, seed, hnsw=hnsw)
    sizes = data.state_bytes(h)
    say(f"host {name}: {sum(sizes.values()) / MiB:.0f} MiB of state "
        f"({', '.join(f'{k} {v / MiB:.0f}' for k, v in sizes.items())}) "
        f"built in {time.monotonic() - started:.0f} s")
    return h, sizes


def targets(results: list[dict]) -> list[dict]:
    """Each target of the issue: the figure measured, the bound, met or not."""
    by = {r["pair"]: r for r in results}
    out = []

    def add(what: str, value, bound: str, met: bool) -> None:
        out.append({"target": what, "measured": value, "bound": bound, "met": bool(met)})
    if "backup" in by:
        r = by["backup"]
        add("backup speed-up over the runbook", f"{r['ratio']}x", ">= 4.5x",
            r["ratio"] >= TARGETS["backup"])
        add("archive size vs the runbook's .tar.gz", f"{r['size_ratio']:.3f}", "<= 1.000",
            r["size_ratio"] <= 1.0)
    for r in results:
        if r["pair"] == "restore":
            add(f"restore speed-up over the manual restore at scale {r.get('scale', '?')}",
                f"{r['ratio']}x", ">= 1.5x", r["ratio"] >= TARGETS["restore"])
    if "startup" in by:
        v = by["startup"]["version_s"]
        add("`clawdie-ops --version` start-up (median)", f"{v:.3f} s", "< 0.2 s",
            v < TARGETS["version_s"])
    if "small" in by:
        r = by["small"]
        add("backup of a small installation vs one pg_dump of its larger database",
            f"{r['floor_multiple']:.2f}x the floor", "-> 2x",
            r["floor_multiple"] <= TARGETS["small_floor"])
    # Peak RSS summed over the tree (vfork children once): an upper bound, and unlike PSS
    # independent of how many other processes on the machine share the same libraries.
    ours = [(r["pair"], r["b"]["median"]["tree_rss"]) for r in results
            if r["pair"] in ("backup", "restore", "small")]
    if "scale" in by:
        ours.append(("scale", by["scale"]["b"]["median"]["tree_rss"]))
    if ours:
        worst = max(v for _, v in ours)
        add("peak RSS of clawdie-ops (process tree, backup and restore)",
            f"{worst / MiB:.0f} MiB",
            "< 150 MiB",
            worst < TARGETS["rss"])
    if "scale" in by:
        g = by["scale"]["memory_growth"]
        add(f"backup's memory at {by['scale']['factor']:g}x data vs 1x", f"{g:.2f}x", "<= 1.1x",
            g <= TARGETS["memory_growth"])
        rg = by["scale"].get("restore_memory_growth")
        if rg is not None:
            add(f"restore's memory at {by['scale']['factor']:g}x data vs 1x", f"{rg:.2f}x",
                "<= 1.1x", rg <= TARGETS["memory_growth"])
    if "migrate" in by:
        r = by["migrate"]
        share = r["b"]["median"]["downtime_s"] / r["a"]["median"]["downtime_s"]
        add(f"migration downtime vs stop-first ({r['changed']:.0%} changed)", f"{share:.2f}",
            "<= 0.2", share <= TARGETS["downtime"])
        if r.get("floor"):
            add("migration downtime vs the physical floor (stop, increment, start, doctor)",
                f"{r['floor_share']:.2f}x", "<= 2x", r["floor_share"] <= TARGETS["downtime_floor"])
    return out


def table(results: list[dict]) -> list[str]:
    rows = [("pair", "A", "A median", "B", "B median", "A/B", "B peak RSS (PSS)",
             "B CPU")]
    for r in results:
        a, b = r["a"], r["b"]
        ratio = (f"{r['ratio']:.2f}x" if r.get("ratio") else
                 f"time x{r['time_growth']}, RSS x{r['memory_growth']:.2f}" if r["pair"] == "scale"
                 else "-")
        if r["pair"] == "migrate":
            ratio = f"downtime = {r['downtime_share']:.2f} x stop-first"
        if r["pair"] == "drill":
            ratio = f"drill = {b['median']['wall_s'] / a['median']['wall_s']:.2f} x restore"
        if r["pair"] == "small":
            ratio = f"backup = {r['floor_multiple']:.2f} x the floor"
        if r["pair"] == "startup":
            ratio = f"{r['over_python']:.2f} x the interpreter"
        if r["pair"] == "upgrade":
            ratio = f"dump = {r['ratio']:.2f} x the same-major window"
        name = r["pair"] + (f" @{r['scale']:g}" if r.get("scale") is not None else "")
        digits = 3 if r["pair"] == "startup" else 1
        rows.append((name, a["label"], f"{a['median']['wall_s']:.{digits}f} s", b["label"],
                     f"{b['median']['wall_s']:.{digits}f} s", ratio,
                     f"{b['median']['tree_rss'] / MiB:.0f} MiB "
                     f"({b['median']['tree_pss'] / MiB:.0f})",
                     f"{b['median']['cpu_s']:.1f} s"))
    return _md(rows)


def _md(rows: list[tuple]) -> list[str]:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows[1:]]


def markdown(doc: dict) -> str:
    m = doc["machine"]
    majors = doc.get("majors") or {}
    lines = [f"Measured {doc.get('finished', doc['started'] + ' (interrupted)')} on "
             f"{m['cpu']}, {m['cores']} cores, "
             f"{m['memory_gib']} GiB RAM, {m['os']}, kernel {m['kernel']}; {m['postgresql']}, "
             f"{m['zstd']}, {m['pigz']}.",
             "PostgreSQL majors run: " + (", ".join(f"{k} {v}" for k, v in majors.items())
                                          or "not recorded") + ".",
             f"Load average before / after: {doc['load_before']} / "
             f"{doc.get('load_after', '-')}. "
             f"Scale {doc['scale']}: {_content(doc)}{doc['state_mib']} MiB on disk "
             f"(messages.db, PostgreSQL, groups/); {doc['runs']} runs per side, medians; "
             f"the whole run took {doc.get('total_s', 0) / 60:.1f} min.", ""]
    if doc["pairs"]:
        lines += table(doc["pairs"]) + [""]
    lines += details(doc["pairs"])
    if doc["targets"]:
        lines += _md([("target", "measured", "bound", "met")] + [
            (t["target"], t["measured"], t["bound"], "yes" if t["met"] else "**no**")
            for t in doc["targets"]])
    exp = doc.get("experiments") or {}
    if "codecs" in exp:
        size_in = exp["codecs"]["input"]["size"]
        lines += ["", f"Codecs on the same {size_in / MiB:.0f} MiB backup tar:", ""]
        lines += _md([("codec", "time", "CPU", "PSS", "size", "ratio")] + [
            (name, f"{r['wall_s']:.1f} s", f"{r['cpu_s']:.1f} s", f"{r['pss'] / MiB:.0f} MiB",
             f"{r['size'] / MiB:.1f} MiB", f"{r['size'] / size_in:.3f}")
            for name, r in exp["codecs"].items() if name != "input"])
    if "formats" in exp:
        lines += ["", "memory_db, plain SQL against pg_dump's custom format:", ""]
        lines += _md([("step", "time", "CPU")] + [
            (name, f"{r['wall_s']:.1f} s", f"{r['cpu_s']:.1f} s")
            for name, r in exp["formats"].items() if name != "sizes"])
    if "floor" in exp:
        f = exp["floor"]
        lines += ["", f"Restore floor (the archive unpacked, then both dumps replayed at once, "
                      f"nothing checked): {f['unpack_s']:.1f} s + {f['replay_both_s']:.1f} s = "
                      f"{f['total_s']:.1f} s."]
    if "encryption" in exp:
        lines += ["", "Encryption at rest (age), against the same steps unencrypted, "
                      "interleaved in one run:", ""]
        lines += _md([("step", "plain", "age", "age / plain", "age peak RSS")] + [
            (name, f"{r['a']['median']['wall_s']:.1f} s", f"{r['b']['median']['wall_s']:.1f} s",
             f"{r['cost']:.2f}x", f"{r['b']['median']['tree_rss'] / MiB:.0f} MiB")
            for name, r in exp["encryption"].items()])
    for note in doc["notes"]:
        lines.append(f"\n- {note}")
    return "\n".join(lines) + "\n"


def details(results: list[dict]) -> list[str]:
    """Where the time goes: the small backup's steps, the migrate window per step beside
    the physical floor, the upgrade path's window."""
    by = {r["pair"]: r for r in results}
    lines: list[str] = []
    if "small" in by and by["small"].get("steps"):
        r = by["small"]
        lines += [f"Small installation ({r.get('state_mib', '?')} MiB on disk), the median "
                  f"backup's steps against the floor's {r['a']['median']['wall_s']:.2f} s:", ""]
        lines += _md([("step", "seconds")] + [(k, f"{v:.2f}") for k, v in r["steps"].items()
                                              if isinstance(v, (int, float))]) + [""]
    if "migrate" in by:
        r = by["migrate"]
        ours = r["steps"].get("migrate") or {}
        first = r["steps"].get("stop-first") or {}
        phases = ours.get("_phases") or {}
        window = [k for k in ours if not k.startswith("_") and phases.get(k) == "downtime"]
        path = (r.get("paths") or {}).get("migrate")
        lines += [f"Migrate at scale {r['scale']:g} (PostgreSQL {r.get('pg_major', '?')} on both "
                  f"hosts{'; ' + path if path else ''}), the median run's window per step "
                  f"(steps the tool runs side by side overlap):", ""]
        rows = [("step", "migrate", "stop-first")]
        rows += [(k, _s(ours.get(k)), _s(first.get(k))) for k in window]
        rows.append(("downtime (tool's figure / stop-first's)", _s(ours.get("_downtime_s")),
                     _s(first.get("_downtime_s"))))
        lines += _md(rows) + [""]
        if r.get("floor"):
            f = r["floor"]
            pg_how = ("stopped and started with its dataset" if f["postgres_in_dataset"]
                      else "outside the datasets, left running")
            lines += [f"Physical floor, same rig, same process (median of {len(f['runs'])}; "
                      f"PostgreSQL {pg_how}): "
                      + ", ".join(f"{k} {v:.2f} s" for k, v in f["median"].items())
                      + f" = {f['median_s']:.2f} s; migrate's window is "
                      f"{r['floor_share']:.2f}x it.", ""]
    if "upgrade" in by:
        r = by["upgrade"]
        ours = r["steps"].get("15 -> 18") or {}
        same = r["steps"].get("same major") or {}
        phases = {**(same.get("_phases") or {}), **(ours.get("_phases") or {})}
        window = [k for k in {**ours, **same} if not k.startswith("_")
                  and phases.get(k) == "downtime"]
        lines += [f"Upgrade path at scale {r['scale']:g}: the window per step, 15 -> 18 (dump, "
                  f"{r['runs_a']} runs) beside same-major:", ""]
        lines += _md([("step", "15 -> 18", "same major")] + [
            (k, _s(ours.get(k)), _s(same.get(k))) for k in window]) + [""]
    return lines


def _s(v) -> str:
    return f"{v:.2f} s" if isinstance(v, (int, float)) else "-"


def _content(doc: dict) -> str:
    backup = next((r for r in doc["pairs"] if r["pair"] == "backup"), None)
    if not backup or not backup.get("content_bytes"):
        return ""
    return f"{backup['content_bytes'] / MiB:.0f} MiB to back up (the archive's content), "


def update_markdown(path: Path, text: str) -> None:
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    doc = path.read_text() if path.exists() else f"# Benchmarks\n\n{begin}\n{end}\n"
    head, rest = doc.split(begin, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(f"{head}{begin}\n{text}{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--scale", type=float, default=0.25,
                   help="1.0 is about 1 GB of state; the default run measures backup, restore "
                        "and drill at 0.25 and, through the scale pair, restore again at 4x")
    p.add_argument("--runs", type=int, default=3, help="runs per side (medians are reported)")
    p.add_argument("--hnsw", action="store_true",
                   help="memories keeps its HNSW index, as on a Clawdie host: every restore "
                        "(by hand or by the tool) then builds it; slower to set up")
    p.add_argument("--seed", type=int, default=7, help="seed of the generated data")
    p.add_argument("--pairs", default=",".join(DEFAULT),
                   help=f"comma-separated subset of {','.join(PAIRS)}, or the side "
                        f"experiments {','.join(EXPERIMENTS)}")
    p.add_argument("--scale-factor", type=float, default=4.0,
                   help="the scale pair backs up (and, with the restore pair, restores) this "
                        "many times the data")
    p.add_argument("--changed", type=float, default=0.01,
                   help="migrate: share of the data changed between pre-sync and cut-over")
    p.add_argument("--migrate-scale", type=float, default=0.5,
                   help="the migration pairs' own scale (each run moves everything to a "
                        "fresh host)")
    p.add_argument("--migrate-runs", type=int, default=3, help="runs per side of migrate")
    p.add_argument("--upgrade-runs", type=int, default=2,
                   help="runs of the 15 -> 18 migration (its same-major side is migrate's)")
    p.add_argument("--small-scale", type=float, default=0.1,
                   help="the small pair's installation (0.1: about 65 MB on disk)")
    p.add_argument("--migrate-timeout", type=float, default=240,
                   help="seconds after which a migration run counts as hung: it is killed "
                        "and tried again on a fresh host")
    p.add_argument("--json", default="bench-results/latest.json", help="where to write every run")
    p.add_argument("--markdown", default="", help="rewrite the table in this BENCHMARKS.md")
    p.add_argument("--keep", action="store_true", help="leave the rig running at the end")
    p.add_argument("--render", default="", metavar="JSON",
                   help="measure nothing: print (and with --markdown write) the table of "
                        "an earlier run's JSON")
    args = p.parse_args(argv)
    if args.render:
        doc = json.loads(Path(args.render).read_text())
        for r in doc["pairs"]:  # growth as defined now, from the runs kept in the JSON
            if r["pair"] == "scale":
                r["memory_growth"] = round(r["b"]["median"]["tree_rss"]
                                           / r["a"]["median"]["tree_rss"], 3)
        doc["targets"] = targets(doc["pairs"])
        text = markdown(doc)
        say(text)
        if args.markdown:
            update_markdown(Path(args.markdown), text)
        return 0
    chosen = [x for x in args.pairs.split(",") if x]
    unknown = set(chosen) - set(PAIRS) - set(EXPERIMENTS)
    if unknown:
        p.error(f"unknown pair(s): {', '.join(sorted(unknown))}")

    started = time.monotonic()
    doc: dict = {"started": datetime.now(UTC).isoformat(timespec="seconds"),
                 "machine": machine(), "scale": args.scale, "runs": args.runs,
                 "seed": args.seed, "hnsw": args.hnsw, "load_before": _load(), "pairs": [],
                 "notes": []}
    say(f"bench: scale {args.scale}, {args.runs} runs per side, load {doc['load_before']}")
    # SIGTERM (and SIGINT, which a shell's background job ignores) tear the rig down too.
    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    work = Path(tempfile.mkdtemp(prefix="clawdie-bench-", dir="/tmp"))
    work.chmod(0o755)  # PostgreSQL runs as its own user below it
    rig = Rig(work / "rig")
    # PostgreSQL lives in the db jail's dataset: room for the largest installation's
    # databases, their restores and the snapshots between (sparse, so only what is used)
    rig.pool_size = f"{max(4, int(16 * args.scale * max(args.scale_factor, 1)))}G"
    try:
        doc["majors"], doc["state_mib"] = {}, 0
        if set(chosen) & {"backup", "restore", "drill", "scale", *EXPERIMENTS}:
            h, sizes = build(rig, "one", args.scale, args.seed, args.hnsw)
            doc["majors"]["installation"] = h.cluster.major
            doc["state"] = sizes
            doc["state_mib"] = round(sum(sizes.values()) / MiB)
            b = pairs.Backups(h, work)

        def guard(name: str, fn) -> None:
            """One pair failing is a note in the report, not the end of the run."""
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 -- report it, measure the rest
                doc["notes"].append(f"{name}: not measured, it failed: "
                                    f"{str(exc).strip()[-600:]}")
                say(f"pair {name} FAILED: {str(exc).strip()[-600:]}")
            save(doc, args.json)

        if "backup" in chosen:
            say("pair backup: runbook vs clawdie-ops backup")
            guard("backup", lambda: doc["pairs"].append(pairs.backup_pair(b, args.runs, say)))
        if set(EXPERIMENTS) & set(chosen):
            from bench import experiments
            if "runbook" not in b.latest and set(chosen) & {"codecs", "formats", "floor"}:
                b.runbook(0)
            if "clawdie-ops" not in b.latest:
                b.ours(0)
            doc["experiments"] = {}
            for name in EXPERIMENTS:
                if name in chosen:
                    say(f"experiment {name}")
                    guard(name, lambda n=name: doc["experiments"].__setitem__(
                        n, getattr(experiments, n)(b, work, say)))
        want_restore = {"restore", "drill"} & set(chosen)
        if want_restore:
            if not pairs.available("restore"):
                doc["notes"].append("restore and drill: not measured, `clawdie-ops restore` "
                                    "has not landed yet")
            else:
                if not b.latest:
                    b.runbook(0)
                    b.ours(0)
                drill = "drill" in chosen and pairs.available("drill")
                if "drill" in chosen and not drill:
                    doc["notes"].append("drill: not measured, `clawdie-ops drill` has not "
                                        "landed yet")
                say("pair restore: manual vs clawdie-ops restore" + (" vs drill" if drill else ""))
                guard("restore", lambda: doc["pairs"].extend(
                    _at(args.scale, pairs.restore_pair(b, args.runs, drill, work, say))))
        if "startup" in chosen:
            say("pair startup: python -c pass vs clawdie-ops --version")
            guard("startup", lambda: doc["pairs"].append(small.startup_pair(args.runs, say)))
        if "small" in chosen:
            def small_backup() -> None:
                little, little_sizes = build(rig, "small", args.small_scale, args.seed)
                say(f"pair small: one pg_dump vs clawdie-ops backup at {args.small_scale:g}")
                res = small.backup_pair(little, work, max(args.runs, 5), say)
                res["state_mib"] = round(sum(little_sizes.values()) / MiB)
                res["scale"] = args.small_scale
                doc["pairs"].append(res)
                rig.drop(little)
            guard("small", small_backup)
        if "migrate" in chosen:
            if not pairs.available("migrate"):
                doc["notes"].append("migrate: not measured, `clawdie-ops migrate` has not "
                                    "landed yet")
            else:
                say(f"pair migrate: stop-first vs clawdie-ops migrate ({args.changed:.0%} "
                    "changed after the pre-sync)")

                def migrate() -> None:
                    from bench import migration
                    res = migration.migrate_pair(rig, args, work, say)
                    rig.drop(res.pop("_old"))
                    doc["pairs"].append(res)
                    doc["majors"]["migrate (old and new host)"] = \
                        res.get("pg_major")
                    if "upgrade" in chosen:
                        say("pair upgrade: migrate 15 -> 18 (dump) vs same major")
                        doc["majors"]["upgrade"] = "15 -> 18"
                        guard("upgrade", lambda: doc["pairs"].append(
                            migration.upgrade_pair(rig, args, work, res, say)))
                guard("migrate", migrate)
        if "scale" in chosen:
            def scale() -> None:
                # with --hnsw the larger host keeps the index too: its restore pair builds it
                big, big_sizes = build(rig, "four", args.scale * args.scale_factor, args.seed,
                                       args.hnsw)
                doc["state_scaled"] = big_sizes
                say(f"pair scale: clawdie-ops backup at 1x vs {args.scale_factor:g}x")
                big_b = pairs.Backups(big, work)
                res = pairs.scale_pair(b, big_b, max(2, args.runs - 1), args.scale_factor, say)
                res["factor"] = args.scale_factor
                doc["pairs"].append(res)
                small_restore = next((r for r in doc["pairs"] if r["pair"] == "restore"), None)
                if "restore" in chosen and pairs.available("restore"):
                    # restore at the larger scale too: its own pair against the manual
                    # restore, and restore's memory growth from 1x to this
                    say(f"pair restore at {args.scale * args.scale_factor:g}: manual vs "
                        "clawdie-ops restore")
                    big_b.runbook(0)
                    got = _at(args.scale * args.scale_factor,
                              pairs.restore_pair(big_b, args.runs, False, work, say))
                    doc["pairs"].extend(got)
                    if small_restore:
                        res["restore_memory_growth"] = round(
                            got[0]["b"]["median"]["tree_rss"]
                            / small_restore["b"]["median"]["tree_rss"], 3)
                        res["restore_rss"] = got[0]["b"]["median"]["tree_rss"]
                rig.drop(big)
            guard("scale", scale)
    finally:
        if args.keep:
            say(f"rig kept under {work}")
        else:
            rig.teardown()
            shutil.rmtree(work, ignore_errors=True)
    doc["load_after"] = _load()
    doc["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    doc["total_s"] = round(time.monotonic() - started, 1)
    doc["targets"] = targets(doc["pairs"])
    text = markdown(doc)
    say("\n" + text)
    save(doc, args.json)
    say(f"runs written to {args.json}")
    if args.markdown:
        update_markdown(Path(args.markdown), text)
        say(f"table written to {args.markdown}")
    return 0


def _at(scale: float, results: list[dict]) -> list[dict]:
    for r in results:
        if r["pair"] == "restore":
            r["scale"] = scale
    return results


def save(doc: dict, path: str) -> None:
    """Write what is measured so far: a later failure or interruption loses nothing."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
