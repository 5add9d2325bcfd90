"""`fleet`: one task on many hosts at once, one line per host; a host's failure stops no other.

Each host runs its own clawdie-ops (`TASK --json`) through a Fabric Connection (or this
machine's Context for an `ssh: local` entry), in a bounded pool of threads. Its inventory
overrides reach it as a private temporary config file, as in a migration.
"""
from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from invoke import Context

from ..config import inventory
from ..errors import ClawdieError, ConfigError

TASKS = ("backup", "drill", "doctor", "prune")
WORKERS = 4


@dataclass
class HostRun:
    host: str
    status: str = "failed"  # ok, warn (doctor), failed
    exit_code: int | None = None
    summary: str = ""
    seconds: float = 0.0
    error: str = ""
    hint: str = ""
    result: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def hosts_for(cfg: Mapping[str, Any], names: str | None, group: str | None
              ) -> list[inventory.Host]:
    """The hosts of `--hosts a,b,c` or of the inventory group `--group NAME`."""
    if bool(names) == bool(group):
        raise ConfigError("give the hosts: --hosts a,b,c or --group NAME",
                          "groups live in clawdie.groups: {NAME: [host, ...]}")
    if group:
        groups = dict(cfg.get("groups") or {})
        if group not in groups:
            raise ConfigError(f"no group {group!r} in clawdie.groups "
                              f"(known: {', '.join(sorted(groups)) or 'none'})",
                              f"add it: clawdie.groups.{group}: [host1, host2]")
        wanted = [str(n) for n in groups[group] or []]
    else:
        wanted = [n.strip() for n in str(names).split(",") if n.strip()]
    if not wanted:
        raise ConfigError("the host list is empty", "name at least one host")
    dupes = {n for n in wanted if wanted.count(n) > 1}
    if dupes:
        raise ConfigError(f"hosts named twice: {', '.join(sorted(dupes))}", "")
    return [inventory.resolve(cfg, n) for n in wanted]


def task_args(task: str, h: inventory.Host, extra: list[str]) -> list[str]:
    if task not in TASKS:
        raise ConfigError(f"fleet runs {', '.join(TASKS)}, not {task!r}", "")
    if task == "drill" and not extra:
        directory = str(h.overrides.get("backup_dir") or "")
        if not directory:
            raise ConfigError(f"drill on {h.name} needs the folder of its archives",
                              f"set clawdie.hosts.{h.name}.overrides.backup_dir, or pass "
                              "--args '--latest DIR'")
        extra = ["--latest", directory]
    return [*extra, "--json"]


def summary(task: str, data: Mapping[str, Any]) -> str:
    from ..output import human_size

    if task == "backup":
        return (f"{Path(str(data.get('archive', ''))).name} "
                f"({human_size(float(data.get('size', 0)))}, {data.get('duration_s', 0):.1f}s)")
    if task == "drill":
        checks = data.get("checks") or []
        return f"{'passed' if data.get('ok') else 'FAILED'}: {len(checks)} checks"
    if task == "doctor":
        bad = [f"{ch['name']} {ch['status']}" for ch in data.get("checks") or []
               if ch.get("status") != "ok"]
        return f"{data.get('status')}" + (f": {', '.join(bad)}" if bad else "")
    gone = [a for a in data.get("archives") or [] if a.get("action") == "remove"]
    return f"removed {len(gone)}, kept {data.get('kept', 0)}"


def run_one(c: Context, cfg: Mapping[str, Any], h: inventory.Host, task: str,
            extra: list[str], accept_new_host_key: bool = False) -> HostRun:
    """The task on one host; every failure becomes this host's line, never an exception."""
    from ..hosts import remote  # Fabric, only when there are hosts to reach

    started = time.monotonic()
    out = HostRun(h.name)
    ctx: Any = None
    cfg_file = None
    try:
        args = task_args(task, h, extra)
        # a Context of its own per thread: invoke's runners keep state on it
        ctx = remote.context_for(Context(config=c.config), h, cfg,
                                 accept_new_host_key=accept_new_host_key)
        overrides = h.settings_overrides()
        if overrides:
            cfg_file = remote.write_temp_config(ctx, h, {"clawdie": overrides})
        codes = (0, 1, 2) if task == "doctor" else (0,)
        data, code = remote.run_tool(ctx, h, task, *args, config_file=cfg_file, ok_codes=codes)
        out.exit_code, out.result = code, data
        out.status = {0: "ok", 1: "warn"}.get(code, "failed")
        out.summary = summary(task, data)
    except ClawdieError as exc:
        out.error, out.hint = exc.message, exc.hint
        out.exit_code = getattr(exc, "exited", None)
        result = getattr(exc, "result", None)
        if isinstance(result, dict):
            out.result = result
    except Exception as exc:  # noqa: BLE001 - one host's surprise must not end the others
        out.error = f"{type(exc).__name__}: {exc}"
        out.hint = "run the task on that host by hand to see more"
    finally:
        if cfg_file and ctx is not None:
            try:
                remote.remove_temp_config(ctx, h, cfg_file)
            except ClawdieError:
                pass
        if ctx is not None:
            remote.close(ctx)
        out.seconds = round(time.monotonic() - started, 2)
    return out


def run(c: Context, cfg: Mapping[str, Any], task: str, hosts: list[inventory.Host],
        extra: list[str] | None = None, workers: int = WORKERS,
        accept_new_host_key: bool = False,
        on_done: Callable[[HostRun], None] | None = None) -> list[HostRun]:
    """Every host at once (at most `workers` together); results in the order given."""
    extra = list(extra or [])
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(hosts)))) as pool:
        futures = [pool.submit(run_one, c, cfg, h, task, extra, accept_new_host_key)
                   for h in hosts]
        results = []
        for f in futures:
            r = f.result()
            if on_done:
                on_done(r)
            results.append(r)
    return results


def parse_args(text: str | None) -> list[str]:
    try:
        return shlex.split(text or "")
    except ValueError as exc:
        raise ConfigError(f"--args {text!r}: {exc}", "quote it as a shell would") from None
