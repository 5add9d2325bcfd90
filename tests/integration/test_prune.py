"""prune on the rig: archives written by `backup` under faketime on 08, 15, 22, 29 Nov and
06 Dec, where sorting the names as text (the runbook's cron line) puts 06 Dec first."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from clawdie_ops import locks
from tests import archive_kit
from tests.conftest import CLI, cli
from tests.helpers import set_config

DATES = ["2026-11-08", "2026-11-15", "2026-11-22", "2026-11-29", "2026-12-06"]
NAMES = ["clawdie-backup-08.nov.2026-0200.tar.zst", "clawdie-backup-15.nov.2026-0200.tar.zst",
         "clawdie-backup-22.nov.2026-0200.tar.zst", "clawdie-backup-29.nov.2026-0200.tar.zst",
         "clawdie-backup-06.dec.2026-0200.tar.zst"]


@pytest.fixture(scope="module")
def weekly(rig, tmp_path_factory):
    """Five weekly backups of one host, each made with the clock set to its Sunday 02:00."""
    h = rig.new_host()
    store = tmp_path_factory.mktemp("weekly")
    for day in DATES:
        res = subprocess.run(["faketime", f"{day} 02:00:00", CLI, "backup", "--no-snapshot",
                              "--output", str(store), "--json"], env=h.proc_env(),
                             capture_output=True, text=True, timeout=300, cwd=h.root)
        assert res.returncode == 0, res.stderr
    yield h, store
    rig.drop(h)


@pytest.fixture
def backups(weekly, tmp_path):
    """A fresh copy of the five archives for one test, the host's backup_dir pointed at it."""
    h, store = weekly
    d = tmp_path / "backups"
    shutil.copytree(store, d)
    set_config(h, backup_dir=str(d), retention={})
    return h, d


def prune(h, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    res = cli(h, "prune", "--json", *args)
    return res, json.loads(res.stdout) if res.stdout.strip() else {}


def by_name(report: dict) -> dict[str, dict]:
    return {a["name"]: a for a in report["archives"]}


def test_backups_under_faketime_carry_their_dates(backups):
    _, d = backups
    assert sorted(p.name for p in d.iterdir()) == sorted(NAMES)
    # the runbook's `sort | head -n -4` would delete the one just written
    assert sorted(NAMES)[:-4] == ["clawdie-backup-06.dec.2026-0200.tar.zst"]


def test_prune_keeps_the_newest_across_a_month_boundary(backups):
    h, d = backups
    res, dry = prune(h, "--dry-run")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in d.iterdir()) == sorted(NAMES), "a dry run removes nothing"
    verdicts = by_name(dry)
    assert [a["name"] for a in dry["archives"]] == NAMES[::-1], "newest first, by manifest"
    assert {n for n, a in verdicts.items() if a["action"] == "remove"} == {NAMES[0]}
    assert all(a["time_from"] == "manifest" for a in dry["archives"])
    assert verdicts[NAMES[4]]["reasons"] == ["last 4 (#1)", "newest that verifies"]
    assert verdicts[NAMES[1]]["reasons"] == ["last 4 (#4)"]
    assert dry["policy"] == {"last": 4, "daily": 0, "weekly": 0, "monthly": 0}

    res, done = prune(h)
    assert res.returncode == 0, res.stderr
    assert done["removed"] == [NAMES[0]]
    assert sorted(p.name for p in d.iterdir()) == sorted(NAMES[1:])


def test_prune_dry_run_names_the_rule_for_each_kept_archive(backups):
    h, d = backups
    res = cli(h, "prune", "--dry-run", "--keep-last", "1", "--keep-monthly", "2")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "would remove" in out and "3 would remove, 2 kept" in " ".join(out.split())
    line_dec = next(ln for ln in out.splitlines() if ln.startswith(NAMES[4]))
    assert "last 1 (#1)" in line_dec and "monthly 2026-12" in line_dec
    line_29 = next(ln for ln in out.splitlines() if ln.startswith(NAMES[3]))
    assert "monthly 2026-11" in line_29
    assert sorted(p.name for p in d.iterdir()) == sorted(NAMES)


def test_prune_ages_come_from_the_manifest_not_the_name(backups):
    """The 08 Nov archive renamed to look like the newest one still goes first."""
    h, d = backups
    liar = d / "clawdie-backup-31.dec.2026-2359.tar.zst"
    (d / NAMES[0]).rename(liar)
    res, done = prune(h, "--keep-last", "4")
    assert res.returncode == 0, res.stderr
    assert done["removed"] == [liar.name]
    assert by_name(done)[liar.name]["timestamp"].startswith("2026-11-08")


def test_prune_weekly_and_retention_from_config(backups):
    h, d = backups
    set_config(h, backup_dir=str(d), retention={"weekly": 2})
    res, done = prune(h)
    assert res.returncode == 0, res.stderr
    assert done["policy"] == {"last": 0, "daily": 0, "weekly": 2, "monthly": 0}
    assert sorted(done["removed"]) == sorted(NAMES[:3])
    assert by_name(done)[NAMES[3]]["reasons"] == ["weekly 2026-W48"]


def test_prune_never_removes_the_newest_archive_that_verifies(backups):
    """The newest archive's messages.db was changed after the backup: its manifest reads,
    verification fails. keep-last 1 keeps it, and 29 Nov as the newest that verifies."""
    h, d = backups
    newest = d / NAMES[4]
    gz = NAMES[4].replace(".tar.zst", ".tar.gz")  # archive_kit writes gzip
    archive_kit.repack(newest, d / gz,
                       archive_kit.edit_member("messages.db", lambda b: b[:-1] + b"X"),
                       sign=False)
    newest.unlink()
    res, done = prune(h, "--keep-last", "1")
    assert res.returncode == 0, res.stderr
    v = by_name(done)
    assert v[gz]["reasons"] == ["last 1 (#1)"]
    assert v[NAMES[3]]["reasons"] == ["newest that verifies"]
    assert [x["verified"] for x in done["verified"]] == [False, True]
    assert sorted(done["removed"]) == sorted(NAMES[:3])


def test_prune_leaves_damaged_partial_and_foreign_files_and_sweeps_stale_partials(backups):
    h, d = backups
    archive_kit.cut_tail(d / NAMES[2], d / NAMES[2])  # an archive cut short: no manifest
    old = time.time() - 3 * 86400
    fresh_partial = d / ".clawdie-backup-07.dec.2026-0200.tar.zst.partial"
    fresh_partial.write_bytes(b"being written")
    stale_partial = d / ".clawdie-backup-01.nov.2026-0200.tar.zst.partial"
    stale_partial.write_bytes(b"left by a killed backup")
    stale_copy = d / "clawdie-backup-02.nov.2026-0200.tar.zst.partial"
    stale_copy.write_bytes(b"an interrupted copy")
    spool = d / ".clawdie-backup-spool-abcd"
    spool.mkdir()
    (spool / "memory_db.sql").write_text("-- dump")
    for p in (stale_partial, stale_copy, spool / "memory_db.sql", spool):
        os.utime(p, (old, old))
    foreign = [d / "notes.txt", d / "clawdie-backup-keep-me.tar.zst",
               d / "clawdie-backup-99.nov.2026-0200.tar.zst"]
    for p in foreign:
        p.write_text("not an archive of ours")
    (d / "clawdie-backup-01.jan.2027-0000.tar.zst").symlink_to(d / NAMES[4])

    # While a backup holds the folder's lock (it may be writing the fresh partial), prune
    # waits its turn: refused here, naming the holder, and nothing is touched.
    before = sorted(p.name for p in d.iterdir())
    with locks.hold(locks.backup_dir(h.state_dir, d)):
        res = cli(h, "prune", "--keep-last", "1")
    assert res.returncode == 75 and "busy" in res.stderr and "Traceback" not in res.stderr
    assert sorted(p.name for p in d.iterdir()) == before

    # Holding the lock itself, prune knows no backup writes here: every partial is a
    # killed run's, the fresh one too, and is swept.
    res, done = prune(h, "--keep-last", "1")
    assert res.returncode == 0, res.stderr
    assert sorted(done["swept"]) == sorted([stale_partial.name, stale_copy.name, spool.name,
                                            fresh_partial.name])
    left = {x["name"]: x["why"] for x in done["left_alone"]}
    assert left[NAMES[2]].startswith("unreadable")
    assert sorted(done["removed"]) == sorted([NAMES[0], NAMES[1], NAMES[3]])
    present = {p.name for p in d.iterdir()}
    assert {NAMES[2], NAMES[4], "clawdie-backup-01.jan.2027-0000.tar.zst"
            } | {p.name for p in foreign} == present


def test_prune_refuses_a_policy_that_keeps_nothing(backups):
    h, d = backups
    res = cli(h, "prune", "--keep-last", "0")
    assert res.returncode == 1
    assert "keeps nothing" in res.stderr and "Traceback" not in res.stderr
    assert sorted(p.name for p in d.iterdir()) == sorted(NAMES)
    res = cli(h, "prune", "--output", str(d / "nope"))
    assert res.returncode == 1 and "backup directory not found" in res.stderr
