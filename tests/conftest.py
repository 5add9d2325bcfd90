"""Fixtures: the real-service rig and invoke contexts bound to a simulated host."""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from invoke import Config, Context

from tests.rig.hosts import RIG_BIN, Rig, SimHost
from tests.rig.services import without_bash

REPO = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent / "clawdie-ops")


# The longest test files (seconds in one worker, measured on the 2-core machine) run first:
# the workers take files in the order collected, and one of these started last would run
# alone at the end while the other workers wait.
LONGEST_FIRST = ("test_migrate_faults", "test_migrate_delta", "test_migrate",
                 "test_zfs_replicate", "test_freebsd_like_host", "test_restore",
                 "test_migrate_pgmove", "test_restore_interrupts", "test_backup_errors",
                 "test_backup", "test_faults_sample", "test_trust")


def pytest_collection_modifyitems(items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).stem, len(rank))
               if "/integration/" in str(item.fspath) else len(rank))


@pytest.fixture(scope="session")
def rig():
    """The rig: zfs-fuse, PostgreSQL clusters and sshd per simulated host, torn down after.

    A missing service is an error with the reason, never a skip."""
    r = Rig(Path(tempfile.mkdtemp(prefix="clawdie-rig-", dir="/tmp")))
    r.setup()
    yield r
    r.teardown()


@pytest.fixture
def host(rig) -> SimHost:
    """A fresh, populated host for one test (about a second to build)."""
    h = rig.new_host()
    (h.home / "backups").mkdir(exist_ok=True)
    yield h
    rig.drop(h)


def context_for(h: SimHost, **extra) -> Context:
    cfg = h.clawdie_config()
    cfg.update(extra)
    return Context(config=Config(overrides={"clawdie": cfg}))


def cli(h: SimHost, *args: str, env: dict | None = None, check: bool = False,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the installed console script as an operator on host `h` would (where bash
    fails, as on FreeBSD, when the host is `no_bash`)."""
    e = h.proc_env()
    e.update(env or {})
    argv = [CLI, *args]
    if h.no_bash:
        argv = without_bash(argv, h.base.parent)
        # the rig's zfs wrapper runs zfs-fuse's mounts in the daemon's namespace
        e["PATH"] = f"{RIG_BIN}:{e['PATH']}"
    res = subprocess.run(argv, env=e, capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL, cwd=h.root if h.root.exists() else None)
    if check and res.returncode:
        raise AssertionError(f"clawdie-ops {' '.join(args)} exited {res.returncode}:\n"
                             f"{res.stdout}\n{res.stderr}")
    return res
