"""fleet on the rig: two hosts with sshd, each running its own clawdie-ops through Fabric;
one of them made to fail, which must not stop the other."""
from __future__ import annotations

import json

import pytest

from tests.conftest import cli
from tests.helpers import set_config


@pytest.fixture(scope="module")
def fleet_hosts(rig):
    """Two populated hosts; the operator (on the first) lists both by ssh alias, the second
    with an override that breaks its backups (an output directory that does not exist)."""
    good = rig.new_host(ssh=True)
    bad = rig.new_host(ssh=True)
    for h in (good, bad):
        (h.home / "backups").mkdir(exist_ok=True)
    set_config(good, ssh_config=str(rig.ssh_config),
               hosts={"good": {"ssh": good.alias,
                               "overrides": {"backup_dir": str(good.home / "backups")}},
                      "bad": {"ssh": bad.alias,
                              "overrides": {"backup_dir": str(bad.home / "gone")}}},
               groups={"all": ["good", "bad"]})
    yield good, bad
    rig.drop(bad)
    rig.drop(good)


def test_fleet_backup_one_host_failing_does_not_stop_the_other(fleet_hosts):
    good, bad = fleet_hosts
    res = cli(good, "fleet", "backup", "--hosts", "good,bad", "--args=--no-snapshot")
    assert res.returncode == 2, res.stderr
    lines = res.stdout.splitlines()
    good_line = next(ln for ln in lines if ln.startswith("good "))
    bad_line = next(ln for ln in lines if ln.startswith("bad "))
    assert " ok " in good_line and ".tar.zst" in good_line
    assert "FAILED" in bad_line and f"output directory does not exist: {bad.home / 'gone'}" \
        in bad_line and "bad (" in bad_line
    assert len(list((good.home / "backups").glob("clawdie-backup-*.tar.zst"))) == 1
    assert not (bad.home / "gone").exists()
    assert not list((bad.home / "backups").iterdir())


def test_fleet_json_by_group_and_doctor_statuses(fleet_hosts):
    good, bad = fleet_hosts
    res = cli(good, "fleet", "backup", "--group", "all", "--json", "--args=--no-snapshot")
    assert res.returncode == 2
    doc = json.loads(res.stdout)
    by = {r["host"]: r for r in doc["hosts"]}
    assert [r["host"] for r in doc["hosts"]] == ["good", "bad"]
    assert doc["failed"] == ["bad"] and doc["ok"] == ["good"]
    assert by["good"]["result"]["archive"].startswith(str(good.home / "backups"))
    assert by["bad"]["exit_code"] == 1 and "create it, or pass another with --output" in \
        by["bad"]["hint"]

    res = cli(good, "fleet", "doctor", "--hosts", "good,bad", "--json")
    doc = json.loads(res.stdout)
    # the rig's jails have no snapshots: doctor reports, it does not fail to run
    assert all(r["exit_code"] in (1, 2) and r["result"]["checks"] for r in doc["hosts"])
    assert res.returncode == max(r["exit_code"] for r in doc["hosts"])


def test_fleet_prune_dry_run_and_drill(fleet_hosts):
    good, bad = fleet_hosts
    assert cli(good, "backup", "--no-snapshot").returncode == 0
    res = cli(good, "fleet", "prune", "--hosts", "good", "--dry-run", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    run = json.loads(res.stdout)["hosts"][0]
    assert run["result"]["dry_run"] is True and run["summary"].startswith("removed 0")
    res = cli(good, "fleet", "drill", "--hosts", "good", "--json", timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    run = json.loads(res.stdout)["hosts"][0]
    assert run["status"] == "ok" and run["result"]["ok"] is True


def test_fleet_errors_are_clear(fleet_hosts):
    good, _ = fleet_hosts
    res = cli(good, "fleet", "backup")
    assert res.returncode == 1 and "--hosts a,b,c or --group NAME" in res.stderr
    res = cli(good, "fleet", "restore", "--hosts", "good")
    assert res.returncode == 1 and "fleet runs backup, drill, doctor, prune" in res.stderr
    res = cli(good, "fleet", "doctor", "--group", "nope")
    assert res.returncode == 1 and "no group 'nope' in clawdie.groups (known: all)" in res.stderr
