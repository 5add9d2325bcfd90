"""Steps as data that run themselves: `--dry-run` prints them, execution runs the same objects.

A step names its kind (an Enum of its action), what a person reads about it, the external
commands it runs in order (argv or Shell, exactly as the runner gets them), the callable
that does the work and what it registers to undo. The plan is a list of them; nothing is
worked out a second time at execution.
"""
from __future__ import annotations

import re
import shlex
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from invoke import Context

from . import lifeline, runner
from .interrupts import shielded
from .runner import Command

PLACEHOLDER = re.compile(r"<[^<>]+>")  # a value known only when the step runs: <archive>


@dataclass
class Step:
    kind: StrEnum
    item: str
    lines: list[str]  # what a person reads in the plan: commands and paths
    commands: list[Command] = field(default_factory=list)  # what it runs, in order
    # does the work, given the Context and the run's undo list; None: the step is shown only
    action: Callable[[Context, Undo], Any] | None = field(default=None, repr=False)
    undo: str = ""  # what it puts on the undo list, if anything
    title: str = ""  # the progress line while it runs
    together: bool = False  # runs at once with the neighbouring steps marked so

    def run(self, c: Context, undo: Undo) -> Any:
        return self.action(c, undo) if self.action is not None else None

    def command_lines(self) -> list[str]:
        return [runner.line(cmd) for cmd in self.commands]

    def as_dict(self) -> dict[str, Any]:
        return {"kind": str(self.kind), "item": self.item, "lines": self.lines,
                "commands": self.command_lines(), "undo": self.undo}


class Undo:
    """What a run did so far, each with the action that takes it back."""

    def __init__(self, stop: threading.Event | None = None) -> None:
        self.actions: list[tuple[str, Callable[[], Any]]] = []
        self.stop = stop  # set when the run was interrupted: make no further change

    def stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def push(self, what: str, action: Callable[[], Any]) -> None:
        self.actions.append((what, action))

    def run(self) -> tuple[list[str], list[str]]:
        """Undo newest first, as much as possible: (what was undone, what failed and why)."""
        done, failed = [], []
        for what, action in reversed(self.actions):
            try:
                action()
                done.append(what)
            except Exception as exc:  # noqa: BLE001 -- keep going: undo as much as possible
                failed.append(f"{what} ({exc})")
        return done, failed


def groups(steps: Sequence[Step]) -> list[list[Step]]:
    """The steps in runs: neighbours marked `together` form one group, any other is alone."""
    out: list[list[Step]] = []
    for step in steps:
        if step.together and out and out[-1][0].together:
            out[-1].append(step)
        else:
            out.append([step])
    return out


def wait_all(futures: Sequence[Future], stop: threading.Event) -> None:
    """Wait for every future. An interrupt (in the main thread) sets `stop`, ends the
    commands running now and waits for their threads before it goes on."""
    try:
        wait(futures)
    except BaseException:
        with shielded():
            stop.set()
            while wait(futures, timeout=0.2).not_done:
                lifeline.terminate_children()
        raise


def run_together(c: Context, group: Sequence[Step], undo: Undo
                 ) -> tuple[Step, BaseException] | None:
    """Run the steps of a group at once, each in its thread; wait for all of them, then the
    first failure (step, exception): a rollback must not race a step still running. Each
    step has its own undo list, joined in plan order, so rollback order stays sequential,
    and joined however the group ends: an interrupt (in the main thread) stops the steps,
    ends their commands and waits for them, and nothing they did is left off the list."""
    if len(group) == 1:
        group[0].run(c, undo)
        return None
    stop = threading.Event()
    undos = [Undo(stop) for _ in group]
    pool = ThreadPoolExecutor(max_workers=len(group))
    futures = [pool.submit(step.run, c, u) for step, u in zip(group, undos, strict=True)]
    try:
        wait_all(futures, stop)
    finally:
        with shielded():
            pool.shutdown(wait=True)
            for u in undos:
                undo.actions.extend(u.actions)
    for step, future in zip(group, futures, strict=True):
        exc = future.exception()
        if exc is not None:
            return step, exc
    return None


def fill(argv: Sequence[str], values: dict[str, str]) -> list[str]:
    """A planned argv with its <placeholders> replaced by what the run found."""
    out = []
    for arg in argv:
        for key, value in values.items():
            arg = arg.replace(key, value)
        out.append(arg)
    return out


def planned(steps: Sequence[Step]) -> list[list[str]]:
    """Every command of a plan as the runner will show it: one list per run of steps (steps
    that run at once form one, their commands may interleave), in plan order."""
    return [[line for step in group for line in step.command_lines()] for group in groups(steps)]


def same_command(planned_line: str, ran: str) -> bool:
    """Does `ran` match a planned command line whose <placeholders> stand for one word each?"""
    try:
        want, got = shlex.split(planned_line), shlex.split(ran)
    except ValueError:
        return planned_line == ran
    if len(want) != len(got):
        return False
    for w, g in zip(want, got, strict=True):
        if PLACEHOLDER.search(w):
            pattern = "".join(r"\S+" if PLACEHOLDER.fullmatch(part) else re.escape(part)
                              for part in re.split(r"(<[^<>]+>)", w) if part)
            if not re.fullmatch(pattern, g):
                return False
        elif w != g:
            return False
    return True


def in_order(planned_groups: Sequence[Sequence[str]], ran: Sequence[str]) -> list[str]:
    """The planned commands not found in `ran` in the plan's order: each group's commands
    after the previous group's, in any order among themselves (they run at once). Empty:
    every planned command ran, in order."""
    missing: list[str] = []
    start = 0
    for group in planned_groups:
        used: set[int] = set()
        end = start
        for want in group:
            j = next((k for k in range(start, len(ran))
                      if k not in used and same_command(want, ran[k])), None)
            if j is None:
                missing.append(want)
            else:
                used.add(j)
                end = max(end, j + 1)
        start = end
    return missing
