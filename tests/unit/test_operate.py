"""Decisions of prune, schedule and monitoring, without a server: retention verdicts, crontab
text, ping URLs and metrics."""
from __future__ import annotations

from datetime import datetime

import pytest

from clawdie_ops.actions import prune, schedule
from clawdie_ops.errors import ConfigError
from clawdie_ops.monitoring import _with_suffix, job_metrics, ping_url_for


def archive(day: str, name: str | None = None) -> prune.Archive:
    when = datetime.fromisoformat(f"{day}T02:00:00+00:00")
    return prune.Archive(name or f"a-{day}", 1, when, "manifest")


def test_decide_keep_last_ignores_name_order():
    # names that sort the wrong way: the newest is "a" here
    arcs = [archive("2026-12-06", "a"), archive("2026-11-08", "z"), archive("2026-11-15", "y"),
            archive("2026-11-22", "x"), archive("2026-11-29", "w")]
    v = {x.archive.name: x for x in prune.decide(arcs, {"last": 4}, "a")}
    assert not v["z"].keep and all(v[n].keep for n in "awxy")
    assert v["a"].reasons == ["last 4 (#1)", "newest that verifies"]


def test_decide_buckets_take_the_newest_of_each_period():
    arcs = [archive("2026-11-30"), archive("2026-11-29"), archive("2026-11-02"),
            archive("2026-10-31"), archive("2026-10-01")]
    v = {x.archive.name: x for x in prune.decide(arcs, {"monthly": 2}, None)}
    assert [n for n, x in v.items() if x.keep] == ["a-2026-11-30", "a-2026-10-31"]
    v = {x.archive.name: x for x in prune.decide(arcs, {"daily": 3, "weekly": 1}, None)}
    assert v["a-2026-11-30"].reasons == ["daily 2026-11-30", "weekly 2026-W49"]
    assert v["a-2026-11-02"].reasons == ["daily 2026-11-02"]
    assert not v["a-2026-10-31"].keep


def test_decide_keeps_the_newest_verified_even_when_no_rule_would():
    arcs = [archive("2026-12-06"), archive("2026-11-29"), archive("2026-11-22")]
    v = prune.decide(arcs, {"last": 1}, "a-2026-11-22")
    assert [(x.archive.name, x.keep) for x in v] == [
        ("a-2026-12-06", True), ("a-2026-11-29", False), ("a-2026-11-22", True)]


def test_policy_defaults_config_and_flags():
    assert prune.policy_from({}) == {"last": 4, "daily": 0, "weekly": 0, "monthly": 0}
    assert prune.policy_from({"last": None, "daily": 7}) == {"last": 0, "daily": 7,
                                                             "weekly": 0, "monthly": 0}
    assert prune.policy_from({"daily": 7}, last="2")["last"] == 2
    with pytest.raises(ConfigError, match="keeps nothing"):
        prune.policy_from({}, last=0)
    with pytest.raises(ConfigError, match="whole number"):
        prune.policy_from({}, weekly="-1")
    with pytest.raises(ConfigError, match="unknown key"):
        prune.policy_from({"yearly": 3})


def test_partial_names():
    assert prune._partial(".clawdie-backup-06.dec.2026-0200.tar.zst.partial")
    assert prune._partial("clawdie-backup-06.dec.2026-0200.tar.zst.partial")
    assert prune._partial(".clawdie-backup-spool-x1y2")
    assert not prune._partial("clawdie-backup-06.dec.2026-0200.tar.zst")
    assert not prune._partial("my.partial")


JOBS = [schedule.Job("backup", "clawdie", "0 2 * * 0", "clawdie-ops backup"),
        schedule.Job("drill", "clawdie", "30 4 * * *", "clawdie-ops drill --latest /b")]


def test_crontab_install_is_idempotent_and_remove_keeps_the_rest():
    mine = "MAILTO=me\n5 5 * * * echo hi\n"
    once = schedule.installed(mine, JOBS)
    assert once == mine + "0 2 * * 0 clawdie-ops backup # clawdie-ops:backup\n" \
                          "30 4 * * * clawdie-ops drill --latest /b # clawdie-ops:drill\n"
    assert schedule.installed(once, JOBS) == once
    assert schedule.removed(once) == mine
    assert schedule.removed(schedule.installed("", JOBS)) == ""


def test_crontab_pause_and_resume_round_trip():
    tab = schedule.installed("5 5 * * * echo hi\n0 1 * * * syncoid a b\n# backup notes\n", JOBS)
    paused = schedule.paused(tab)
    assert "#clawdie-paused# 0 1 * * * syncoid a b" in paused
    assert "\n5 5 * * * echo hi" in "\n" + paused and "\n# backup notes" in paused
    assert schedule.paused(paused) == paused
    assert schedule.resumed(paused) == tab


def test_cron_percent_is_escaped():
    job = schedule.Job("x", "u", "@daily", "date +%F")
    assert job.line == "@daily date +\\%F # clawdie-ops:x"


def test_ping_urls():
    assert _with_suffix("https://hc.example/ping/abc", "/start", "r1") == \
        "https://hc.example/ping/abc/start?rid=r1"
    assert _with_suffix("https://kuma.example/api/push/t?status=up", "/fail", "r") == \
        "https://kuma.example/api/push/t/fail?status=up&rid=r"
    assert ping_url_for({"ping_url": {"drill": "u"}}, "backup") == ""
    assert ping_url_for({"ping_url": "u"}, "prune") == "u"


def test_job_metrics_for_a_backup():
    m = job_metrics("backup", True, 100.0, {"size": 5, "duration_s": 2.5, "archives_in_dir": 3,
                                           "tables": {"messages.db": {"chats": 7}}})
    assert m["clawdie_backup_table_rows"][1] == [({"item": "messages.db", "table": "chats"}, 7)]
    assert m["clawdie_backup_archives"][1] == [({}, 3.0)]
    assert job_metrics("drill", False, 9.0, None) == {
        "clawdie_drill_last_failure_timestamp_seconds":
            ("Unix time the last failed drill ended", [({}, 9.0)])}


def test_a_locked_store_sweeps_its_own_partials_at_once(tmp_path):
    """Holding the backup folder's lock, no backup can be writing: a fresh .partial and
    spool are left-overs; a copy's partial (no leading dot) still waits for its age."""
    (tmp_path / ".clawdie-backup-06.dec.2026-0200.tar.zst.partial").write_bytes(b"x")
    (tmp_path / ".clawdie-backup-spool-ab").mkdir()
    (tmp_path / "clawdie-backup-06.dec.2026-0200.tar.zst.partial").write_bytes(b"x")
    held = []

    class Lock:
        def __enter__(self):
            held.append(True)

        def __exit__(self, *exc):
            held.append(False)

    unlocked = prune.run(prune.LocalStore(tmp_path), {"last": 1}, dry_run=True)
    assert unlocked["stale_partials"] == []
    locked = prune.run(prune.LocalStore(tmp_path, lock=Lock), {"last": 1})
    assert held == [True, False]
    assert sorted(locked["swept"]) == [".clawdie-backup-06.dec.2026-0200.tar.zst.partial",
                                       ".clawdie-backup-spool-ab"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "clawdie-backup-06.dec.2026-0200.tar.zst.partial"]
