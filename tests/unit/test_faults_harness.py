"""The fault campaign's own logic, without the rig: seeded plans, lanes, state comparisons,
and the secret scan that decides whether a leftover leaks."""
from __future__ import annotations

import os
import time

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


def test_lanes_put_every_command_in_exactly_one_lane():
    by_cmd = {}
    for c in campaign.plan(1, 100, list(SCENARIOS)):
        by_cmd.setdefault(c.command, []).append(c)
    lanes = campaign.lanes(by_cmd, 3)
    assert len(lanes) == 3
    assert sorted(c for lane in lanes for c in lane) == sorted(by_cmd)


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
