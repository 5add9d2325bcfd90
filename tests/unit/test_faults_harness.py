"""The fault campaign's own logic, without the rig: seeded plans, lanes, state comparisons,
and the secret scan that decides whether a leftover leaks."""
from __future__ import annotations

import os
import time
from dataclasses import asdict

from faults import campaign, report, state
from faults.scenarios import SCENARIOS


def test_a_case_is_the_same_whatever_ran_before_it():
    a = campaign.plan(7, 40, list(SCENARIOS))
    b = campaign.plan(7, 40, list(SCENARIOS))
    assert a == b
    again = campaign.make_case(7, a[5].command, int(a[5].name.rsplit("-", 1)[1]))
    assert again == a[5]
    assert campaign.plan(8, 40, list(SCENARIOS)) != a


def test_plan_shares_the_count_out_and_every_fault_fits_its_command():
    cases = campaign.plan(1129, 200, list(SCENARIOS))
    assert len(cases) == 200
    assert {c.command for c in cases} == set(SCENARIOS)
    for c in cases:
        assert c.kind in SCENARIOS[c.command].faults
        assert c.step in SCENARIOS[c.command].faults[c.kind]
        assert 0 < c.frac < 1 and 0 <= c.delay <= 0.3
    kinds = {(c.command, c.kind) for c in cases}
    # 200 faults reach every kind of every command but migrate's rarest
    assert len(kinds) >= sum(len(s.faults) for s in SCENARIOS.values()) - 3


def _outcome(case, injected, error=""):
    return campaign.Outcome(asdict(case), injected=injected, harness_error=error)


def test_a_missed_case_is_retried_earlier_then_replaced_until_the_share_is_injected():
    q = campaign.WorkQueue(7, {"backup": 2})
    first = q.take()
    assert first.name == "backup-1"
    q.done(first, _outcome(first, injected=False))
    retry = q.take()
    # the same fault, at an earlier moment, named so that --case reruns it exactly
    assert retry.name == "backup-1r1" and retry.kind == first.kind and retry.attempt == 1
    assert retry == campaign.make_case(7, *campaign.parse_name("backup-1r1"))
    assert retry.step == "" and retry.frac <= 0.95 / 2
    q.done(retry, _outcome(retry, injected=False))
    again = q.take()
    assert again.name == "backup-1r2" and again.frac <= 0.95 / 4
    q.done(again, _outcome(again, injected=False))
    nxt = q.take()
    assert nxt.name == "backup-2"  # after RETRIES the case is replaced
    q.done(nxt, _outcome(nxt, injected=True))
    last = q.take()
    q.done(last, _outcome(last, injected=True))
    assert q.take() is None and q.injected == {"backup": 2}


def test_a_step_only_fault_is_retried_at_its_step_without_delay():
    k = next(k for k in range(1, 200)
             if campaign.make_case(3, "replicate", k).kind == "zfs-recv-kill")
    retry = campaign.make_case(3, "replicate", k, 1)
    assert retry.step == "zfs-recv" and retry.delay == 0.0


def test_lanes_share_one_queue_but_never_run_one_command_twice_at_once():
    q = campaign.WorkQueue(1, {"backup": 3, "restore": 3, "migrate": 1})
    taken = [q.take() for _ in range(3)]
    assert sorted(c.command for c in taken) == ["backup", "migrate", "restore"]
    # every command is busy: a fourth lane waits; one done frees its command for anyone
    q.done(taken[0], _outcome(taken[0], injected=False))
    nxt = q.take()
    assert nxt.command == taken[0].command and nxt.attempt == 1


def test_a_command_given_up_hands_its_faults_on():
    q = campaign.WorkQueue(1, {"backup": 2, "migrate": 2})
    for _ in range(3):
        c = q.take()
        while c.command != "migrate":
            q.done(c, _outcome(c, injected=True))
            c = q.take()
        q.done(c, _outcome(c, injected=False, error="RuntimeError: rig"))
    assert "migrate" in q.closed and q.quota == {"backup": 4, "migrate": 0}


def test_differences_name_the_part_and_leave_modes_to_mode_changes():
    a = {"db": {"memory": 1, "skills": 2}, "modes": {"store": {"messages.db": "0o600"}},
         "aside": []}
    b = {"db": {"memory": 1, "skills": 3}, "modes": {"store": {"messages.db": "0o644"}},
         "aside": ["memory_db_pre_restore_x"]}
    assert state.differences(a, b, state.DATA_ONLY) == ["db: skills"]
    assert state.mode_changes(a, b) == ["store/messages.db 0o600 -> 0o644"]
    assert state.differences(a, a, state.DATA_ONLY) == []


def test_leaks_finds_a_readable_leftover_with_a_secret_and_nothing_else(tmp_path):
    secret = "sk-ant-rig-x-secret"
    since = time.time() - 1
    (tmp_path / "readable.sql").write_text(f"password={secret}\n")
    os.chmod(tmp_path / "readable.sql", 0o644)
    (tmp_path / "private.env").write_text(secret)
    os.chmod(tmp_path / "private.env", 0o600)
    (tmp_path / "harmless.txt").write_text("nothing here")
    os.chmod(tmp_path / "harmless.txt", 0o644)
    skipped = tmp_path / "pg"
    skipped.mkdir()
    (skipped / "other").write_text(secret)
    os.chmod(skipped / "other", 0o644)
    found = state.leaks([tmp_path], [secret], skip=(skipped,), since=since)
    assert len(found) == 1 and "readable.sql" in found[0] and "0o644" in found[0]
    # a file older than the run is not its leftover
    assert state.leaks([tmp_path], [secret], skip=(skipped,), since=time.time() + 60) == []


def test_report_counts_lost_and_survived_per_kind_and_command():
    def outcome(cmd, kind, survived, lost=()):
        return {"case": {"command": cmd, "kind": kind, "name": f"{cmd}-1", "step": "",
                         "frac": 0.5, "delay": 0.0},
                "injected": True, "survived": survived, "lost": list(lost),
                "violations": [] if survived else ["x: y"], "orphans": [], "did": "d",
                "exit": 1, "next_run": "ok", "harness_error": ""}
    outs = [outcome("backup", "sigkill", True), outcome("backup", "sigkill", False, ["gone"]),
            outcome("restore", "sigterm", False)]
    t = report.totals(outs)
    assert (t["injected"], t["survived"], t["lost"]) == (3, 1, 1)
    assert report.table(outs)["sigkill"]["backup"]["lost"] == 1
    md = report.markdown({"seed": 1, "commit": "abc", "started": "now", "duration_s": 60,
                          "machine": "m", "load_before": "1", "load_after": "2",
                          "count": 3}, outs)
    assert "| backup | 2 | 1 | 1 |" in md and "--case backup-1" in md
