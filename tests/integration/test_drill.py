"""`drill` on the rig: a good archive passes, each kind of bad archive fails naming the item,
and the drill leaves no scratch database, cluster or folder behind."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests import archive_kit as kit
from tests.conftest import CLI, cli
from tests.helpers import pg_rows, wait_until
from tests.rig.postgres import SUPERPASS


def backup(h) -> Path:
    return Path(json.loads(cli(h, "backup", "--json", check=True).stdout)["archive"])


@pytest.fixture(scope="module")
def source(rig, tmp_path_factory):
    """A host and its good archive; the drills never touch the host itself."""
    h = rig.new_host(rows=40)
    (h.home / "backups").mkdir(exist_ok=True)
    yield h, backup(h), tmp_path_factory.mktemp("drill-archives")
    rig.drop(h)


def drill_traces() -> set[str]:
    """Drill cluster folders in /tmp and drill processes running, whoever started them."""
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True,
                        check=True).stdout.splitlines()
    return ({str(p) for p in Path("/tmp").glob("clawdie-drill-pg-*")}
            | {line for line in ps if "clawdie-drill" in line})


def descendants(pid: int) -> list[str]:
    """The command lines of every process below `pid` (its children, theirs, ...)."""
    parent: dict[int, int] = {}
    args: dict[int, str] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            parent[int(proc.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            args[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [k for k, v in parent.items() if v == p]
        found += [args[k] for k in kids]
        todo += kids
    return found


def drill(h, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a drill with its own TMPDIR, so that what it leaves there is easy to see."""
    scratch = tmp / "tmpdir"
    scratch.mkdir(exist_ok=True)
    (tmp / "traces-before").write_text("\n".join(sorted(drill_traces())))
    return cli(h, "drill", *args, env={"TMPDIR": str(scratch)})


def new_traces(tmp: Path) -> set[str]:
    """Traces since the drill started that can be its own: its sandbox is in `tmp`'s
    scratch TMPDIR, its cluster there or in /tmp/clawdie-drill-pg-*; other runs on the
    machine keep theirs elsewhere."""
    before = set((tmp / "traces-before").read_text().splitlines())
    return {t for t in drill_traces() - before
            if str(tmp / "tmpdir") in t or "/tmp/clawdie-drill-pg-" in t}


def assert_nothing_left(tmp: Path) -> None:
    """No sandbox in TMPDIR, no new cluster folder in /tmp (where it goes when TMPDIR is
    private, as pytest's is), no new drill cluster still running. Traces of other runs on
    the machine (a benchmark, an earlier session) are not this drill's."""
    scratch = tmp / "tmpdir"
    assert list(scratch.iterdir()) == [], list(scratch.iterdir())
    # Another run on the machine may be inside a drill of its own right now: what it
    # started goes away when it finishes, what this drill left stays.
    try:
        wait_until(lambda: not new_traces(tmp), 120, "other runs' drills to finish")
    except AssertionError:
        pass
    assert new_traces(tmp) == set(), "the drill left a cluster or its folder behind"


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_drill_passes_on_a_good_archive(source, tmp_path, compression):
    h, good, _ = source
    if compression == "zstd":
        good = Path(json.loads(cli(h, "backup", "--json", "--compression", "zstd",
                                   check=True).stdout)["archive"])
        assert good.name.endswith(".tar.zst")
    with h.db_connect("memory") as conn:
        live = pg_rows(conn)
    junit = tmp_path / "reports" / "drill.xml"
    res = drill(h, tmp_path, str(good), "--json", "--junit", str(junit))
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] and report["server"]["throwaway"]
    checks = {c["name"]: c for c in report["checks"]}
    assert list(checks) == ["verify archive", "postgres server", "extract", "messages.db",
                            "files", "replay memory_db.sql", "replay skills_db.sql", "cleanup"]
    assert all(c["status"] == "pass" for c in checks.values())
    assert all(c["seconds"] >= 0 for c in checks.values())
    assert "40 rows match" in checks["replay memory_db.sql"]["detail"] or \
        "rows match" in checks["replay memory_db.sql"]["detail"]
    assert "integrity ok" in checks["messages.db"]["detail"]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("tests") == "8" and suite.get("failures") == "0"
    assert_nothing_left(tmp_path)
    with h.db_connect("memory") as conn:  # the live installation is untouched
        assert pg_rows(conn) == live


def test_drill_table_on_a_terminal_less_run(source, tmp_path):
    h, good, _ = source
    res = drill(h, tmp_path, str(good))
    assert res.returncode == 0, res.stderr
    assert "replay skills_db.sql" in res.stdout and "drill passed" in res.stdout


def test_drill_latest_takes_the_newest_backup_by_its_manifest_whatever_the_names(source,
                                                                              tmp_path):
    h, good, _ = source
    newer = backup(h)  # made after `good`: its manifest says so
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    # Names lie: the newest backup under an old name, the older one under a name from the
    # future (which must not win every --latest from now on), a cut-off copy under an
    # impossible date (no crash), another under a plain old one.
    shutil.copy(newer, shelf / "clawdie-backup-01.jan.2020-0100.tar.gz")
    shutil.copy(good, shelf / "clawdie-backup-02.mar.2031-0100.tar.gz")
    kit.cut_tail(good, shelf / "clawdie-backup-31.feb.2026-2500.tar.gz")
    os.utime(shelf / "clawdie-backup-31.feb.2026-2500.tar.gz", (1.6e9, 1.6e9))  # 2020
    kit.cut_tail(good, shelf / "clawdie-backup-31.dec.2025-2359.tar.gz")
    (shelf / "notes.txt").write_text("not an archive\n")
    res = drill(h, tmp_path, "--latest", str(shelf), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["archive"].endswith("clawdie-backup-01.jan.2020-0100.tar.gz")
    res = drill(h, tmp_path, "--latest", str(tmp_path / "empty-does-not-exist"))
    assert res.returncode == 1 and "backup directory not found" in res.stderr


def _corrupt_sqlite(db: bytes) -> bytes:
    """Page 2's b-tree page type overwritten: integrity_check must notice."""
    page = int.from_bytes(db[16:18], "big")
    page = 65536 if page == 1 else page
    return db[:page] + b"\xff" + db[page + 1:]


BAD = {
    "changed member": (lambda good, d: kit.repack(
        good, d / "changed.tar.gz",
        kit.edit_member("groups/main/config.json", lambda b: b + b" "), sign=False),
        "verify archive", "groups/main/config.json: size"),
    "cut-off tail": (lambda good, d: kit.cut_tail(good, d / "cut.tar.gz", 0.7),
                     "verify archive", "cut short in member"),
    "dot-dot member": (lambda good, d: kit.repack(
        good, d / "dotdot.tar.gz", kit.add_members(kit.file_member("{top}/../../evil.txt"))),
        "verify archive", "../../evil.txt"),
    "symlink member": (lambda good, d: kit.repack(
        good, d / "symlink.tar.gz",
        kit.add_members(kit.link_member("{top}/groups/escape", "/etc"))),
        "verify archive", "groups/escape' is a symbolic link"),
    "dump that fails to replay": (lambda good, d: kit.repack(
        good, d / "late-failure.tar.gz", kit.edit_member("skills_db.sql", kit.fail_late)),
        "replay skills_db.sql", "no_such_table"),
    "row count differs from the manifest": (lambda good, d: kit.repack(
        good, d / "rowcount.tar.gz", kit.edit_manifest(
            lambda m: m["files"]["memory_db.sql"]["tables"].update({"public.users": 11}))),
        "replay memory_db.sql", "table public.users has 10 rows, manifest says 11"),
    "damaged messages.db": (lambda good, d: kit.repack(
        good, d / "sqlite.tar.gz", kit.edit_member("messages.db", _corrupt_sqlite)),
        "messages.db", "messages.db"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_drill_fails_naming_the_item(source, tmp_path, kind):
    h, good, d = source
    build, check, text = BAD[kind]
    bad = build(good, d)
    junit = tmp_path / "drill.xml"
    res = drill(h, tmp_path, str(bad), "--junit", str(junit))
    assert res.returncode == 1, res.stdout
    err = " ".join(res.stderr.split())
    assert "Traceback" not in res.stderr
    assert f"failed: {check}:" in err and text in err, err
    suite = ET.parse(junit).getroot().find("testsuite")
    failed = [tc for tc in suite.findall("testcase") if tc.find("failure") is not None]
    assert [tc.get("name") for tc in failed] == [check]
    assert text in failed[0].find("failure").get("message")
    assert_nothing_left(tmp_path)


def test_drill_on_a_given_server_drops_its_scratch_databases(source, tmp_path):
    h, good, _ = source
    path = h.home / ".invoke.json"
    saved = path.read_text()
    doc = json.loads(saved)
    doc["clawdie"]["drill"] = {"password": SUPERPASS}
    path.write_text(json.dumps(doc))
    try:
        with h.cluster.connect() as admin:
            dbs = {r[0] for r in admin.execute("SELECT datname FROM pg_database")}
            roles = {r[0] for r in admin.execute("SELECT rolname FROM pg_roles")}
        res = drill(h, tmp_path, str(good), "--json", "--pg-host", h.address,
                    "--pg-user", "postgres")
        assert res.returncode == 0, res.stderr
        report = json.loads(res.stdout)
        assert report["ok"] and not report["server"]["throwaway"]
        assert report["server"]["address"] == f"{h.address}:5432"
        with h.cluster.connect() as admin:
            assert {r[0] for r in admin.execute("SELECT datname FROM pg_database")} == dbs
            assert {r[0] for r in admin.execute("SELECT rolname FROM pg_roles")} == roles
        assert_nothing_left(tmp_path)
    finally:
        path.write_text(saved)


def test_drill_stopped_by_sigterm_cleans_up(source, tmp_path):
    """A CI timeout or `kill` mid-drill: the throwaway cluster is stopped, folders removed."""
    h, good, _ = source
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    (tmp_path / "traces-before").write_text("\n".join(sorted(drill_traces())))
    env = h.proc_env()
    env["TMPDIR"] = str(scratch)
    proc = subprocess.Popen([CLI, "drill", str(good)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not any("postgres" in t for t in descendants(proc.pid)):  # its own initdb / pg_ctl
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the drill never started its cluster"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert_nothing_left(tmp_path)


def _servers_in(folder: Path) -> list[int]:
    """Postmasters whose data directory is below `folder`."""
    out = []
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if proc.name.isdigit() and args and args[0].endswith(b"/postgres") and any(
                a.startswith(str(folder).encode()) for a in args):
            out.append(int(proc.name))
    return out


def test_a_sigkilled_drills_cluster_is_stopped_and_removed_by_doctor_and_the_next_drill(
        source, tmp_path):
    """The fault campaign's drill SIGKILLs: pg_ctl daemonizes the throwaway PostgreSQL, so
    it outlived the killed drill with its folder. doctor names it; the next drill stops it,
    removes the folders and says so."""
    h, good, _ = source
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    earlier = set(Path("/tmp").glob("clawdie-drill-pg-*"))
    env = {**h.proc_env(), "TMPDIR": str(scratch)}
    proc = subprocess.Popen([CLI, "drill", str(good)], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    found: dict = {}

    def started() -> bool:
        for p in set(Path("/tmp").glob("clawdie-drill-pg-*")) - earlier:
            if (p / "pid").exists() and (p / "pid").read_text().split()[0] == str(proc.pid) \
                    and (pids := _servers_in(p)):
                found.update(folder=p, pids=pids)
        return bool(found) or proc.poll() is not None

    wait_until(started, 120, "the drill's throwaway PostgreSQL to run")
    assert found, "the drill ended before its cluster ran: the test proves nothing"
    proc.kill()
    proc.wait()
    time.sleep(1)
    folder, server = found["folder"], min(found["pids"])
    assert _servers_in(folder), "the cluster did not outlive the killed drill"
    sandboxes = list(scratch.glob("clawdie-drill-*"))
    assert sandboxes and folder.exists()

    doc = cli(h, "doctor", "--json", env={"TMPDIR": str(scratch)})
    leftover = next(ch for ch in json.loads(doc.stdout)["checks"] if ch["name"] == "leftovers")
    assert leftover["status"] == "warn" and str(folder) in leftover["detail"]
    assert f"throwaway PostgreSQL still running, pid {server}" in leftover["detail"]

    res = drill(h, tmp_path, str(good), "--json")
    assert res.returncode == 0, res.stderr
    err = " ".join(res.stderr.split())
    assert f"removed what a killed run left: killed drill's folder {folder}" in err
    assert f"pid {server}" in err
    assert _servers_in(folder) == [] and not folder.exists()
    assert not any(p.exists() for p in sandboxes)
    assert set(json.loads(res.stdout)["swept"]) >= {
        f"killed drill's folder {folder} (with its throwaway PostgreSQL still running, "
        f"pid {', '.join(map(str, sorted(found['pids'])))})"}


def test_drill_sandbox_is_private_and_the_cluster_gets_only_its_folder(source, tmp_path):
    """The sandbox (drilled messages.db, .env, dumps) is 0700; the postgres user gets a
    folder of its own holding only the cluster (0711: it may pass, nobody may list)."""
    import pwd
    import stat

    h, good, _ = source
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    earlier = set(Path("/tmp").glob("clawdie-drill-pg-*"))
    proc = subprocess.Popen([CLI, "drill", str(good)], env={**h.proc_env(), "TMPDIR": str(scratch)},
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen: dict = {}

    def look() -> bool:
        try:
            for p in scratch.glob("clawdie-drill-*"):
                seen["sandbox"] = stat.S_IMODE(p.stat().st_mode)
            for p in set(Path("/tmp").glob("clawdie-drill-pg-*")) - earlier:
                pg = p / "pg"
                if pg.stat().st_uid == os.geteuid():
                    continue  # not handed to the postgres user yet
                seen["cluster"] = (stat.S_IMODE(p.stat().st_mode), sorted(x.name for x in
                                                                           p.iterdir()),
                                   stat.S_IMODE(pg.stat().st_mode), pg.stat().st_uid)
        except FileNotFoundError:
            pass
        return ("sandbox" in seen and "cluster" in seen) or proc.poll() is not None

    wait_until(look, 120, "the drill's sandbox and cluster folder")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    assert seen["sandbox"] == 0o700
    # pid: which drill made it, for the sweep after a killed one
    assert seen["cluster"] == (0o711, ["pg", "pid"], 0o700, pwd.getpwnam("postgres").pw_uid)
