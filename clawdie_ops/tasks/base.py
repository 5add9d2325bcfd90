"""Shared plumbing for tasks: settings from the context, errors as one red line."""
from __future__ import annotations

import functools
import os
import signal
import threading
from typing import TYPE_CHECKING, Any
from collections.abc import Callable

from invoke import Context, task as invoke_task
from invoke.exceptions import Exit, UnexpectedExit
from ..config import settings as config
from ..errors import ClawdieError, Terminated

if TYPE_CHECKING:  # rich and the monitoring are imported when a task runs, not to list them
    from .. import monitoring


def settings(c: Context, root: str | None = None, require_env: bool = True) -> config.Settings:
    return config.load(c.config, root=root, require_env=require_env)


def operator_task(*args: Any, monitor: str = "", **kwargs: Any) -> Callable:
    """invoke's @task, with ClawdieError turned into `error: ...` and its exit code.

    `monitor`: the job name (backup, prune, drill, replicate) whose start, success or
    failure goes to clawdie.monitoring; the task returns its result dict for the metrics."""

    def wrap(fn: Callable) -> Any:
        @functools.wraps(fn)
        def run(c: Context, *a: Any, **kw: Any) -> Any:
            # SIGTERM (kill, a CI timeout, systemd) and SIGHUP (the ssh session dropped)
            # unwind the task, so every step's cleanup and rollback runs: no partial
            # archive, no orphaned scratch cluster, no half-restored installation.
            previous = _on_signals(_interrupt)
            mon = _monitor(c, monitor, kw)
            try:
                result = fn(c, *a, **kw)
                _finish(mon, True, result)
                return result
            except ClawdieError as exc:
                text = exc.message + (f"\n  -> {exc.hint}" if exc.hint else "")
                _finish(mon, False, None, f"error: {text}")
                # Messages quote archive member names: never read them as markup.
                _red(f"[bold red]error:[/] {escape(exc.message)}"
                     + (f"\n  [yellow]->[/] {escape(exc.hint)}" if exc.hint else ""))
                raise Exit(code=exc.exit_code) from None
            except (KeyboardInterrupt, Terminated):
                _finish(mon, False, None, "interrupted")
                _red("[bold red]interrupted:[/] stopped; what was under way was cleaned up "
                     "or rolled back (see above)")
                raise Exit(code=130) from None
            except (Exit, UnexpectedExit):
                raise
            except Exception as exc:  # a defect: one clear line, the traceback on request
                _finish(mon, False, None, f"error: unexpected {type(exc).__name__}: {exc}")
                if os.environ.get("CLAWDIE_OPS_DEBUG"):
                    raise
                _red(f"[bold red]error:[/] unexpected {escape(type(exc).__name__)}: "
                     f"{escape(str(exc))}\n  [yellow]->[/] this is a defect in clawdie-ops; "
                     "CLAWDIE_OPS_DEBUG=1 shows where it happened")
                raise Exit(code=70) from None
            finally:
                _on_signals(previous)

        made = invoke_task(run, *args, **kwargs)
        # invoke pops each flag's help while parsing; `TASK --help` (positional.py) puts
        # them back from here before printing
        made.flag_help = dict(kwargs.get("help") or {})  # type: ignore[attr-defined]
        return made

    if len(args) == 1 and callable(args[0]) and not kwargs:
        fn, args = args[0], ()
        return wrap(fn)
    return wrap


def _monitor(c: Context, job: str, kw: dict[str, Any]) -> monitoring.Run | None:
    """A monitored run, unless this is a dry run or monitoring is not configured."""
    if not job or kw.get("dry_run"):
        return None
    from .. import monitoring

    mon = monitoring.Run(job, config.section(c.config).get("monitoring"))
    if not mon.active:
        return None
    mon.start()
    return mon


def _finish(mon: monitoring.Run | None, ok: bool, result: Any, error: str = "") -> None:
    if mon is None:
        return
    from ..output import RECENT

    mon.finish(ok, result if isinstance(result, dict) else None, list(RECENT), error)
    for warning in mon.warnings:
        _red(f"[yellow]warning:[/] {warning}")


def _red(text: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(text)


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def _interrupt(signum: int, frame: Any) -> None:
    raise Terminated


SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


def _on_signals(handler: Any) -> Any:
    """Set the SIGTERM and SIGHUP handlers (main thread only, where Python allows it);
    return the old ones."""
    if threading.current_thread() is not threading.main_thread() or handler is None:
        return None
    if isinstance(handler, dict):
        return {sig: signal.signal(sig, h) for sig, h in handler.items()}
    return {sig: signal.signal(sig, handler) for sig in SIGNALS}


def seconds(value: Any) -> float:
    """A --wait value: seconds, 0 or more."""
    from ..errors import ConfigError

    try:
        n = float(value or 0)
    except (TypeError, ValueError):
        n = -1
    if n < 0:
        raise ConfigError(f"--wait {value!r} is not a number of seconds", "e.g. --wait 600")
    return n


def jobs(value: Any, flag: str = "--jobs") -> int:
    """A count of datasets at once: 1 to 16."""
    from ..errors import ConfigError

    text = str(value).strip()
    if not text.isdigit() or not 1 <= int(text) <= 16:
        raise ConfigError(f"{flag} {text} is not a number of datasets at once",
                          "pass a whole number from 1 to 16 (1: one after the other)")
    return int(text)
