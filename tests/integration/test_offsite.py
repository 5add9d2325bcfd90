"""Offsite copies on the rig: a second host with sshd receives archives in its backup_dir
(migrate's resumable, sha256-checked SFTP copy), and `prune --host` applies the retention
there over the same Fabric connection."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import cli
from tests.helpers import set_config


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pair(rig):
    """The operator's host (populated) and an offsite box (sshd, no Clawdie, no database
    roles), listed in the operator's inventory with its backup_dir."""
    here = rig.new_host(ssh=True)
    box = rig.new_host(ssh=True, populated=False, datasets=False, with_roles=False)
    (here.home / "backups").mkdir(exist_ok=True)
    (box.home / "offsite").mkdir(mode=0o700)
    set_config(here, ssh_config=str(rig.ssh_config),
               hosts={"box": {"ssh": box.alias,
                              "overrides": {"backup_dir": str(box.home / "offsite")}}})
    yield here, box
    rig.drop(box)
    rig.drop(here)


@pytest.fixture
def offsite(pair):
    here, box = pair
    for d in (here.home / "backups", box.home / "offsite"):
        for p in d.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    return here, box, box.home / "offsite"


def test_backup_copy_to_sends_the_archive_checked_on_arrival(offsite):
    here, box, there = offsite
    res = cli(here, "backup", "--no-snapshot", "--copy-to", "box", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert f"-> box:{there}/clawdie-backup-" in res.stdout and "sha256sum" in res.stdout
    assert not list(there.iterdir()) and not list((here.home / "backups").iterdir())
    res = cli(here, "backup", "--no-snapshot", "--copy-to", "box", "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    local = Path(summary["archive"])
    remote = there / local.name
    assert sorted(p.name for p in there.iterdir()) == [local.name], "no .partial left"
    assert sha256(remote) == sha256(local) == summary["copy"]["sha256"]
    assert summary["copy"]["path"] == str(remote) and summary["copy"]["attempts"] == 1
    assert oct(remote.stat().st_mode & 0o777) == "0o600"


def test_copy_resumes_a_partial_and_replaces_a_damaged_one(offsite):
    here, box, there = offsite
    assert cli(here, "backup", "--no-snapshot").returncode == 0
    local = next((here.home / "backups").glob("clawdie-backup-*"))
    res = cli(here, "copy", str(local), "--to", "box", "--dry-run")
    assert res.returncode == 0 and f"as {there / local.name}.partial" in res.stdout
    assert not list(there.iterdir()), "a dry run sends nothing"
    data = local.read_bytes()
    half = len(data) // 2
    (there / f"{local.name}.partial").write_bytes(data[:half])
    res = cli(here, "copy", str(local), "--to", "box", "--json")
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)
    assert r["resumed_from"] == [half] and r["bytes_sent"] == len(data) - half
    assert sha256(there / local.name) == sha256(local)

    res = cli(here, "copy", str(local), "--to", "box", "--json")
    assert json.loads(res.stdout)["already_there"] is True

    (there / local.name).unlink()
    (there / f"{local.name}.partial").write_bytes(b"\0" * half)  # a bad sector's worth
    res = cli(here, "copy", str(local), "--to", "box", "--json", "--retries", "3")
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)
    assert r["attempts"] == 2 and "sha256 on arrival" in r["errors"][0]
    assert sha256(there / local.name) == sha256(local)
    assert not (there / f"{local.name}.partial").exists()


def test_prune_host_applies_the_retention_offsite(offsite):
    here, box, there = offsite
    for _ in range(3):
        res = cli(here, "backup", "--no-snapshot", "--copy-to", "box")
        assert res.returncode == 0, res.stderr
    names = sorted(p.name for p in there.iterdir())
    assert len(names) == 3
    (there / "notes.txt").write_text("the box's own file")

    res = cli(here, "prune", "--host", "box", "--keep-last", "1", "--dry-run", "--json")
    assert res.returncode == 0, res.stderr
    dry = json.loads(res.stdout)
    assert dry["host"] == "box" and dry["directory"] == str(there)
    assert len(list(there.iterdir())) == 4, "a dry run removes nothing"

    res = cli(here, "prune", "--host", "box", "--keep-last", "1", "--json")
    assert res.returncode == 0, res.stderr
    done = json.loads(res.stdout)
    kept = [a for a in done["archives"] if a["action"] == "keep"]
    assert len(kept) == 1 and kept[0]["time_from"] == "manifest"
    assert kept[0]["reasons"] == ["last 1 (#1)", "newest that verifies"]
    newest = max(done["archives"], key=lambda a: a["timestamp"])
    assert kept[0]["name"] == newest["name"]
    assert sorted(p.name for p in there.iterdir()) == sorted([newest["name"], "notes.txt"])
    assert len(list((here.home / "backups").iterdir())) == 3, "the local copies are untouched"


def test_copy_errors_name_the_host_and_the_setting(offsite, pair):
    here, box, there = offsite
    assert cli(here, "backup", "--no-snapshot").returncode == 0
    local = next((here.home / "backups").glob("clawdie-backup-*"))
    res = cli(here, "copy", str(local), "--to", "nowhere")
    assert res.returncode == 1 and "nowhere is not in clawdie.hosts (known: box)" in res.stderr
    res = cli(here, "backup", "--no-snapshot", "--copy-to", "nowhere")
    assert res.returncode == 1 and len(list((here.home / "backups").iterdir())) == 1, \
        "a wrong --copy-to stops before the backup"
    (there).rename(there.with_name("moved"))
    try:
        res = cli(here, "copy", str(local), "--to", "box")
        assert res.returncode == 1 and "Traceback" not in res.stderr
        assert f"backup directory {there} not found on box" in res.stderr
    finally:
        there.with_name("moved").rename(there)
