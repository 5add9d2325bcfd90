"""A ten-fault sample of the fault-injection campaign (`nox -s faults` runs 200 or more):
backup, restore and prune side by side on the campaign's shared queue, each fault followed
by the campaign's invariants; nothing is lost."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from faults import campaign

SEED = 1129
SAMPLE = {"backup": 5, "restore": 3, "prune": 2}


def test_ten_faults_into_backup_restore_and_prune_lose_nothing(rig):
    work = rig.base / "faults-sample"
    work.mkdir(exist_ok=True)
    runner = campaign.Runner(rig, work, SEED)
    queue = campaign.WorkQueue(SEED, SAMPLE)
    outcomes: list[campaign.Outcome] = []
    try:
        with ThreadPoolExecutor(max_workers=len(SAMPLE)) as pool:
            for f in [pool.submit(campaign.work, runner, queue, outcomes.append)
                      for _ in SAMPLE]:
                f.result()
    finally:
        runner.teardown()
    injected = [o for o in outcomes if o.injected]
    errors = [o.harness_error for o in outcomes if o.harness_error]
    assert not errors, errors
    # missed cases were retried or replaced until each command's share was injected
    assert {c: sum(o.case["command"] == c for o in injected) for c in SAMPLE} == SAMPLE
    # every injected fault was judged: the state compared and the next run made
    assert all(o.state and o.next_run for o in injected)
    lost = {o.case["name"]: o.lost for o in injected if o.lost}
    assert not lost, f"data lost (rerun: nox -s faults -- --seed {SEED} --case NAME): {lost}"
