"""The campaign: a seeded plan of cases, each run as reset, fault, repair, invariants, next run.

A case is named COMMAND-K (restore-17). Everything it does (fault kind, trigger, timing,
parameters, the variations of the starting state) comes from `random.Random("SEED:NAME")`,
so `--seed S --case restore-17` replays exactly that case, whatever ran before it.
"""
from __future__ import annotations

import os
import random
import re
import subprocess
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.conftest import CLI
from tests.helpers import cmdline, descendants, parents, start_time

from . import kinds, state as st
from .scenarios import SCENARIOS, Run, Scenario, Verdict

# Share of the faults per command: the slower commands get fewer (a migrate case costs
# about six backup cases). A command's cases run one after another on its own hosts, so
# no command's share may take longer than the campaign: on b0b0131 a case took (reset,
# run, checks, next run) backup 18 s, restore 36 s, drill 20 s, replicate 51 s, migrate
# 101 s, prune 3 s on a loaded machine; replicate's 21% alone then took 33 minutes.
WEIGHTS = {"backup": 0.38, "restore": 0.18, "drill": 0.13, "replicate": 0.14, "migrate": 0.05,
           "prune": 0.12}
CLOCK_STEPS = ("+1h", "+26h", "+3d", "+400d", "-1h", "-26h")
POLL = 0.02
STOP = threading.Event()  # set on Ctrl-C: every lane ends after its current case
SCAN = 0.1
ORPHAN_WAIT = 3.0  # seconds a child may take to notice its parent is gone
# Rough seconds per case on the rig (a faulted run, the checks, the next run), to share the
# commands out between the workers.
COST = {"backup": 18, "restore": 36, "drill": 20, "replicate": 51, "migrate": 101, "prune": 3}


@dataclass
class Case:
    name: str  # COMMAND-K, or COMMAND-KrN for the N-th retry of a missed COMMAND-K
    command: str
    kind: str
    step: str  # "" when by time
    frac: float  # by time: the moment, as a fraction of a clean run's duration
    delay: float  # by step: seconds after the step is seen
    param: dict = field(default_factory=dict)
    attempt: int = 0  # 0: as drawn; N: the N-th retry at an earlier moment

    @property
    def trigger(self) -> str:
        return f"step {self.step} +{self.delay:.2f}s" if self.step else \
            f"time {self.frac:.0%} of a clean run"


RETRIES = 2  # a missed case is retried this many times at earlier moments, then replaced


def make_case(seed: int, command: str, k: int, attempt: int = 0) -> Case:
    """Case COMMAND-K (attempt 0) or its retry COMMAND-KrN: all from the seed and the name.

    A retry keeps the fault and its parameters and moves the moment where the run reaches
    it: by time in the first 95%/2^N of a clean run when the kind has a "by time" form,
    else the kind's step (drawn again) with no delay."""
    name = f"{command}-{k}"
    rng = random.Random(f"{seed}:{name}")
    faults = SCENARIOS[command].faults
    kind = rng.choice(sorted(faults))
    step = rng.choice(faults[kind])
    param: dict = {}
    if kind == "pg-stop":
        param["mode"] = rng.choice(["fast", "immediate"])
    elif kind == "sshd-restart":
        param.update(down_s=round(rng.uniform(0.2, 3.0), 2), drop_sessions=rng.random() < 0.5)
    elif kind == "clock-step":
        param["offset"] = rng.choice(CLOCK_STEPS)
    frac, delay = round(rng.uniform(0.03, 0.95), 3), round(rng.uniform(0.0, 0.3), 3)
    if attempt:
        name = f"{name}r{attempt}"
        rng = random.Random(f"{seed}:{name}")
        if "" in faults[kind]:
            step, frac = "", round(rng.uniform(0.03, 0.95 / 2 ** attempt), 3)
        else:
            step, delay = rng.choice(faults[kind]), 0.0
    return Case(name, command, kind, step, frac, delay, param, attempt)


def parse_name(name: str) -> tuple[str, int, int]:
    """COMMAND-K or COMMAND-KrN -> (command, K, N)."""
    m = re.fullmatch(r"([a-z]+)-(\d+)(?:r(\d+))?", name)
    if not m or m.group(1) not in SCENARIOS:
        raise ValueError(f"a case is COMMAND-K or COMMAND-KrN (e.g. restore-17, restore-17r1), "
                         f"not {name!r}; commands: {', '.join(SCENARIOS)}")
    return m.group(1), int(m.group(2)), int(m.group(3) or 0)


def shares(count: int, commands: list[str]) -> dict[str, int]:
    """`count` faults shared out by WEIGHTS (largest remainder)."""
    w = {c: WEIGHTS[c] for c in commands}
    total = sum(w.values())
    exact = {c: count * w[c] / total for c in commands}
    n = {c: int(exact[c]) for c in commands}
    short = count - sum(n.values())
    for c in sorted(commands, key=lambda c: exact[c] - n[c], reverse=True)[:short]:
        n[c] += 1
    return n


def plan(seed: int, count: int, commands: list[str]) -> list[Case]:
    """The first draw of cases: `count` shared out by WEIGHTS, in command order (misses
    add retries and further cases as the campaign goes)."""
    n = shares(count, commands)
    return [make_case(seed, c, k) for c in commands for k in range(1, n[c] + 1)]


class WorkQueue:
    """One queue for every worker lane: each takes the next case of the command furthest
    behind its share whose hosts no other lane is using (a command's scenario runs one case
    at a time). A missed case comes back as its retry at an earlier moment, then is
    replaced by the next case, so the count of INJECTED faults reaches each share."""

    def __init__(self, seed: int, quotas: dict[str, int], max_draws: float = 2.5,
                 deadline: float | None = None, log=print) -> None:
        self.seed, self.quota, self.deadline, self.log = seed, dict(quotas), deadline, log
        self.max_draws = max_draws
        self.injected = dict.fromkeys(quotas, 0)
        self.draws = dict.fromkeys(quotas, 0)
        self.next_k = dict.fromkeys(quotas, 1)
        self.retry: dict[str, Case | None] = dict.fromkeys(quotas)
        self.errors = dict.fromkeys(quotas, 0)
        self.busy: set[str] = set()
        self.closed: set[str] = set()  # commands given up (harness errors, too many misses)
        self.cond = threading.Condition()

    def _open(self, c: str) -> bool:
        return c not in self.closed and self.injected[c] < self.quota[c]

    def take(self) -> Case | None:
        """The next case for a lane, or None when nothing is left for it."""
        with self.cond:
            while True:
                if STOP.is_set():
                    return None
                if self.deadline is not None and time.monotonic() > self.deadline:
                    if not getattr(self, "_said_budget", False):
                        self._said_budget = True
                        self.log(f"time budget reached: {sum(self.injected.values())} of "
                                 f"{sum(self.quota.values())} injected")
                    return None
                free = [c for c in self.quota if self._open(c) and c not in self.busy]
                if free:
                    # the furthest behind its share first; the costliest on a tie
                    c = min(free, key=lambda c: (self.injected[c] / max(1, self.quota[c]),
                                                 -COST.get(c, 20)))
                    self.busy.add(c)
                    self.draws[c] += 1
                    case = self.retry[c]
                    self.retry[c] = None
                    if case is None:
                        case = make_case(self.seed, c, self.next_k[c])
                        self.next_k[c] += 1
                    return case
                if not any(self._open(c) for c in self.quota):
                    return None
                self.cond.wait(1.0)  # every open command is busy in another lane

    def done(self, case: Case, o: Outcome) -> None:
        c = case.command
        with self.cond:
            self.busy.discard(c)
            self.injected[c] += o.injected
            self.errors[c] = self.errors[c] + 1 if o.harness_error else 0
            if not o.injected and not o.harness_error and case.attempt < RETRIES:
                _, k, _ = parse_name(case.name)
                self.retry[c] = make_case(self.seed, c, k, case.attempt + 1)
            why = ""
            if self.errors[c] >= 3:
                why = "three harness errors in a row"
            elif self.injected[c] < self.quota[c] and \
                    self.draws[c] >= self.quota[c] * self.max_draws + RETRIES:
                why = f"{self.draws[c]} cases drawn"
            if why:
                self.closed.add(c)
                self._hand_on(c, why)
            self.cond.notify_all()

    def _hand_on(self, c: str, why: str) -> None:
        """A command given up: its faults still owed go to the cheapest open command."""
        owed = self.quota[c] - self.injected[c]
        self.quota[c] = self.injected[c]
        heirs = sorted((x for x in self.quota if x not in self.closed),
                       key=lambda x: COST.get(x, 20))
        if heirs and owed > 0:
            self.quota[heirs[0]] += owed
        self.log(f"[{c}] {why}: no more of its cases"
                 + (f"; its {owed} faults still owed go to {heirs[0]}" if heirs and owed > 0
                    else ""))


@dataclass
class Outcome:
    case: dict
    injected: bool
    did: str = ""
    exit: int | None = None
    seconds: float = 0.0
    state: str = ""
    survived: bool = False
    lost: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    next_run: str = ""
    stderr_tail: str = ""
    harness_error: str = ""  # the rig failed (not counted as injected)
    phases: dict = field(default_factory=dict)  # seconds: reset, run, checks, next


class Runner:
    def __init__(self, rig, work: Path, seed: int, log=print, setup_lock=None) -> None:
        self.rig, self.work, self.seed, self.log = rig, work, seed, log
        self.setup_lock = setup_lock or threading.Lock()
        self.scenarios: dict[str, Scenario] = {}
        self.clean_s: dict[str, float] = {}
        self.broken: dict[str, str] = {}  # commands whose clean run failed: why
        self.checker = st.ArchiveChecker()

    def scenario(self, command: str) -> Scenario:
        if command in self.broken:
            raise RuntimeError(self.broken[command])
        if command not in self.clean_s:
            t = time.monotonic()
            sc = self.scenarios.get(command)
            if sc is None:
                sc = SCENARIOS[command](self.rig, self.work)
                self.scenarios[command] = sc  # torn down at the end, whatever happens
                with self.setup_lock:  # the rig hands out host names and addresses in turn
                    sc.setup()
            # a clean run: proves the scenario works and times the "by time" moments
            sc.reset(random.Random(f"{self.seed}:{command}:calibrate"))
            res = self._launch(sc, sc.argv(random.Random(0)), sc.env())
            code, out, err = self._finish(res)
            if code != 0:
                self.broken[command] = f"a clean {command} fails on the rig: {err[-2000:]}"
                raise RuntimeError(self.broken[command])
            self.clean_s[command] = time.monotonic() - res[1]
            self.log(f"[{command}] set up in {time.monotonic() - t:.1f}s; a clean run takes "
                     f"{self.clean_s[command]:.1f}s")
        return self.scenarios[command]

    def teardown(self) -> None:
        for sc in self.scenarios.values():
            try:
                sc.teardown()
            except Exception as e:  # noqa: BLE001 - teardown goes on with the others
                self.log(f"teardown of {sc.command}: {e}")

    def _launch(self, sc: Scenario, argv: list[str], env: dict):
        out = open(sc.work / "stdout", "w+")
        err = open(sc.work / "stderr", "w+")
        t0 = time.monotonic()
        proc = subprocess.Popen([CLI, *argv], env=env, cwd=sc.cwd(), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, start_new_session=True)
        return proc, t0, out, err

    @staticmethod
    def _finish(launched) -> tuple[int, str, str]:
        proc, _, out, err = launched
        code = proc.wait()
        out.seek(0)
        err.seek(0)
        text = out.read(), err.read()
        out.close()
        err.close()
        return code, *text

    def run(self, case: Case) -> Outcome:
        sc = self.scenario(case.command)
        rng = random.Random(f"{self.seed}:{case.name}:start")
        t_reset = time.monotonic()
        sc.reset(rng)
        before = sc.capture()
        phases = {"reset": round(time.monotonic() - t_reset, 2)}
        env = sc.env()
        if case.kind == "clock-step":
            env.update(kinds.clock_env(sc.clock_file))
        shot = kinds.Shot(case.kind, case.step, dict(case.param))
        at = case.frac * self.clean_s[case.command]
        wall0 = time.time() - 1  # files changed from here on are this run's
        launched = self._launch(sc, sc.argv(rng), env)
        proc, t0 = launched[0], launched[1]
        seen: dict[int, int | None] = {}
        step_at = None
        fired = False
        hung = False
        scanned = -1.0
        while proc.poll() is None:
            now = time.monotonic() - t0
            if now > sc.timeout:
                hung = True
                proc.kill()
                break
            # /proc is read every SCAN s (it costs CPU the tool needs); the clock every POLL
            if now - scanned >= SCAN:
                scanned = now
                table = parents()
                pids = descendants(proc.pid, table)
                for q in pids:
                    if q not in seen:
                        seen[q] = start_time(q)
                if not fired and case.step and step_at is None:
                    procs = [cmdline(q) for q in pids + sc.remote_pids(table)]
                    if sc.step_seen(case.step, procs):
                        step_at = now
            if not fired:
                go = (step_at is not None and now >= step_at + case.delay) if case.step \
                    else now >= at
                if go:
                    fired = True
                    shot.did = kinds.fire(shot, proc.pid, sc) or ""
            time.sleep(POLL)
        code, out, err = self._finish(launched)
        seconds = time.monotonic() - t0
        kinds.repair(shot)
        o = Outcome(asdict(case), injected=bool(shot.did), did=shot.did,
                    exit=None if hung else code, seconds=round(seconds, 2),
                    stderr_tail=err[-600:], phases=phases)
        phases["run"] = round(seconds, 2)
        if hung:
            o.violations.append(f"the command hung (killed after {sc.timeout:.0f}s)")
        # children of the tool that outlive it (by pid and start time: not a reused pid)
        service = sc.services()
        alive = kinds.wait_gone({q: s for q, s in seen.items() if q not in service},
                                timeout=ORPHAN_WAIT)
        for q, cmd in alive.items():
            o.orphans.append(cmd[:200])
            try:
                os.kill(q, 9)
            except ProcessLookupError:
                pass
        o.orphans += [f"(left running) {cmdline(q)[:200]}" for q in sc.strays()]
        if not o.injected:
            return o
        self._judge(sc, case, before, Run(o.exit, out, err, seconds), o, wall0)
        return o

    def _judge(self, sc: Scenario, case: Case, before: dict, run: Run, o: Outcome,
               since: float) -> None:
        t_reset0 = time.monotonic() - sum(o.phases.values())
        try:
            after = sc.capture()
        except Exception as e:  # noqa: BLE001 - an unreadable installation is a finding
            after = {"error": f"{type(e).__name__}: {e}"}
        if "error" in after:
            # e.g. a database gone: what the next run can or cannot bring back decides
            v = Verdict("unreadable", [f"the installation cannot be read after the fault: "
                                       f"{after['error'][:300]}"])
        else:
            v = sc.judge(before, after, run)
        o.state, o.lost, o.violations = v.state, list(v.lost), o.violations + v.violations
        if case.kind == "clock-step" and run.code != 0:
            # a stepped clock breaks nothing the command needs: it must still succeed
            tail = [ln for ln in run.err.strip().splitlines() if ln.strip()][-2:]
            o.violations.append(f"failed under a clock step ({case.param['offset']}): "
                                f"{' / '.join(tail)[:300]}")
        env = {**sc.env(), "TMPDIR": str(sc.tmpdir)}
        secrets = st.secrets_of(*sc.hosts())
        leaked = st.leaks(sc.scan_dirs(), secrets, sc.scan_skip(), since)
        o.violations += [f"secret readable by others: {x}" for x in leaked]
        o.leftovers = sc.leftovers()
        t_next = time.monotonic()
        try:
            ok, detail, lost = sc.next_run(before, v)
        except Exception as e:  # noqa: BLE001
            ok, detail, lost = False, f"{type(e).__name__}: {e}", []
            detail += " " + traceback.format_exc(limit=2)[-300:]
        o.next_run = ("ok: " if ok else "FAILED: ") + detail
        if not ok:
            o.violations.append(f"the next run: {detail}")
        o.lost += lost
        o.phases["next"] = round(time.monotonic() - t_next, 2)
        # the faulted run's archives and the next run's, checked once (inspect reads all)
        bad = self.checker.check(sc.archive_dirs(), env)
        o.lost += bad
        o.violations += bad
        o.survived = not o.violations and not o.lost
        o.phases["total"] = round(time.monotonic() - t_reset0, 2)


def _ends(text: str, keep: int = 400) -> str:
    """A long error's first and last lines: what failed, and the log's last word."""
    return text if len(text) <= 2 * keep else f"{text[:keep]} [...] {text[-keep:]}"


def work(runner: Runner, queue: WorkQueue, on_outcome) -> None:
    """One lane: take cases from the shared queue until it is empty."""
    while (case := queue.take()) is not None:
        try:
            o = runner.run(case)
        except Exception as e:  # noqa: BLE001 - the rig failed, not the tool
            o = Outcome(asdict(case), injected=False,
                        harness_error=f"{type(e).__name__}: {_ends(str(e))}")
        queue.done(case, o)
        on_outcome(o)


def run_command(runner: Runner, command: str, count: int, max_draws: float = 2.5,
                deadline: float | None = None) -> list[Outcome]:
    """`count` injected faults into `command` in this thread (the campaign's sample)."""
    out: list[Outcome] = []
    work(runner, WorkQueue(runner.seed, {command: count}, max_draws, deadline, runner.log),
         out.append)
    return out
