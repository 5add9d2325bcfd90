"""The agent and its jails: stop / start / status through the configured command templates.

Every function takes an invoke Context, so a Fabric Connection runs it on another host.
"""
from __future__ import annotations

import time

from invoke import Context, Result
from invoke.exceptions import CommandTimedOut

from .. import runner
from ..config.settings import Settings
from ..errors import AgentError
from ..runner import Shell


def _run(c: Context, s: Settings, key: str, **values: str) -> Result:
    return runner.run(c, Shell(s.command(key, **values)))


def running(c: Context, s: Settings) -> bool:
    return _run(c, s, "agent_status").exited == 0


def stop(c: Context, s: Settings) -> bool:
    """Stop the agent if it runs; True when it was running (so the caller can restart it)."""
    if not running(c, s):
        return False
    res = _run(c, s, "agent_stop")
    if res.exited != 0 or running(c, s):
        raise AgentError(f"could not stop the agent: {res.stderr.strip() or 'still running'}",
                         f"stop it by hand ({s.command('agent_stop')}) and try again")
    return True


def start(c: Context, s: Settings) -> None:
    """Start the agent: the command must return (a detached start) and the agent run, both
    within clawdie.agent_start_timeout seconds."""
    limit = s.agent_start_timeout
    deadline = time.monotonic() + limit
    try:
        res = runner.run(c, Shell(s.command("agent_start")), timeout=max(1, int(limit)))
    except CommandTimedOut:
        raise AgentError(
            f"the agent's start command did not return within {limit:g} s: it runs the agent "
            "in the foreground", "detach it (FreeBSD: daemon -f npm start, or an rc.d "
            f"service) in clawdie.commands.agent_start: {s.command('agent_start')}") from None
    while res.exited == 0 and not running(c, s) and time.monotonic() < deadline:
        time.sleep(0.5)  # a detached start returns before the agent writes its pidfile
    if res.exited != 0 or not running(c, s):
        why = res.stderr.strip() or f"not running {limit:g} s after its start"
        raise AgentError(f"could not start the agent: {why}",
                         f"start it by hand ({s.command('agent_start')}) and check its log")


def jail_running(c: Context, s: Settings, jail: str) -> bool:
    return _run(c, s, "jail_status", jail=jail).exited == 0


def jail_stop(c: Context, s: Settings, jail: str) -> bool:
    """Stop a jail if it runs; True when it was running."""
    if not jail_running(c, s, jail):
        return False
    res = _run(c, s, "jail_stop", jail=jail)
    if res.exited != 0:
        raise AgentError(f"could not stop jail {jail}: {res.stderr.strip()}",
                         f"stop it by hand ({s.command('jail_stop', jail=jail)})")
    return True


def jail_start(c: Context, s: Settings, jail: str) -> None:
    res = _run(c, s, "jail_start", jail=jail)
    if res.exited != 0:
        raise AgentError(f"could not start jail {jail}: {res.stderr.strip()}",
                         f"start it by hand ({s.command('jail_start', jail=jail)})")


def jail_path(c: Context, s: Settings, jail: str) -> str | None:
    """The running jail's root directory (`jls -j NAME path`); None when it cannot be read."""
    res = _run(c, s, "jail_path", jail=jail)
    path = res.stdout.strip().splitlines()[-1].strip() if res.stdout.strip() else ""
    return path if res.exited == 0 and path.startswith("/") else None
