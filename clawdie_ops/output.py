"""What the operator sees: progress on a terminal, plain lines otherwise, JSON on request."""
from __future__ import annotations

import json
import sys
import time
from collections import deque
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any
from collections.abc import Callable, Iterator

if TYPE_CHECKING:  # rich's console is imported by the task that prints, not by human_size
    from rich.console import Console

from .errors import Aborted


def escape(text: str) -> str:
    """`text` shown as it is by rich (a member name may hold `[bold]`)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


# What this process told the operator lately: the body of a monitoring ping.
RECENT: deque[str] = deque(maxlen=50)


class Reporter:
    def __init__(self, as_json: bool = False, verbose: bool = False) -> None:
        self.as_json = as_json
        self.verbose = verbose
        self.timings: dict[str, float] = {}

    # The consoles are made (and rich imported) on first use: a --json run that prints no
    # warning never needs them, and the migration's steps on each host are such runs.
    @cached_property
    def err(self) -> Console:
        from rich.console import Console
        return Console(stderr=True, highlight=False, soft_wrap=True)

    @cached_property
    def out(self) -> Console:
        from rich.console import Console
        return Console(highlight=False, soft_wrap=True, record=True)

    @cached_property
    def interactive(self) -> bool:
        """Progress only for a person at a terminal; scripts and cron get the summary alone."""
        return not self.as_json and self.err.is_terminal

    @contextmanager
    def step(self, label: str) -> Iterator[None]:
        start = time.monotonic()
        if self.interactive:
            with self.err.status(escape(label)):
                yield
            self.err.print(f"[green]✓[/] {escape(label)} [dim]({time.monotonic() - start:.1f}s)[/]")
        else:
            yield
        self.timings[label] = round(time.monotonic() - start, 3)
        RECENT.append(f"{label} ({self.timings[label]:.1f}s)")

    def note(self, text: str) -> None:
        """A detail worth telling a person; dropped when not interactive unless verbose."""
        if self.interactive or self.verbose:
            self.err.print(text)

    def warn(self, text: str) -> None:
        self.err.print(f"[yellow]warning:[/] {escape(text)}")
        RECENT.append(f"warning: {text}")

    def result(self, data: dict[str, Any], human: Callable[[Console], None]) -> None:
        if self.as_json:
            sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
            RECENT.append(json.dumps(data, default=str)[-2000:])
        else:
            human(self.out)
            RECENT.extend(self.out.export_text().splitlines())


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def confirm(question: str, yes: bool) -> None:
    """Ask before a destructive step; without a terminal, `--yes` is required."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise Aborted(f"{question} (needs confirmation, and there is no terminal to ask)",
                      "run it again with --yes once you have read the plan (--dry-run)")
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise Aborted("stopped: not confirmed", "nothing was changed")
