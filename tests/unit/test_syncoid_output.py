"""syncoid's output as 2.1 (Debian 12, recorded on the rig) and 2.3 (FreeBSD) print it."""
from __future__ import annotations

from pathlib import Path

import pytest

from clawdie_ops.zfs import syncoid

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "syncoid"
VERSIONS = ("2.1.0", "2.3.0")


def sample(version: str, name: str) -> syncoid.SyncReport:
    return syncoid.parse_output((SAMPLES / f"{version}-{name}.txt").read_text())


@pytest.mark.parametrize("version", VERSIONS)
def test_a_recursive_full_send_counts_the_jail_and_its_root(version):
    report = sample(version, "full")
    assert [t.kind for t in report.transfers] == ["full", "full"]
    assert report.transfers[1].what.startswith("zsrc/clawdie/jails/db/root@syncoid_")
    assert (report.kind, report.method, report.bytes) == ("full", "pv", 13640 + 282744)
    assert not report.errors and not report.refused_existing
    if version == "2.3.0":  # 2.3 names the target and gives the estimate after it
        assert report.transfers[1].target == "root@192.0.2.20:zdst/clawdie/jails/db/root"
        assert report.transfers[1].estimate == 276 * 1024


@pytest.mark.parametrize("version", VERSIONS)
def test_an_incremental_counts_only_the_increment(version):
    report = sample(version, "incremental")
    assert [t.kind for t in report.transfers] == ["incremental", "incremental"]
    assert (report.kind, report.bytes) == ("incremental", 1560 + 64560)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_resumed_receive_is_recognised_whether_prefixed_or_not(version):
    report = sample(version, "resume")
    assert [t.kind for t in report.transfers] == ["resumed", "incremental"]
    assert report.transfers[0].what == "zsrc/clawdie/jails/db/root"
    assert report.transfers[0].estimate == int(2.9 * 1024 ** 2)
    assert (report.kind, report.bytes) == ("resumed", 3031040 + 64560)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_refused_target_is_an_error_and_the_warnings_are_kept(version):
    report = sample(version, "diverged")
    assert report.refused_existing and report.errors
    assert report.errors[0].startswith("CRITICAL ERROR:")
    # WARN: (2.1) and WARNING: (2.3) are both warnings, without their prefix
    assert len(report.warnings) == 1 and not report.warnings[0].startswith(("WARN", ":"))
    # -r went on to the child after refusing the parent: why replicate sets a diverged
    # target aside before syncoid runs, instead of relying on syncoid to stop
    assert report.transfers[-1].what.startswith("zsrc/clawdie/jails/db/root@")


def test_the_version_is_read_from_syncoid_itself():
    assert syncoid.parse_version("/usr/sbin/syncoid version 2.1.0\n(Getopt::Long...)") == \
        (2, 1, 0)
    assert syncoid.parse_version("/usr/local/bin/syncoid version 2.3.0") == (2, 3, 0)
    assert syncoid.parse_version("syncoid: not found") is None
