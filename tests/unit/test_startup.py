"""What a command imports before it runs: --version without the task collection, backup's
ZFS checks in one listing (no timings asserted; BENCHMARKS.md has them)."""
from __future__ import annotations

import subprocess
import sys

from invoke import MockContext, Result

from clawdie_ops import __version__
from clawdie_ops.config import settings as config
from clawdie_ops.zfs import commands as zfs

PROBE = ("import sys; sys.argv = ['clawdie-ops'] + sys.argv[1:]; import clawdie_ops.cli as c\n"
         "try: c.program.run()\n"
         "finally: print(sorted(m for m in ('invoke', 'clawdie_ops.tasks', 'psycopg', "
         "'fabric', 'paramiko') if m in sys.modules))")


def _cli(*args: str) -> list[str]:
    res = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().splitlines()


def test_version_answers_without_importing_invoke_or_the_tasks():
    for flag in ("--version", "-V"):
        assert _cli(flag) == [f"clawdie-ops {__version__}", "[]"]


def test_other_commands_still_go_through_invoke_and_import_no_remote_library():
    out = _cli("--list")
    assert "backup" in "\n".join(out) and "migrate" in "\n".join(out)
    loaded = out[-1]
    assert "'invoke'" in loaded and "'clawdie_ops.tasks'" in loaded
    # listing the tasks needs neither PostgreSQL's driver nor SSH
    assert "psycopg" not in loaded and "fabric" not in loaded and "paramiko" not in loaded


def test_version_with_a_task_is_invokes_to_parse():
    # only the bare flag takes the short way; anything else is invoke's (here: its help)
    out = _cli("--version", "backup")
    assert out[0] == f"clawdie-ops {__version__}"


def _settings(tmp_path):
    return config.load({"clawdie": {"root": str(tmp_path)}}, require_env=False)


def test_require_asks_zfs_only_about_datasets_the_listing_lacks(tmp_path):
    s = _settings(tmp_path)
    listed = ["zroot/clawdie/jails", "zroot/clawdie/jails/db", "zroot/clawdie/jails/db/root"]
    # Any `zfs list` run would raise NotImplementedError in this MockContext.
    zfs.require(MockContext(), s, ["zroot/clawdie/jails", "zroot/clawdie/jails/db"], listed)
    c = MockContext(run={"zfs list -H -o name zroot/clawdie/jails/git": Result("", exited=1)})
    try:
        zfs.require(c, s, ["zroot/clawdie/jails/db", "zroot/clawdie/jails/git"], listed)
    except Exception as exc:  # noqa: BLE001 -- the error's kind and text are the point
        assert "zroot/clawdie/jails/git" in str(getattr(exc, "message", exc))
    else:
        raise AssertionError("a dataset missing from the listing and from zfs was accepted")


def test_descendants_come_from_one_listing_parents_first():
    names = ["zroot/j", "zroot/j/db/root", "zroot/j/db", "zroot/j/dbx", "zroot/j/git"]
    assert zfs.descendants_in(names, "zroot/j/db") == ["zroot/j/db", "zroot/j/db/root"]
    c = MockContext(run={"zfs list -H -o name -r zroot/j/db":
                         Result("zroot/j/db\nzroot/j/db/root\nzroot/j/db/root@s1\n")})
    s = config.load({"clawdie": {"zfs": "zfs"}}, require_env=False)
    assert zfs.descendants(c, s, "zroot/j/db") == ["zroot/j/db", "zroot/j/db/root"]
