"""The agent and its jails: stop / start / status through the configured command templates.

Every function takes an invoke Context, so a Fabric Connection runs it on another host.
"""
from __future__ import annotations

from invoke import Context, Result

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
    res = _run(c, s, "agent_start")
    if res.exited != 0 or not running(c, s):
        why = res.stderr.strip() or "not running after start"
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
