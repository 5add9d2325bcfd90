"""After a receive: which datasets replicate mounts, and the error when it cannot."""
from __future__ import annotations

import pytest
from invoke import Config, MockContext, Result

from clawdie_ops.config import settings as config
from clawdie_ops.errors import ZfsError
from clawdie_ops.zfs import mounts


def props(mounted: str, canmount: str = "on", mountpoint: str = "/mnt/x") -> str:
    return f"mounted\t{mounted}\ncanmount\t{canmount}\nmountpoint\t{mountpoint}\n"


@pytest.mark.parametrize("text,want", [
    (props("no"), True),
    (props("yes"), False),
    (props("no", canmount="noauto"), False),  # the operator's choice
    (props("no", canmount="off"), False),
    (props("no", mountpoint="none"), False),
    (props("no", mountpoint="legacy"), False),
])
def test_only_what_zfs_would_mount_itself_is_mounted(text, want):
    c = MockContext(run=Result(stdout=text))
    s = config.load(Config(overrides={"clawdie": {}}), require_env=False)
    assert mounts.should_mount(mounts.state(c, s, "tank/clawdie/jails/db")) is want


def test_a_mount_that_fails_names_the_dataset_its_mountpoint_and_what_to_do(tmp_path):
    s = config.load(Config(overrides={"clawdie": {}}), root=tmp_path, require_env=False)
    c = MockContext(run=[
        Result(stdout="tank/clawdie/jails/db\ntank/clawdie/jails/db/root\n"),  # zfs list -r
        Result(stdout=props("yes", mountpoint="/j/db")),
        Result(stdout=props("no", mountpoint="/j/db/root")),
        Result(stderr="cannot mount '/j/db/root': directory is not empty", exited=1),
        Result(stdout=props("no", mountpoint="/j/db/root")),
    ])
    with pytest.raises(ZfsError) as e:
        mounts.ensure_mounted(c, s, "tank/clawdie/jails/db", "newhost")
    msg, hint = e.value.message, e.value.hint
    assert "on newhost, tank/clawdie/jails/db/root was received but is not mounted" in msg
    assert "/j/db/root" in msg and "directory is not empty" in msg
    assert "zfs mount tank/clawdie/jails/db/root" in hint and "replicate again" in hint


def test_a_child_mounted_inside_an_unmounted_parent_is_unmounted_first_then_both_mounted(
        tmp_path):
    """The campaign's replicate-7: db/root stayed mounted in db's folder while db was not,
    so `zfs mount db` failed (the folder not empty)."""
    s = config.load(Config(overrides={"clawdie": {}}), root=tmp_path, require_env=False)
    ok = Result(stdout="")
    c = MockContext(run=[
        Result(stdout="tank/j/db\ntank/j/db/root\n"),
        Result(stdout=props("no", mountpoint="/j/db")),
        Result(stdout=props("yes", mountpoint="/j/db/root")),
        ok, ok,  # zfs unmount tank/j/db/root, rmdir of its empty mountpoint
        ok, Result(stdout=props("yes", mountpoint="/j/db")),  # zfs mount tank/j/db, state
        ok, Result(stdout=props("yes", mountpoint="/j/db/root")),  # and its root again
    ])
    assert mounts.ensure_mounted(c, s, "tank/j/db", "newhost") == ["tank/j/db"]
    ran = [str(call.args[0]) for call in c.run.call_args_list]
    acts = [r.split(" ", 1)[1] for r in ran if " get " not in r and " list " not in r]
    assert acts == ["unmount tank/j/db/root", "/j/db/root", "mount tank/j/db",
                    "mount tank/j/db/root"]


def test_a_mount_state_zfs_will_not_give_is_asked_again_then_an_error(tmp_path, monkeypatch):
    """The campaign's replicate-5: a `zfs get` that failed read as "nothing to mount", and
    a received jail root stayed unmounted after a replicate that reported success."""
    monkeypatch.setattr(mounts.time, "sleep", lambda s: None)
    s = config.load(Config(overrides={"clawdie": {}}), root=tmp_path, require_env=False)
    busy = Result(stderr="cannot open 'tank/j/git/root': dataset is busy", exited=1)
    c = MockContext(run=[Result(stdout="tank/j/git\ntank/j/git/root\n"),
                         Result(stdout=props("yes", mountpoint="/j/git")), busy, busy])
    with pytest.raises(ZfsError) as e:
        mounts.ensure_mounted(c, s, "tank/j/git", "newhost")
    assert "on newhost, could not read whether tank/j/git/root is mounted" in e.value.message
    assert "zfs mount tank/j/git/root" in e.value.hint
    # answered the second time: mounted as usual
    ok = Result(stdout="")
    c = MockContext(run=[Result(stdout="tank/j/git\ntank/j/git/root\n"),
                         Result(stdout=props("yes", mountpoint="/j/git")), busy,
                         Result(stdout=props("no", mountpoint="/j/git/root")),
                         ok, Result(stdout=props("yes", mountpoint="/j/git/root"))])
    assert mounts.ensure_mounted(c, s, "tank/j/git", "newhost") == ["tank/j/git/root"]
