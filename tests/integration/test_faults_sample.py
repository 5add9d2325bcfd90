"""A ten-fault sample of the fault-injection campaign (`nox -s faults` runs 200 or more):
backup and restore, each fault followed by the campaign's invariants; nothing is lost."""
from __future__ import annotations

from faults import campaign

SEED = 1129
SAMPLE = {"backup": 6, "restore": 4}


def test_ten_faults_into_backup_and_restore_lose_nothing(rig):
    work = rig.base / "faults-sample"
    work.mkdir(exist_ok=True)
    runner = campaign.Runner(rig, work, SEED)
    outcomes = []
    try:
        for command, count in SAMPLE.items():
            outcomes += list(campaign.run_command(runner, command, count))
    finally:
        runner.teardown()
    injected = [o for o in outcomes if o.injected]
    errors = [o.harness_error for o in outcomes if o.harness_error]
    assert not errors, errors
    assert len(injected) == sum(SAMPLE.values())
    # every injected fault was judged: the state compared and the next run made
    assert all(o.state and o.next_run for o in injected)
    lost = {o.case["name"]: o.lost for o in injected if o.lost}
    assert not lost, f"data lost (rerun: nox -s faults -- --seed {SEED} --case NAME): {lost}"
