"""Shared plumbing for tasks: settings from the context, errors as one red line."""
from __future__ import annotations

import functools
import signal
import threading
from typing import Any
from collections.abc import Callable

from invoke import Context, task as invoke_task
from invoke.exceptions import Exit
from rich.console import Console

from ..config import settings as config
from ..errors import ClawdieError, Terminated


def settings(c: Context, root: str | None = None, require_env: bool = True) -> config.Settings:
    return config.load(c.config, root=root, require_env=require_env)


def operator_task(*args: Any, **kwargs: Any) -> Callable:
    """invoke's @task, with ClawdieError turned into `error: ...` and its exit code."""

    def wrap(fn: Callable) -> Any:
        @functools.wraps(fn)
        def run(c: Context, *a: Any, **kw: Any) -> Any:
            # SIGTERM (kill, a CI timeout, systemd) unwinds the task, so every step's
            # cleanup and rollback runs: no partial archive, no orphaned scratch cluster.
            previous = _on_sigterm(_interrupt)
            try:
                return fn(c, *a, **kw)
            except ClawdieError as exc:
                _red(f"[bold red]error:[/] {exc.message}"
                     + (f"\n  [yellow]->[/] {exc.hint}" if exc.hint else ""))
                raise Exit(code=exc.exit_code) from None
            except (KeyboardInterrupt, Terminated):
                _red("[bold red]interrupted:[/] stopped; what was under way was cleaned up "
                     "or rolled back (see above)")
                raise Exit(code=130) from None
            finally:
                _on_sigterm(previous)

        return invoke_task(run, *args, **kwargs)

    if len(args) == 1 and callable(args[0]) and not kwargs:
        fn, args = args[0], ()
        return wrap(fn)
    return wrap


def _red(text: str) -> None:
    Console(stderr=True, highlight=False, soft_wrap=True).print(text)


def _interrupt(signum: int, frame: Any) -> None:
    raise Terminated


def _on_sigterm(handler: Any) -> Any:
    """Set the SIGTERM handler (main thread only, where Python allows it); return the old."""
    if threading.current_thread() is not threading.main_thread() or handler is None:
        return None
    return signal.signal(signal.SIGTERM, handler)
