"""messages.db and the files move by what changed: the pre-sync stages a consistent copy on
the new host, the window sends only the changed pages and files, and a damaged staged copy
stops the migration with the old host running and unchanged."""
from __future__ import annotations

import json
import os
import shlex
import sqlite3
import stat
import struct
from pathlib import Path

import pytest

from clawdie_ops import statedir
from clawdie_ops.hosts import delta as wire
from tests.conftest import cli
from tests.migrate_helpers import (assert_old_intact, files_state, migrate, snapshots,
                                   sqlite_state, two_hosts, whole_state, write_inventory)
from tests.rig.hosts import SimHost

SKIP_ENV = ("WARDEN_DB_IP", "ZFS_POOL")


def _grow(h: SimHost, rows: int = 40_000) -> int:
    """Make messages.db worth diffing (the rig's is tiny); its size in bytes."""
    db = h.root / "store" / "messages.db"
    con = sqlite3.connect(db, timeout=30)
    con.executemany("INSERT INTO messages VALUES (?,?,?,?,?,?,?)", [
        (f"bulk{i}", "0@g.us", "u", "User", f"bulk {i} " + "y" * 400,
         f"2026-11-02T00:{i % 60:02d}:00Z", 0) for i in range(rows)])
    con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return db.stat().st_size


def _before_stop(old: SimHost, script: str) -> None:
    """Run `script` on the old host just before its agent stops: after the pre-sync, before
    the window's pass (what an agent still writing at the last moment does)."""
    path = old.home / ".invoke.json"
    cfg = json.loads(path.read_text())
    hook = old.home / "before-stop.sh"
    hook.write_text("set -e\n" + script)
    stop = cfg["clawdie"]["commands"]["agent_stop"]
    cfg["clawdie"]["commands"]["agent_stop"] = f"sh {shlex.quote(str(hook))} && {stop}"
    path.write_text(json.dumps(cfg, indent=2))


def _file_modes(top: Path) -> dict[str, int]:
    return {str(p.relative_to(top)): stat.S_IMODE(p.stat().st_mode)
            for p in top.rglob("*") if p.is_file()}


def _staged(h: SimHost) -> Path:
    return statedir.installation_dir(h.state_dir, h.root) / "migrate-delta"


def test_the_window_sends_only_what_changed_and_the_new_host_ends_as_the_old(rig):
    old, new = two_hosts(rig, jails=("db",))
    write_inventory(rig, old, new, overrides={"db_host": new.address,
                                              "zfs_pool": new.pool_name})
    size = _grow(old)
    r, g = old.root, old.root / "groups"
    allow = old.home / ".config" / "clawdie-cp" / "mount-allowlist.json"
    q = shlex.quote
    _before_stop(old, "\n".join([
        f"sqlite3 -cmd '.timeout 30000' {q(str(r / 'store' / 'messages.db'))} "
        "\"INSERT INTO messages VALUES ('late1','0@g.us','u','User','the last word',"
        "'2026-11-29T00:00:00Z',0); UPDATE messages SET content='edited' WHERE id='m3';"
        "DELETE FROM messages WHERE id='bulk7';\"",
        f"printf 'late note\\n' >> {q(str(g / 'main' / 'CLAUDE.md'))}",
        f"printf 'LATE_KEY=set in the last second\\n' >> {q(str(r / '.env'))}",
        f"printf '{{\"allowedRoots\": []}}\\n' > {q(str(allow))}",
        f"rm {q(str(g / 'family chat' / 'config.json'))}",
        f"mkdir -p {q(str(g / 'new one'))} && printf 'fresh\\n' > {q(str(g / 'new one' / 'n.md'))}",
        f"chmod 640 {q(str(g / 'new one' / 'n.md'))}",
        f"chmod 600 {q(str(g / 'work' / 'team alpha' / 'CLAUDE.md'))}", ""]))

    res, report = migrate(old, new, timeout=900)  # the shared machine can be slow
    assert res.returncode == 0, res.stderr + res.stdout
    assert report["status"] == "done"
    assert new.agent_running() and not old.agent_running()
    # exactly the old host's final state: rows, files, modes; the deleted file is gone
    assert sqlite_state(new) == sqlite_state(old)
    con = sqlite3.connect(new.root / "store" / "messages.db")
    assert con.execute("SELECT content FROM messages WHERE id='late1'").fetchone() == \
        ("the last word",)
    assert con.execute("SELECT count(*) FROM messages WHERE id='bulk7'").fetchone() == (0,)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()
    assert files_state(new, SKIP_ENV) == files_state(old, SKIP_ENV)
    assert "LATE_KEY=set in the last second" in (new.root / ".env").read_text()
    assert json.loads((new.home / ".config" / "clawdie-cp" /
                       "mount-allowlist.json").read_text()) == {"allowedRoots": []}
    assert not (new.root / "groups" / "family chat" / "config.json").exists()
    assert _file_modes(new.root / "groups") == _file_modes(old.root / "groups")
    assert stat.S_IMODE((new.root / "groups" / "new one" / "n.md").stat().st_mode) == 0o640
    assert stat.S_IMODE((new.root / "groups" / "work" / "team alpha" /
                         "CLAUDE.md").stat().st_mode) == 0o600
    assert stat.S_IMODE((new.root / ".env").stat().st_mode) == 0o600

    # bytes: the pre-sync carried the whole file, the window a small fraction of it
    pre, fin = report["delta"]["presync-files"], report["delta"]["final-files"]
    assert pre["db_bytes"] >= size * 0.9 and pre["bytes_sent"] >= pre["db_bytes"]
    assert pre["pages_sent"] == pre["pages_total"]
    assert fin["db_bytes"] >= size * 0.9
    assert fin["bytes_sent"] < fin["db_bytes"] * 0.05, fin
    assert 0 < fin["pages_sent"] < fin["pages_total"] * 0.05
    assert fin["files_sent"] >= 4 and fin["deleted"] == 1
    assert fin["integrity"] == "ok" and fin["tables"]["messages"] == \
        sqlite_state(old)["messages"].__len__()
    # each step's time is in the report and the journal like the others
    steps = {s["id"]: s for s in report["steps"]}
    for sid in ("presync-files", "final-files", "install-files"):
        assert steps[sid]["status"] == "done" and steps[sid]["seconds"] > 0
    assert "messages.db" not in report["moved"]["tables"]  # not in the final archive
    print(f"\nwindow delta: {fin['bytes_sent']} of {fin['db_bytes']} bytes of messages.db "
          f"({fin['pages_sent']}/{fin['pages_total']} pages) in "
          f"{steps['final-files']['seconds']:.2f}s; "
          f"install {steps['install-files']['seconds']:.2f}s")
    rig.drop(old)
    rig.drop(new)


@pytest.mark.parametrize("damage", ["corrupted", "truncated"])
def test_a_damaged_staged_copy_fails_the_window_and_the_old_host_runs_on(rig, damage):
    old, new = two_hosts(rig, jails=("db",))
    write_inventory(rig, old, new, overrides={"db_host": new.address,
                                              "zfs_pool": new.pool_name})
    _grow(old, 8000)
    staged = _staged(new) / "messages.db"
    q = shlex.quote(str(staged))
    if damage == "corrupted":  # garbage over a page in the middle, length kept
        _before_stop(old, f"dd if=/dev/urandom of={q} bs=4096 seek=40 count=1 "
                          "conv=notrunc 2>/dev/null\n")
    else:
        _before_stop(old, f"truncate -s 100000 {q}\n")
    before, snaps = whole_state(old), snapshots(old)
    res, report = migrate(old, new, timeout=900)
    assert res.returncode != 0
    assert report["status"] == "failed" and report["stopped_at"] == "final-files"
    assert "does not match the old host's" in res.stderr
    assert "integrity_check" in res.stderr or "row counts" in res.stderr
    assert "the old host's agent runs again" in res.stderr
    # the old host: running, unchanged; the new host: nothing put in place, copy dropped
    _before_stop(old, "")
    assert_old_intact(old, before, snaps)
    assert not (new.root / "store" / "messages.db").exists()
    assert not staged.exists()
    if damage == "truncated":  # the same command again sends it whole and succeeds
        res, report = migrate(old, new, timeout=900)
        assert res.returncode == 0, res.stderr + res.stdout
        assert report["delta"]["final-files"]["pages_sent"] == \
            report["delta"]["final-files"]["pages_total"]
        assert sqlite_state(new) == sqlite_state(old)
        assert files_state(new, SKIP_ENV) == files_state(old, SKIP_ENV)
    rig.drop(old)
    rig.drop(new)


def _hostile_bundle(path: Path, names: list[str], deleted: list[str]) -> None:
    head = json.dumps({"db": None, "deleted": deleted, "files": [
        {"name": n, "size": 5, "mtime_ns": 0, "mode": 0o644, "sha256": "0" * 64}
        for n in names]}).encode()
    path.write_bytes(wire.MAGIC + struct.pack(">I", len(head)) + head + b"owned" * len(names))


@pytest.mark.parametrize("names,deleted", [
    (["../../../../tmp/clawdie-owned"], []),
    (["/tmp/clawdie-owned"], []),
    (["groups/../../../.ssh/authorized_keys"], []),
    ([], ["../../.env"]),
    ([], ["/etc/hostname"])])
def test_a_hostile_file_list_is_refused_on_the_new_host(host, names, deleted):
    res = cli(host, "migrate-delta", "state", "--json", check=True)
    incoming = Path(json.loads(res.stdout)["incoming"])
    bundle = incoming / "hostile.delta"
    _hostile_bundle(bundle, names, deleted)
    before = {p: p.read_bytes() for p in (host.root / ".env",) if p.exists()}
    res = cli(host, "migrate-delta", "apply", "--path", str(bundle), "--json")
    assert res.returncode != 0
    assert "refused" in res.stderr and "Traceback" not in res.stderr
    assert not Path("/tmp/clawdie-owned").exists()
    assert not (incoming.parent / "files").exists() or \
        not any((incoming.parent / "files").rglob("*"))
    assert all(p.read_bytes() == b for p, b in before.items())
    assert Path("/etc/hostname").exists()


def test_a_hostile_file_list_sent_to_the_old_host_is_refused(host):
    payload = json.dumps({"have": {"files": [{"name": "../../etc/passwd", "size": 1,
                                              "mtime_ns": 0, "mode": 420,
                                              "sha256": "0" * 64}]}})
    import subprocess
    from tests.conftest import CLI
    res = subprocess.run([CLI, "migrate-delta", "make", "--stdin", "--json"], input=payload,
                         env=host.proc_env(), cwd=host.root, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode != 0 and "outside the staging folder" in res.stderr
    assert not list((statedir.installation_dir(host.state_dir, host.root) /
                     "migrate-delta-out").glob("*.delta"))
    os.sync()


def test_backup_databases_only_leaves_messages_db_and_the_files_out(host):
    res = cli(host, "backup", "--databases-only", "--no-snapshot", "--json", check=True)
    out = json.loads(res.stdout)
    assert sorted(out["items"]) == ["env", "memory_db.sql", "skills_db.sql"]
    assert "messages.db" not in out["tables"] and out["tables"]["memory_db.sql"]
    shown = cli(host, "inspect", out["archive"], "--json", check=True)
    assert "--databases-only" in shown.stdout


def test_connection_cut_during_the_presync_bundle_copy_is_resumed(rig):
    import random

    from tests.rig.proxy import through_proxy

    old, new = two_hosts(rig, jails=("db",))
    video = old.root / "groups" / "main" / "attachments" / "video.bin"
    video.write_bytes(random.Random(5).randbytes(1_000_000))  # incompressible, 1 MB
    alias, proxy = through_proxy(rig, new, cut_after=300_000, cuts=1)
    try:
        write_inventory(rig, old, new, ssh=alias, peer_ssh=new.alias)
        res, report = migrate(old, new, timeout=900)
    finally:
        proxy.stop()
    assert res.returncode == 0, res.stderr + res.stdout
    assert proxy.cut_count == 1
    pre = report["delta"]["presync-files"]
    assert pre["attempts"] == 2 and pre["resumed_from"] and pre["resumed_from"][0] > 0
    assert pre["bytes_sent"] < 2 * pre["bundle_bytes"]
    assert (new.root / "groups" / "main" / "attachments" / "video.bin").read_bytes() == \
        video.read_bytes()
    assert sqlite_state(new) == sqlite_state(old)
    rig.drop(old)
    rig.drop(new)
