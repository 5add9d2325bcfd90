"""`clawdie-ops backup` on the rig: what the archive holds, matched against the live sources."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.conftest import cli
from tests.helpers import (wait_until, extract, manifest_of, pg_objects, pg_rows, sqlite_rows,
                           tree_digest)
from tests.rig import content
from tests.rig.services import ZFS, sh


def run_backup(h, *args: str) -> dict:
    res = cli(h, "backup", "--json", *args, check=True)
    return json.loads(res.stdout)


def test_backup_writes_runbook_layout_with_mode_0600(host, tmp_path):
    result = run_backup(host, "--compression", "gzip")  # the runbook's .tar.gz
    archive = Path(result["archive"])
    assert archive.parent == host.home / "backups"
    assert archive.name.startswith("clawdie-backup-") and archive.name.endswith(".tar.gz")
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    top = extract(archive, tmp_path)
    assert top.name == archive.name.removesuffix(".tar.gz")
    names = {str(p.relative_to(top)) for p in top.rglob("*") if p.is_file()}
    assert {"manifest.json", "messages.db", "memory_db.sql", "skills_db.sql", "env",
            "mount-allowlist.json", "groups/main/CLAUDE.md",
            "groups/work/team alpha/config.json",
            "groups/main/attachments/photo one.bin"} <= names
    # What the runbook says not to back up stays out.
    assert not any(n.startswith(("data/", "node_modules", "dist", "tmp", "artifacts"))
                   for n in names)
    m = manifest_of(top)
    assert m["agent_name"] == host.env["AGENT_NAME"]
    assert m["items"] == ["messages.db", "memory_db.sql", "skills_db.sql", "env", "groups/",
                          "mount-allowlist.json"]
    assert m["tool_version"] and m["host"] and m["timestamp"]
    assert m["files"]["memory_db.sql"]["server_version"].startswith("15.")
    assert m["files"]["memory_db.sql"]["pg_dump_version"].startswith("15.")
    # Every member's size and sha256 are what the manifest says.
    digests = tree_digest(top)
    for name, entry in m["files"].items():
        assert digests[name] == entry["sha256"], name
        assert (top / name).stat().st_size == entry["size"], name
    assert result["sha256"] and result["size"] == archive.stat().st_size


def test_archive_files_match_sources_byte_for_byte(host, tmp_path):
    top = extract(Path(run_backup(host)["archive"]), tmp_path)
    assert (top / "env").read_bytes() == (host.root / ".env").read_bytes()
    assert stat.S_IMODE((top / "env").stat().st_mode) == 0o600
    allow = host.home / ".config/clawdie-cp/mount-allowlist.json"
    assert (top / "mount-allowlist.json").read_bytes() == allow.read_bytes()
    assert tree_digest(top / "groups") == tree_digest(host.root / "groups")


def test_sqlite_copy_matches_row_for_row(host, tmp_path):
    top = extract(Path(run_backup(host)["archive"]), tmp_path)
    archived = sqlite_rows(top / "messages.db")
    assert archived == sqlite_rows(host.root / "store" / "messages.db")
    counts = manifest_of(top)["files"]["messages.db"]["tables"]
    assert counts == {t: len(rows) for t, rows in archived.items()}
    assert counts["messages"] == host.rows
    # A self-contained file: no WAL needed beside it.
    assert not (top / "messages.db-wal").exists()


def runbook_psql(h, key: str, dbname: str, dump: Path, on_error_stop: bool) -> None:
    """The runbook's own restore command: psql -h HOST -U USER DBNAME < dump."""
    user = f"{key}_user"
    password = content.MEMORY_PASSWORD if key == "memory" else content.SKILLS_PASSWORD
    cmd = ["psql", "-h", h.address, "-U", user, dbname]
    if on_error_stop:
        cmd[1:1] = ["-v", "ON_ERROR_STOP=1"]
    with open(dump, "rb") as fh:
        res = subprocess.run(cmd, stdin=fh, capture_output=True, text=True,
                             env={**os.environ, "PGPASSWORD": password})
    assert res.returncode == 0 and "ERROR" not in res.stderr, res.stderr


def test_dumps_replay_with_runbook_psql_into_fresh_and_existing_databases(host, tmp_path):
    top = extract(Path(run_backup(host)["archive"]), tmp_path)
    m = manifest_of(top)
    for key in ("memory", "skills"):
        with host.db_connect(key) as conn:
            source_rows, source_objects = pg_rows(conn), pg_objects(conn)
        scratch = f"{key}_scratch"
        with host.cluster.connect() as admin:
            admin.execute(f'CREATE DATABASE "{scratch}" OWNER "{key}_user"')
        # Into an empty database (a new host) with ON_ERROR_STOP: needs --if-exists.
        runbook_psql(host, key, scratch, top / f"{key}_db.sql", on_error_stop=True)
        # And again over the now-existing objects, as the runbook does on the same host.
        runbook_psql(host, key, scratch, top / f"{key}_db.sql", on_error_stop=True)
        with host.cluster.connect(dbname=scratch) as conn:
            assert pg_rows(conn) == source_rows
            assert pg_objects(conn) == source_objects
            with conn.cursor() as cur:  # embeddings, JSONB and BYTEA survive exactly
                if key == "memory":
                    emb, meta, blob = cur.execute(
                        "SELECT embedding, meta, blob FROM memories WHERE id = 1").fetchone()
                    assert len(emb) == 32 and meta["tags"] == ["a", "b"] and len(blob) == 64
        counts = m["files"][f"{key}_db.sql"]["tables"]
        assert counts == {t: len(r) for t, r in source_rows.items()}


def test_skip_skills_and_zstd(host, tmp_path):
    result = run_backup(host, "--skip-skills", "--compression", "zstd", "--no-snapshot")
    archive = Path(result["archive"])
    assert archive.name.endswith(".tar.zst")
    top = extract(archive, tmp_path)
    assert not (top / "skills_db.sql").exists()
    m = manifest_of(top)
    assert "skills_db.sql" not in m["items"] and m["skipped"] == {"skills_db.sql": "--skip-skills"}
    assert m["snapshots"] == []


def test_snapshots_exist_on_the_pool_after_backup(host):
    result = run_backup(host)
    listed = set(sh(ZFS, "list", "-H", "-o", "name", "-t", "snapshot").stdout.split())
    snap = Path(result["archive"]).name.removesuffix(".tar.zst")  # zstd: the default
    for jail in ("db", "git", "cms", "management"):
        assert f"{host.dataset(jail)}@{snap}" in listed
        assert f"{host.dataset(jail)}@{snap}" in result["snapshots"]
    # Two backups in the same minute get distinct archive and snapshot names.
    second = run_backup(host)
    assert second["archive"] != result["archive"]
    assert set(second["snapshots"]).isdisjoint(result["snapshots"])


WRITER = r"""
import os, sqlite3, sys
con = sqlite3.connect(sys.argv[1], timeout=30)
con.execute("INSERT OR REPLACE INTO router_state VALUES ('writer_count', '0')"); con.commit()
i = 0
while not os.path.exists(sys.argv[2]):  # until the test says stop, however slow the backups
    i += 1
    with con:  # one transaction: a message and the counter that says how many there are
        con.execute("INSERT INTO messages VALUES (?, 'w@g.us', 'w', 'W', ?, '2026', 0)",
                    (f"w{i}", "x" * 500))
        con.execute("UPDATE router_state SET value = ? WHERE key = 'writer_count'", (str(i),))
    if i == 1:
        print("started", flush=True)
"""


def writer_count(db: Path) -> int:
    import sqlite3
    con = sqlite3.connect(db, timeout=30)
    try:
        return con.execute("SELECT count(*) FROM messages WHERE chat_jid = 'w@g.us'"
                           ).fetchone()[0]
    finally:
        con.close()


def test_backup_while_agent_writes_is_consistent(host, tmp_path):
    db = host.root / "store" / "messages.db"
    stop = tmp_path / "stop-writing"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(stop)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "started"
        results = [run_backup(host, "--no-snapshot") for _ in range(3)]
        after = writer_count(db)  # at least what the last backup's copy holds
        wait_until(lambda: writer_count(db) > after, 30,
                   "the writer to write again after the last backup")
    finally:
        stop.touch()
        writer.wait(30)
    assert writer.returncode == 0
    for n, result in enumerate(results):
        top = extract(Path(result["archive"]), tmp_path / str(n))
        import sqlite3
        con = sqlite3.connect(top / "messages.db")
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        count = con.execute("SELECT count(*) FROM messages WHERE chat_jid = 'w@g.us'").fetchone()[0]
        counter = int(con.execute(
            "SELECT value FROM router_state WHERE key = 'writer_count'").fetchone()[0])
        assert count == counter, "the copy mixes two moments of the database"
        assert manifest_of(top)["files"]["messages.db"]["tables"]["messages"] == host.rows + count
        con.close()
    # The writer really was writing during the backups.
    import sqlite3
    assert sqlite3.connect(db).execute("SELECT count(*) FROM messages WHERE chat_jid = 'w@g.us'"
                                       ).fetchone()[0] > counter


def test_dry_run_shows_plan_and_changes_nothing(host):
    # this host's pool only: other tests on the machine snapshot their own pools meanwhile
    before = sh(ZFS, "list", "-H", "-o", "name", "-t", "snapshot", "-r", host.pool_name).stdout
    res = cli(host, "backup", "--dry-run", check=True)
    assert "pg_dump --clean --if-exists" in res.stdout and "snapshot -r" in res.stdout
    assert content.MEMORY_PASSWORD not in res.stdout + res.stderr
    assert list((host.home / "backups").iterdir()) == []
    assert sh(ZFS, "list", "-H", "-o", "name", "-t", "snapshot", "-r", host.pool_name
              ).stdout == before


def test_help_explains_every_flag(host):
    res = cli(host, "--help", "backup", check=True)
    for flag in ("--root", "--output", "--skip-skills", "--no-snapshot", "--compression",
                 "--dry-run", "--json"):
        assert flag in res.stdout
