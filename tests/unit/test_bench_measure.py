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
