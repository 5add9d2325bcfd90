#!/usr/bin/env python3
"""syncoid for the migration pair: the real one, then, once the pre-sync has sent its last
dataset, a share of the old host's data changes (the agent at work while the pre-sync
ran), so that the final increment inside the downtime window has something to carry.

Set as the old host's `clawdie.syncoid`; does nothing more than syncoid unless the
benchmark names its state file in BENCH_MUTATE. The change happens during the pre-sync
step, once its last syncoid has ended, before the agent stops: it is not downtime.
"""
import fcntl
import json
import os
import subprocess
import sys

code = subprocess.call([os.environ.get("BENCH_REAL_SYNCOID", "syncoid"), *sys.argv[1:]])
state_path = os.environ.get("BENCH_MUTATE")
if code == 0 and state_path:
    # replicate --jobs runs several of these at once: one at a time here
    lock = open(state_path + ".lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    with open(state_path) as fh:
        state = json.load(fh)
    state["calls"] += 1
    if state["calls"] == state["after"] and not state.get("done"):
        # Quiet: replicate reads this program's output for syncoid's byte counts.
        subprocess.run([state["python"], "-m", "bench.data", "mutate", state_path],
                       cwd=state["repo"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        state["done"] = True
    with open(state_path, "w") as fh:
        json.dump(state, fh)
sys.exit(code)
