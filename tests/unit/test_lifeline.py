"""A command the tool runs here dies with it, even when the tool is killed outright."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import wait_until

# the tool's own runner (tasks' config), one argv command that outlives any test
SCRIPT = """
from invoke import Config, Context
from clawdie_ops import runner
from clawdie_ops.lifeline import LocalRunner
c = Context(Config(overrides={"runners": {"local": LocalRunner}}))
runner.run(c, ["sleep", "41.5"])
"""


def _sleepers() -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", b"41.5"]:
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def test_an_argv_command_dies_with_a_tool_killed_outright():
    """The campaign's migrate-3: `sh -c CMD` forked CMD, and only the shell had the
    parent-death signal; the old host's replicate ran on after the tool's SIGKILL."""
    tool = subprocess.Popen([sys.executable, "-c", SCRIPT])
    try:
        wait_until(lambda: bool(_sleepers()), 20, "the command to start")
        (pid,) = _sleepers()
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert parent == tool.pid  # exec'd: the command is the tool's own child
        os.kill(tool.pid, signal.SIGKILL)
        tool.wait()
        deadline = time.monotonic() + 5
        while _sleepers() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _sleepers() == []
    finally:
        for pid in _sleepers():
            os.kill(pid, signal.SIGKILL)
        tool.kill()
