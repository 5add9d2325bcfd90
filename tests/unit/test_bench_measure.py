"""The benchmark's instruments and the compression defaults it chose (no timings asserted)."""
from __future__ import annotations

import os
import sys

from bench.measure import measure
from clawdie_ops.archive import writer as archive
from clawdie_ops.config import settings as config

HOLD = "import time; x = bytearray({mib} << 20); x[::4096] = b'x' * len(x[::4096]); time.sleep(1)"


def test_measure_counts_every_process_of_the_tree_at_once():
    # Two children side by side under a shell: 60 MiB and 40 MiB touched at the same time.
    cmd = (f"{sys.executable} -c \"{HOLD.format(mib=60)}\" & "
           f"{sys.executable} -c \"{HOLD.format(mib=40)}\"; wait")
    run = measure("two", cmd)
    assert run.exit == 0
    assert run.tree_pss >= 100 << 20  # both at once
    assert run.tree_rss >= run.tree_pss


def test_measure_reports_the_exit_code_and_output():
    run = measure("fail", "echo out; echo err >&2; exit 3")
    assert run.exit == 3 and "out" in run.output and "err" in run.output


def test_zstd_is_the_default_and_uses_every_core():
    assert config.DEFAULTS["compression"] == "zstd"
    cmd = archive.compressor("zstd")
    assert cmd[:3] == ["zstd", "-q", "-c"] and f"-T{os.cpu_count()}" in cmd
    assert f"-{archive.ZSTD_LEVEL}" in cmd
    assert archive.SUFFIX["gzip"] == ".tar.gz"  # the runbook's format stays available


def test_measure_kills_a_hung_run_and_its_children():
    run = measure("hung", "sleep 30 & sleep 30; wait", timeout=0.5)
    assert run.exit == -9


# -- where the time goes: the migrate window per step, the floor, the targets ------------
def _report(down_steps):
    return {"steps": [{"id": i, "phase": ph, "seconds": sec} for i, ph, sec in down_steps],
            "downtime_s": 1.0}


def test_step_seconds_keeps_the_window_and_presync_steps_with_their_phases():
    from bench.migration import step_seconds

    got = step_seconds(_report([("tools", "preflight", 0.3), ("presync", "presync", 5.0),
                                ("stop-old-agent", "downtime", 1.5),
                                ("pause-old-schedule", "cutover", 0.2)]))
    assert got["presync"] == 5.0 and got["stop-old-agent"] == 1.5
    assert "tools" not in got and "pause-old-schedule" not in got
    assert got["_phases"]["stop-old-agent"] == "downtime" and got["_path"] == ""
    moved = step_seconds({**_report([]), "postgres": {"path": "dataset", "why": "same major"}})
    assert moved["_path"] == "PostgreSQL by dataset"


def test_median_run_is_the_run_with_the_median_downtime():
    from bench.migration import median_run

    runs = [(9.0, {"a": 9}), (3.0, {"a": 3}), (5.0, {"a": 5})]
    assert median_run(runs) == {"a": 5, "_downtime_s": 5.0}
    assert median_run(runs[:2])["a"] == 3  # even count: the lower middle, a run that happened
    assert median_run([]) == {}


def _pair(name, a, b, **extra):
    def side(s):
        return {"label": name, "runs": [], "median": {
            "wall_s": s, "downtime_s": s, "cpu_s": 0, "tree_rss": 90 << 20, "tree_pss": 80 << 20}}
    return {"pair": name, "a": side(a), "b": side(b), "ratio": round(a / b, 2), **extra}


def test_targets_name_issue_15s_bounds_and_fail_where_missed():
    from bench.run import targets

    migrate = _pair("migrate", 20.0, 5.0, changed=0.01, floor={"median_s": 2.0},
                    floor_share=2.5)
    got = {t["target"]: t for t in targets([
        _pair("backup", 45.0, 10.0, size_ratio=0.98), _pair("restore", 15.0, 10.0, scale=0.25),
        _pair("restore", 30.0, 25.0, scale=1.0), migrate,
        {**_pair("startup", 0.02, 0.06), "version_s": 0.06},
        {**_pair("small", 0.5, 1.5), "floor_multiple": 3.0}])}
    assert got["backup speed-up over the runbook"]["met"] is True  # 4.5x exactly
    assert got["restore speed-up over the manual restore at scale 0.25"]["met"] is True
    assert got["restore speed-up over the manual restore at scale 1.0"]["met"] is False
    assert got["migration downtime vs stop-first (1% changed)"]["met"] is False  # 0.25
    assert got["migration downtime vs stop-first (1% changed)"]["bound"] == "<= 0.2"
    floor = got["migration downtime vs the physical floor (stop, increment, start, doctor)"]
    assert floor["met"] is False and floor["bound"] == "<= 2x"
    assert got["`clawdie-ops --version` start-up (median)"]["met"] is True
    small = [t for k, t in got.items() if k.startswith("backup of a small")][0]
    assert small["met"] is False and small["measured"] == "3.00x the floor"


def test_the_report_shows_the_window_per_step_beside_the_floor():
    from bench.run import details

    steps = {"stop-old-agent": 1.5, "final-sync": 2.0, "presync": 9.0,
             "_phases": {"stop-old-agent": "downtime", "final-sync": "downtime",
                         "presync": "presync"}, "_downtime_s": 4.0}
    r = _pair("migrate", 20.0, 4.0, scale=0.5, pg_major=18, steps={"migrate": steps},
              floor={"runs": [{}], "median": {"stop": 1.0, "send": 0.5}, "median_s": 1.5,
                     "postgres_in_dataset": True}, floor_share=2.67)
    text = "\n".join(details([r]))
    assert "| stop-old-agent | 1.50 s | - |" in text and "presync |" not in text
    assert "stop 1.00 s, send 0.50 s = 1.50 s" in text and "2.67x" in text
    assert "PostgreSQL 18 on both hosts" in text


def test_the_floor_dumps_with_the_hosts_own_client(tmp_path):
    from types import SimpleNamespace

    from bench.small import floor_script

    h = SimpleNamespace(cluster=SimpleNamespace(bindir="/opt/pg18/bin"), address="127.0.0.9")
    script = floor_script(h, "memory", tmp_path / "pgpass", tmp_path / "f.sql")
    assert "/opt/pg18/bin/pg_dump --clean -h 127.0.0.9 -U memory_user memory_db >" in script
    assert f"PGPASSFILE={tmp_path / 'pgpass'}" in script and "set -euo pipefail" in script


def test_pgvector_rows_are_vector_send_bodies_with_the_same_embedding_bytes():
    import struct

    import numpy as np

    from bench import data

    rows = data._vectors(7, 3, 1024)
    assert rows.shape == (3, 4 + 1024 * 4)
    dim, unused = struct.unpack("!hh", rows[0, :4].tobytes())
    assert (dim, unused) == (1024, 0)
    values = np.frombuffer(rows[0, 4:].tobytes(), dtype=">f4")
    assert np.isfinite(values).all() and values.std() > 0
    plain, vec = data.Counts.at(1.0), data.Counts.at(1.0).with_vectors(1024)
    assert vec.memories * 1024 == plain.memories * data.DIM  # same embedding bytes
    assert (vec.messages, vec.chunks) == (plain.messages, plain.chunks)
