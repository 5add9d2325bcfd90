"""`python -m faults [--count 200] [--seed S] [--case NAME] [--commands a,b]`: the campaign."""
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
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from faults import campaign, report  # noqa: E402
from faults.scenarios import SCENARIOS  # noqa: E402
from tests.rig.hosts import Rig  # noqa: E402

DEFAULT_SEED = 1129


def installed_commands() -> set[str]:
    """The commands the installed clawdie-ops has (prune joins once it exists)."""
    from tests.conftest import CLI
    res = subprocess.run([CLI, "--list"], capture_output=True, text=True)
    # a task's line starts with two spaces and its name; wrapped help is indented further
    return {line.split()[0] for line in res.stdout.splitlines()
            if line.startswith("  ") and not line.startswith("   ")}


def commit() -> str:
    res = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--",
                            "clawdie_ops"], capture_output=True, text=True).stdout.strip()
    return res.stdout.strip() + ("+uncommitted changes" if dirty else "")


def load() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="nox -s faults --", description=__doc__)
    ap.add_argument("--count", type=int, default=200, help="faults to inject (default 200)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--case", action="append", default=[],
                    help="run only this case (COMMAND-K, or COMMAND-KrN for a missed case's N-th "
                         "retry), e.g. restore-17; repeatable")
    ap.add_argument("--commands", default=",".join(SCENARIOS),
                    help="comma-separated commands to include")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--markdown", type=Path, help="write the report here (RELIABILITY.md)")
    ap.add_argument("--workers", type=int, default=4,
                    help="lanes taking cases from one shared queue, each case on its "
                         "command's own hosts (default 4: much of a case is waiting on "
                         "PostgreSQL, zfs-fuse and sshd)")
    ap.add_argument("--budget-minutes", type=float, default=None,
                    help="start no new case after this many minutes (the report says so)")
    ap.add_argument("--max-draws", type=float, default=2.5,
                    help="give a command up after its share x this many cases (missed "
                         "ones and retries included); its faults still owed go to another")
    args = ap.parse_args(argv)
    # Ctrl-C or SIGTERM (even when started in the background, where SIGINT is ignored):
    # each lane ends after its current case and the rig is torn down
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    commands = [c for c in args.commands.split(",") if c]
    unknown = [c for c in commands if c not in SCENARIOS]
    if unknown:
        ap.error(f"no scenario for {unknown}; known: {sorted(SCENARIOS)}")
    have = installed_commands()
    commands = [c for c in commands if c in have]
    quotas = campaign.shares(args.count, commands)
    started = datetime.now(UTC)
    meta = {"seed": args.seed, "commit": commit(), "started": started.strftime("%Y-%m-%d %H:%M"),
            "machine": f"{os.cpu_count()} cores, {platform.release()}",
            "load_before": load(), "count": args.count}
    work = Path(tempfile.mkdtemp(prefix="clawdie-faults-", dir="/tmp"))
    work.chmod(0o755)  # the postgres user reaches its clusters below it
    rig = Rig(work / "rig")
    outcomes: list[dict] = []
    t0 = time.monotonic()
    deadline = t0 + args.budget_minutes * 60 if args.budget_minutes else None
    lock = threading.Lock()

    def record(o: campaign.Outcome) -> None:
        with lock:
            outcomes.append(asdict(o))
            _say(outcomes[-1])

    # one Runner: every lane shares the commands' hosts (one case per command at a time)
    runner = campaign.Runner(rig, work, args.seed, log=lambda s: print(s, flush=True))
    queue = campaign.WorkQueue(args.seed, quotas, args.max_draws, deadline, runner.log)
    try:
        rig.setup()
        if args.case:
            for name in args.case:
                record(runner.run(campaign.make_case(args.seed, *_split(name))))
        else:
            with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
                futures = [pool.submit(campaign.work, runner, queue, record)
                           for _ in range(max(1, args.workers))]
                try:
                    for f in futures:
                        f.result()
                except KeyboardInterrupt:
                    print("interrupted: each lane ends after its current case", flush=True)
                    campaign.STOP.set()
                    meta["interrupted"] = True  # the figures so far are still written
    finally:
        runner.teardown()
        try:
            rig.teardown()
        except RuntimeError as e:
            print(f"rig teardown: {e}", flush=True)
        shutil.rmtree(work, ignore_errors=True)
    meta.update(duration_s=round(time.monotonic() - t0, 1), load_after=load(),
                workers=args.workers, budget_minutes=args.budget_minutes,
                planned=quotas, owed=queue.quota)
    if args.json:
        report.write_json(args.json, meta, outcomes)
    if args.markdown and not args.case:
        args.markdown.write_text(report.markdown(meta, outcomes))
    t = report.totals(outcomes)
    print(json.dumps({**t, "seed": args.seed, "duration_s": meta["duration_s"]}))
    return {**t, "outcomes": outcomes}


def _split(name: str) -> tuple[str, int, int]:
    try:
        return campaign.parse_name(name)
    except ValueError as e:
        raise SystemExit(str(e)) from None


def _say(d: dict) -> None:
    o = campaign.Outcome(**d)
    c = o.case
    if o.harness_error:
        print(f"{c['name']:<14} {c['kind']:<14} harness error: {o.harness_error}", flush=True)
        return
    if not o.injected:
        print(f"{c['name']:<14} {c['kind']:<14} missed (ended in {o.seconds:.1f}s)", flush=True)
        return
    verdict = "survived" if o.survived else ("LOST" if o.lost else "violated")
    print(f"{c['name']:<14} {c['kind']:<14} {verdict:<9} exit={o.exit} state={o.state} "
          f"{o.seconds:.1f}s {o.did}", flush=True)
    for line in (o.lost or o.violations)[:3]:
        print(f"    ! {line[:300]}", flush=True)
    if o.orphans:
        print(f"    orphans: {o.orphans[:3]}", flush=True)


if __name__ == "__main__":
    main()
