"""The agent's start on the rig: a start command that never returns is cut off with a clear
error (`npm start` in the foreground), a detached one starts it and returns."""
from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from clawdie_ops.config import settings as config
from clawdie_ops.errors import AgentError
from clawdie_ops.hosts import agent
from tests.conftest import context_for
from tests.rig.hosts import FAKE_AGENT, linux_commands


def test_a_start_command_that_stays_in_the_foreground_is_cut_off_with_a_clear_error(host):
    cmds = linux_commands()
    cmds["agent_start"] = f"cd {{root}} && exec {sys.executable} {FAKE_AGENT} {{root}}"
    c = context_for(host, commands=cmds, agent_start_timeout=3)
    s = config.load(c.config, root=host.root)
    started = time.monotonic()
    try:
        with pytest.raises(AgentError) as err:
            agent.start(c, s)
        assert time.monotonic() - started < 30
        assert "did not return within 3 s" in err.value.message
        assert "daemon -f npm start" in err.value.hint and str(FAKE_AGENT) in err.value.hint
    finally:
        pidfile = host.root / "store" / "clawdie.pid"
        if host.agent_running():
            os.kill(int(pidfile.read_text()), signal.SIGTERM)


def test_a_detached_start_returns_once_the_agent_runs(host):
    c = context_for(host, agent_start_timeout=30)
    s = config.load(c.config, root=host.root)
    agent.start(c, s)
    try:
        assert host.agent_running()
    finally:
        assert agent.stop(c, s) and not host.agent_running()


def test_agent_start_timeout_must_be_seconds(host):
    c = context_for(host, agent_start_timeout="soon")
    with pytest.raises(Exception, match="agent_start_timeout 'soon' is not a number"):
        config.load(c.config, root=host.root)
