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
