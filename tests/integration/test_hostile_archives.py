"""Hostile or damaged input costs one clear error and an exit code, nothing more: no
traceback, bounded memory, nothing changed, and drill writes its JUnit report every time."""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests import archive_kit as kit
from tests.conftest import CLI, cli
from tests.integration.test_restore import backup, state, work_dirs

DECLARED = 256 << 20  # what the hostile extended header claims to hold
RSS_LIMIT_KB = 150 << 10  # the CLI's own footprint is far below; the header alone is 256 MB


def pax_bomb(dest: Path) -> Path:
    """A zstd archive of a few KB whose first member is a PAX header declaring 256 MB (of
    zeros, which compress to almost nothing)."""
    info = tarfile.TarInfo("clawdie-backup-01.jan.2026-0000/messages.db")
    info.type = tarfile.XHDTYPE
    info.size = DECLARED
    with open(dest, "wb") as out:
        z = subprocess.Popen(["zstd", "-q", "-19", "-c"], stdin=subprocess.PIPE, stdout=out)
        z.stdin.write(info.tobuf(format=tarfile.USTAR_FORMAT))
        zeros = b"\0" * (1 << 20)
        for _ in range(DECLARED >> 20):
            z.stdin.write(zeros)
        z.stdin.close()
        assert z.wait() == 0
    return dest


def measured(h, *args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run the CLI from a fresh interpreter whose only child it is: (result, child max RSS
    in KiB, from getrusage)."""
    probe = ("import json, resource, subprocess, sys;"
             "r = subprocess.run(sys.argv[1:], capture_output=True, text=True,"
             " stdin=subprocess.DEVNULL);"
             "print(json.dumps({'rc': r.returncode, 'out': r.stdout, 'err': r.stderr,"
             " 'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
    res = subprocess.run([sys.executable, "-c", probe, CLI, *args], env=h.proc_env(),
                         capture_output=True, text=True, timeout=300, check=True)
    doc = json.loads(res.stdout)
    return subprocess.CompletedProcess(args, doc["rc"], doc["out"], doc["err"]), doc["rss"]


def one_clear_error(res: subprocess.CompletedProcess[str], *expected: str) -> str:
    err = " ".join(res.stderr.split())
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and err.startswith("error:"), res.stderr
    for text in expected:
        assert text in err, err
    return err


@pytest.fixture(scope="module")
def target(rig, tmp_path_factory):
    h = rig.new_host(rows=20)
    (h.home / "backups").mkdir(exist_ok=True)
    yield h, backup(h), tmp_path_factory.mktemp("hostile")
    rig.drop(h)


def test_huge_extended_header_is_refused_with_bounded_memory(target):
    h, _, d = target
    bomb = pax_bomb(d / "bomb.tar.zst")
    assert bomb.stat().st_size < 64 << 10
    before = state(h)
    for args in (["inspect", str(bomb)], ["restore", str(bomb), "--yes"]):
        res, rss = measured(h, *args)
        one_clear_error(res, f"declares {DECLARED} bytes")
        assert rss < RSS_LIMIT_KB, f"{args[0]} used {rss} KiB"
    assert state(h) == before and work_dirs(h) == []


DAMAGED = {
    "truncated zstd stream": (lambda good, d: kit.cut_tail(good, d / "cut.tar.zst", 0.5),
                              "damaged"),
    "files is a list": (lambda good, d: kit.repack(good, d / "list.tar.gz", kit.edit_manifest(
        lambda m: m.__setitem__("files", list(m["files"]))), sign=False), "wrong shape"),
    "entry of the wrong type": (lambda good, d: kit.repack(good, d / "entry.tar.gz",
                                kit.edit_manifest(lambda m: m["files"].__setitem__(
                                    "messages.db", "a string")), sign=False), "wrong shape"),
    "size of the wrong type": (lambda good, d: kit.repack(good, d / "size.tar.gz",
                               kit.edit_manifest(lambda m: m["files"]["env"].__setitem__(
                                   "size", "big")), sign=False), "files['env'].size"),
    "row counts of the wrong type": (lambda good, d: kit.repack(
        good, d / "tables.tar.gz", kit.edit_manifest(
            lambda m: m["files"]["messages.db"].__setitem__("tables", {"users": "many"})),
        sign=False), "row counts"),
    "markup in a member name": (lambda good, d: kit.repack(
        good, d / "markup.tar.gz",
        kit.add_members(kit.file_member("{top}/groups/[/bold][red]x/../../../x"))),
        "[/bold][red]x"),
}


@pytest.mark.parametrize("kind", list(DAMAGED))
def test_damaged_input_gives_one_clear_error(target, kind):
    h, good, d = target
    make, expected = DAMAGED[kind]
    assert good.name.endswith(".tar.zst")  # the default compression
    bad = make(good, d)
    before = state(h)
    for args in (["inspect", str(bad)], ["restore", str(bad), "--yes"]):
        one_clear_error(cli(h, *args), expected)
    assert state(h) == before and work_dirs(h) == []
    # drill: the report names it, and the JUnit file is written.
    junit = d / f"{kind.replace(' ', '-')}.xml"
    res = cli(h, "drill", str(bad), "--junit", str(junit))
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    suite = ET.parse(junit).getroot().find("testsuite")
    failures = [f.get("message") for f in suite.iter("failure")]
    assert failures and expected in " ".join(failures), failures


@pytest.mark.parametrize("case", ["no archive found", "huge extended header"])
def test_drill_writes_its_junit_report_in_every_case(target, case):
    h, _, d = target
    junit = d / f"junit-{case.replace(' ', '-')}.xml"
    if case == "no archive found":
        empty = d / "empty"
        empty.mkdir(exist_ok=True)
        res = cli(h, "drill", "--latest", str(empty), "--junit", str(junit))
        expected = "no clawdie-backup-* archive"
    else:
        res = cli(h, "drill", str(pax_bomb(d / "drill-bomb.tar.zst")), "--junit", str(junit))
        expected = f"declares {DECLARED} bytes"
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert expected in " ".join(res.stderr.split())
    suite = ET.parse(junit).getroot().find("testsuite")
    assert int(suite.get("failures")) >= 1
    assert expected in " ".join(f.get("message") for f in suite.iter("failure"))
