"""Signals at awkward moments: a step and its undo record finish together, and a rollback
once begun is never cut short by a second Ctrl-C, SIGTERM or a dropped session (SIGHUP).

Python runs signal handlers in the main thread only; elsewhere these are no-ops.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .errors import Terminated

SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


def _main() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def _holding(received: list[int]) -> Iterator[None]:
    if not _main():
        yield
        return

    def hold(signum: int, frame: Any) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def raise_for(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated


@contextmanager
def deferred() -> Iterator[None]:
    """Signals arriving in the block take effect when it ends (as the exception they are)."""
    received: list[int] = []
    with _holding(received):
        yield
    if received:
        raise_for(received[0])


@contextmanager
def shielded(received: list[int] | None = None) -> Iterator[list[int]]:
    """Signals arriving in the block are noted in the list it yields, and otherwise ignored."""
    got = received if received is not None else []
    with _holding(got):
        yield got
