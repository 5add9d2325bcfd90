"""`restore` on the rig: damage an installation, restore it, and find every row and file back;
a restore that fails midway leaves the installation exactly as it was."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from clawdie_ops import statedir
from tests import archive_kit as kit
from tests.conftest import cli
from tests.helpers import (CACHE, pg_objects, pg_rows, set_config, sqlite_rows, tree_digest,
                           wait_until)
from tests.rig import content
from tests.rig.hosts import linux_commands
from tests.rig.postgres import SUPERPASS, Cluster, pg14_bindir

# -- helpers --------------------------------------------------------------------------------
def write_env(h, **changes) -> None:
    h.env.update(changes)
    (h.root / ".env").write_text(content.env_text(h.env))


def start_agent(h) -> None:
    cmd = linux_commands()["agent_start"].format(root=h.root,
                                                 pidfile=h.root / "store" / "clawdie.pid")
    subprocess.run(["sh", "-c", cmd], check=True, timeout=30)
    assert h.agent_running()


def stop_agent(h) -> None:
    pidfile = h.root / "store" / "clawdie.pid"
    if not h.agent_running():
        return
    pid = int(pidfile.read_text())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def agent_tick(h) -> str | None:
    """The agent's heartbeat in messages.db: it changes while the agent writes."""
    import sqlite3
    con = sqlite3.connect(h.root / "store" / "messages.db", timeout=30)
    try:
        row = con.execute("SELECT value FROM router_state WHERE key = 'agent_tick'").fetchone()
    finally:
        con.close()
    return row[0] if row else None


def backup(h, *args: str) -> Path:
    res = cli(h, "backup", "--json", *args, check=True)
    return Path(json.loads(res.stdout)["archive"])


def without_tick(rows: dict) -> dict:
    """messages.db rows without the agent's heartbeat (it writes while it runs)."""
    out = dict(rows)
    out["router_state"] = [r for r in rows.get("router_state", []) if r[0] != "agent_tick"]
    return out


def db_state(h, key: str) -> dict:
    with h.db_connect(key) as conn:
        return {"rows": pg_rows(conn), "objects": pg_objects(conn)}


def files_state(h) -> dict:
    allow = h.home / ".config" / "clawdie-cp" / "mount-allowlist.json"
    return {"groups": tree_digest(h.root / "groups") if (h.root / "groups").exists() else {},
            "env": (h.root / ".env").read_bytes(),
            "allowlist": allow.read_bytes() if allow.exists() else None}


def state(h) -> dict:
    """Everything restore may touch, as values that compare exactly."""
    return {"sqlite": without_tick(sqlite_rows(h.root / "store" / "messages.db")),
            "memory": db_state(h, "memory"), "skills": db_state(h, "skills"),
            "files": files_state(h)}


def rolled_back(err: str) -> set[str]:
    """The items an error says were rolled back (databases may finish in any order)."""
    m = re.search(r"rolled back: (.*?)(;| -> |$)", err)
    assert m, err
    return {x.strip() for x in m.group(1).split(", ")}


def work_base(h) -> Path:
    """Where restore stages and keeps its copies for this host: its private state folder."""
    return h.state_dir / "installs" / statedir.slug(h.root)


def work_dirs(h) -> list[str]:
    base = work_base(h)
    return sorted(p.name for p in base.iterdir()) if base.exists() else []


# -- the runbook's restore --------------------------------------------------------------------
def test_restore_brings_back_a_damaged_installation(host):
    original = state(host)
    archive = backup(host)

    with host.db_connect("memory") as conn:
        conn.execute("DROP TABLE memories CASCADE")
    with host.db_connect("skills") as conn:
        conn.execute("DELETE FROM skill_chunks")
    shutil.rmtree(host.root / "groups")
    os.truncate(host.root / "store" / "messages.db", 0)
    (host.home / ".config" / "clawdie-cp" / "mount-allowlist.json").unlink()

    res = cli(host, "restore", str(archive), "--yes", "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["items"] == ["env", "messages.db", "memory_db.sql", "skills_db.sql",
                               "groups/", "mount-allowlist.json"]
    # A full restore ends like the runbook: agent started, then doctor.
    assert host.agent_running()
    checks = {c["name"]: c["status"] for c in report["doctor"]}
    assert checks["agent"] == "ok" and checks["database memory_db"] == "ok"
    conn_used = report["connections"]["memory_db.sql"]
    assert conn_used["address"] == f"{host.address}:5432"
    assert conn_used["system_identifier"] and conn_used["version"].startswith("18.")
    stop_agent(host)

    assert state(host) == original
    # The pre-restore state is kept, the staging folder is gone.
    kept = Path(report["safety"]["dir"])
    assert (kept / "store" / "messages.db").is_file()
    assert (kept / "env").read_bytes() == original["files"]["env"]
    assert not (kept.parent / "staging").exists()
    # PostgreSQL's data directory is in the db jail's dataset: its snapshot is the copy
    assert not (kept / "memory_db.sql").exists()
    snap = report["safety"]["db_snapshot"]
    assert snap.startswith(host.dataset("db") + "@clawdie-pre-restore-")
    snaps = subprocess.run(["/usr/sbin/zfs", "list", "-H", "-o", "name", "-t", "snapshot"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert snap in snaps
    # File modes: the secrets stay private.
    assert (host.root / ".env").stat().st_mode & 0o777 == 0o600


def test_restore_that_fails_midway_rolls_back_and_restarts_the_agent(host, tmp_path):
    set_config(host, pg_data_dir="")  # the dump/aside safety: PostgreSQL in no dataset
    archive = backup(host)
    broken = kit.repack(archive, tmp_path / "late-failure.tar.gz",
                        kit.edit_member("skills_db.sql", kit.fail_late))
    # The installation moves on after the backup: the restore would overwrite all this.
    with host.db_connect("memory") as conn:
        conn.execute("INSERT INTO users (handle) VALUES ('after-backup')")
        conn.execute("CREATE TABLE added_later (x int)")
        conn.execute("INSERT INTO added_later VALUES (1), (2)")
    with host.db_connect("skills") as conn:
        conn.execute("DELETE FROM skill_chunks WHERE id % 2 = 0")
    (host.root / "groups" / "main" / "CLAUDE.md").write_text("changed after the backup\n")
    write_env(host, AGENT_NAME="renamed-after-backup")
    start_agent(host)
    tick = agent_tick(host)
    wait_until(lambda: agent_tick(host) != tick, 30, "the agent to write (it holds the WAL)")
    before = state(host)

    res = cli(host, "restore", str(broken), "--yes")
    assert res.returncode == 1, res.stdout + res.stderr
    err = " ".join(res.stderr.split())
    assert "restore failed at step 'database skills_db.sql'" in err
    assert "no_such_table" in err
    assert rolled_back(err) == {"memory_db (from its pre-restore dump)", "messages.db", ".env"}
    assert "the agent was started again" in err
    assert "Traceback" not in res.stderr

    assert host.agent_running()
    stop_agent(host)
    after = state(host)
    assert after == before
    with host.db_connect("memory") as conn:
        assert conn.execute("SELECT count(*) FROM added_later").fetchone()[0] == 2
    # Nothing half-done is left: only the kept pre-restore copies.
    (work,) = work_dirs(host)
    assert sorted(p.name for p in (work_base(host) / work).iterdir()) == ["before"]


def test_restore_whose_last_step_fails_rolls_back_every_item(host):
    """The agent does not start on the restored installation: every item goes back,
    both databases from their pre-restore dumps, groups/ and the allowlist too."""
    set_config(host, pg_data_dir="")  # the dump/aside safety: PostgreSQL in no dataset
    archive = backup(host)
    with host.db_connect("skills") as conn:
        conn.execute("DELETE FROM skill_chunks")
    (host.root / "groups" / "new-after-backup").mkdir()
    (host.root / "groups" / "new-after-backup" / "x.md").write_text("x\n")
    (host.home / ".config" / "clawdie-cp" / "mount-allowlist.json").write_text("{}\n")
    before = state(host)
    cmds = linux_commands()
    cmds["agent_start"] = "echo 'agent: port 3000 already in use' >&2; exit 1"
    set_config(host, commands=cmds)
    res = cli(host, "restore", str(archive), "--yes")
    assert res.returncode == 1
    err = " ".join(res.stderr.split())
    assert "restore failed at step 'agent-start'" in err and "port 3000 already in use" in err
    assert rolled_back(err) == {"mount-allowlist.json", "groups/", ".env", "messages.db",
                                "skills_db (from its pre-restore dump)",
                                "memory_db (from its pre-restore dump)"}
    assert state(host) == before


# -- with db_admin: the pre-restore copy is the database itself, renamed aside ---------------------
def databases(h) -> dict[str, int]:
    """Database name -> oid: a database renamed keeps its oid, a new one gets another."""
    with h.cluster.connect() as admin:
        return dict(admin.execute("SELECT datname, oid::int FROM pg_database"
                                  " WHERE NOT datistemplate AND datname <> 'postgres'"))


def db_level(h, name: str) -> dict:
    """What pg_dump without --create leaves out: owner, privileges, settings, comment."""
    with h.cluster.connect() as admin:
        row = admin.execute(
            "SELECT pg_get_userbyid(datdba), datacl::text[], datconnlimit,"
            " shobj_description(oid, 'pg_database'), pg_encoding_to_char(encoding),"
            " datcollate FROM pg_database WHERE datname = %s", [name]).fetchone()
        settings = admin.execute(
            "SELECT setrole::regrole::text, setconfig FROM pg_db_role_setting s"
            " JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = %s ORDER BY 1",
            [name]).fetchall()
    owner, acl, limit, comment, enc, coll = row
    return {"owner": owner, "acl": sorted(a.split("/")[0] for a in acl or []), "limit": limit,
            "comment": comment, "encoding": enc, "collate": coll, "settings": settings}


@pytest.fixture
def admin_host(host):
    """The host with clawdie.db_admin set, and database-level details a fresh CREATE DATABASE
    would not have."""
    set_config(host, pg_data_dir="")  # the dump/aside safety: PostgreSQL in no dataset
    set_config(host, db_admin={"user": "postgres", "password": SUPERPASS})
    with host.cluster.connect() as admin:
        admin.autocommit = True
        admin.execute("CREATE ROLE reporter NOLOGIN")
        admin.execute("REVOKE CONNECT, TEMPORARY ON DATABASE memory_db FROM PUBLIC")
        admin.execute("GRANT CONNECT ON DATABASE memory_db TO reporter")
        admin.execute("ALTER DATABASE memory_db SET work_mem = '8MB'")
        admin.execute('ALTER DATABASE memory_db SET search_path = "$user", public')
        admin.execute("ALTER ROLE memory_user IN DATABASE memory_db SET statement_timeout = '5min'")
        admin.execute("ALTER DATABASE memory_db CONNECTION LIMIT 40")
        admin.execute("COMMENT ON DATABASE memory_db IS 'the agent''s memories'")
    return host


def test_restore_with_db_admin_renames_each_database_aside_instead_of_dumping_it(admin_host):
    h = admin_host
    original = state(h)
    shape = {db: db_level(h, db) for db in ("memory_db", "skills_db")}
    archive = backup(h)
    with h.db_connect("memory") as conn:
        conn.execute("INSERT INTO users (handle) VALUES ('after-backup')")
    oids = databases(h)
    # A session left open on the database (an operator's psql): it is ended, not waited for.
    idle = h.db_connect("memory")
    try:
        res = cli(h, "restore", str(archive), "--yes", "--json", "--no-start")
    finally:
        idle.close()
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert state(h) == original
    kept = report["safety"]["databases"]
    aside = {item: kept[item]["database"] for item in ("memory_db.sql", "skills_db.sql")}
    assert aside["memory_db.sql"].startswith("memory_db_pre_restore_")
    assert report["connections"]["memory_db.sql"]["kept_as"] == aside["memory_db.sql"]
    now = databases(h)
    # The aside databases are the old ones (same oid), the live ones are new.
    assert now[aside["memory_db.sql"]] == oids["memory_db"]
    assert now[aside["skills_db.sql"]] == oids["skills_db"]
    assert now["memory_db"] != oids["memory_db"]
    with h.cluster.connect(dbname=aside["memory_db.sql"]) as conn:
        assert conn.execute("SELECT count(*) FROM users WHERE handle = 'after-backup'"
                            ).fetchone()[0] == 1
    # Owner, privileges, settings, comment, limit, encoding: as they were.
    assert {db: db_level(h, db) for db in ("memory_db", "skills_db")} == shape
    # No dump taken; before/ says where the databases are and how to get them back.
    before = Path(report["safety"]["dir"])
    assert not (before / "memory_db.sql").exists()
    howto = (before / "databases.txt").read_text()
    assert f'ALTER DATABASE "{aside["memory_db.sql"]}" RENAME TO "memory_db"' in howto
    assert f'DROP DATABASE "{aside["skills_db.sql"]}"' in howto


def test_restore_with_db_admin_that_fails_renames_the_databases_back(admin_host, tmp_path):
    h = admin_host
    archive = backup(h)
    broken = kit.repack(archive, tmp_path / "late-failure.tar.gz",
                        kit.edit_member("skills_db.sql", kit.fail_late))
    with h.db_connect("memory") as conn:
        conn.execute("CREATE TABLE added_later (x int)")
    with h.db_connect("skills") as conn:
        conn.execute("DELETE FROM skill_chunks WHERE id % 2 = 0")
    start_agent(h)
    before = state(h)
    shape = {db: db_level(h, db) for db in ("memory_db", "skills_db")}
    oids = databases(h)

    res = cli(h, "restore", str(broken), "--yes")
    assert res.returncode == 1, res.stdout + res.stderr
    err = " ".join(res.stderr.split())
    assert "restore failed at step 'database skills_db.sql'" in err and "no_such_table" in err
    done = rolled_back(err)
    assert {x.split(" (")[0] for x in done} == {"memory_db", "skills_db", "messages.db", ".env"}
    assert all(x.startswith(f"{db} (renamed back from {db}_pre_restore_")
               for x in done for db in ("memory_db", "skills_db") if x.startswith(db))
    assert "the agent was started again" in err and "Traceback" not in res.stderr
    assert h.agent_running()
    stop_agent(h)
    # The very same databases are back under their names; nothing else is left.
    assert databases(h) == oids
    assert state(h) == before
    assert {db: db_level(h, db) for db in ("memory_db", "skills_db")} == shape
    (work,) = work_dirs(h)
    assert sorted(p.name for p in (work_base(h) / work).iterdir()) == ["before"]
    assert list((work_base(h) / work / "before").glob("*.sql")) == []
    assert not (work_base(h) / work / "before" / "databases.txt").exists()


# -- archives that must be refused before anything changes -------------------------------------
BAD = {
    "flipped byte": lambda good, d: kit.flip_byte(good, d / "flipped.tar.gz", 0.5),
    "changed member": lambda good, d: kit.repack(
        good, d / "changed.tar.gz",
        kit.edit_member("groups/main/config.json", lambda b: b.replace(b"main", b"mAin")),
        sign=False),
    "cut-off tail": lambda good, d: kit.cut_tail(good, d / "cut.tar.gz", 0.7),
    "dot-dot member": lambda good, d: kit.repack(
        good, d / "dotdot.tar.gz", kit.add_members(kit.file_member("{top}/../../evil.txt"))),
    "symlink member": lambda good, d: kit.repack(
        good, d / "symlink.tar.gz",
        kit.add_members(kit.link_member("{top}/groups/main/escape", "/tmp"),
                        kit.file_member("{top}/groups/main/escape/evil.txt"))),
    "absolute member": lambda good, d: kit.repack(
        good, d / "absolute.tar.gz", kit.add_members(kit.file_member("/tmp/evil.txt"))),
    "duplicate member": lambda good, d: kit.repack(
        good, d / "duplicate.tar.gz", kit.add_members(kit.file_member("{top}/env", b"X=1\n"))),
    "device member": lambda good, d: kit.repack(
        good, d / "device.tar.gz", kit.add_members(kit.device_member("{top}/groups/null"))),
    "hard link member": lambda good, d: kit.repack(
        good, d / "hardlink.tar.gz",
        kit.add_members(kit.link_member("{top}/groups/passwd", "/etc/passwd", hard=True))),
    "outside the top folder": lambda good, d: kit.repack(
        good, d / "sibling.tar.gz", kit.add_members(kit.file_member("other/evil.txt"))),
}
EXPECT = {"flipped byte": "", "changed member": "groups/main/config.json",
          "cut-off tail": "", "dot-dot member": "../../evil.txt", "symlink member": "escape",
          "absolute member": "/tmp/evil.txt", "duplicate member": "appears twice",
          "device member": "device", "hard link member": "hard link",
          "outside the top folder": "outside the archive's top folder"}


@pytest.fixture(scope="module")
def victim(rig, tmp_path_factory):
    """One host and its good archive; every refusal test checks it is left unchanged."""
    h = rig.new_host(rows=40)
    (h.home / "backups").mkdir(exist_ok=True)
    good = backup(h)
    yield h, good, tmp_path_factory.mktemp("bad")
    rig.drop(h)


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_archive_is_refused_before_anything_changes(victim, kind):
    h, good, d = victim
    bad = BAD[kind](good, d)
    before = state(h)
    res = cli(h, "restore", str(bad), "--yes")
    assert res.returncode == 1, res.stdout
    err = " ".join(res.stderr.split())
    assert "Traceback" not in res.stderr
    assert ("ArchiveUnsafe" not in err) and err.startswith("error:")
    assert EXPECT[kind] in err, err
    if kind in ("flipped byte", "cut-off tail"):
        assert "damaged" in err or "cut short" in err or "fails verification" in err
    assert state(h) == before
    assert work_dirs(h) == []
    assert not Path("/tmp/evil.txt").exists() and not (h.base / "evil.txt").exists()
    # inspect refuses it the same way, with the same named item.
    res = cli(h, "inspect", str(bad))
    assert res.returncode == 1 and EXPECT[kind] in " ".join(res.stderr.split())


def test_restore_needs_yes_without_a_terminal(victim):
    h, good, _ = victim
    before = state(h)
    res = cli(h, "restore", str(good))
    assert res.returncode == 3
    assert "needs confirmation" in res.stderr and "--yes" in res.stderr
    assert state(h) == before and work_dirs(h) == []


def test_dry_run_prints_every_step_and_changes_nothing(victim):
    h, good, _ = victim
    res = cli(h, "restore", str(good), "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "pg_dump --clean --if-exists" not in res.stdout  # the copy is the db snapshot
    set_config(h, pg_data_dir="")  # PostgreSQL in no dataset: the copy is a dump, or
    res = cli(h, "restore", str(good), "--dry-run")  # with db_admin, a rename
    assert res.returncode == 0, res.stderr
    assert "pg_dump --clean --if-exists" in res.stdout  # no db_admin: the copy is a dump
    set_config(h, db_admin={"user": "postgres", "password": SUPERPASS})
    try:
        before = state(h)
        res = cli(h, "restore", str(good), "--dry-run")
        assert res.returncode == 0, res.stderr
        out = res.stdout
        for expected in ("psql -X -q --single-transaction -v ON_ERROR_STOP=1",
                         'ALTER DATABASE "memory_db" RENAME TO "memory_db_pre_restore_',
                         'CREATE DATABASE "skills_db" OWNER "skills_user"', f"{h.root}/.env",
                         f"{h.root}/store/messages.db", f"{h.root}/groups/",
                         "mount-allowlist.json", "zfs snapshot -r", "fake_agent.py",
                         f"at {h.address}:5432: PostgreSQL 18."):
            assert expected in out, expected
        assert "pg_dump --clean" not in out
        for secret in (content.MEMORY_PASSWORD, content.SKILLS_PASSWORD, SUPERPASS,
                       h.env["ANTHROPIC_API_KEY"]):
            assert secret not in out + res.stderr
        assert state(h) == before and work_dirs(h) == []
        res = cli(h, "restore", str(good), "--dry-run", "--json", "--only", "groups,env")
        doc = json.loads(res.stdout)
        assert doc["dry_run"] and doc["items"] == ["env", "groups/"]
        assert not any("psql" in line for line in doc["plan"])
    finally:
        set_config(h, db_admin={"user": "", "password": ""}, pg_data_dir=h.pg_data_dir)


def test_only_restores_the_named_items(victim):
    h, good, _ = victim
    groups_before = tree_digest(h.root / "groups")
    (h.root / "groups" / "main" / "CLAUDE.md").write_text("edited\n")
    with h.db_connect("memory") as conn:
        conn.execute("INSERT INTO users (handle) VALUES ('stays')")
    res = cli(h, "restore", str(good), "--yes", "--only", "groups/", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["items"] == ["groups/"]
    assert tree_digest(h.root / "groups") == groups_before
    with h.db_connect("memory") as conn:  # untouched
        assert conn.execute("SELECT count(*) FROM users WHERE handle = 'stays'").fetchone()[0]
    assert not h.agent_running()  # it was not running and this was not a full restore
    res = cli(h, "restore", str(good), "--yes", "--only", "nonsense")
    assert res.returncode == 1 and "--only 'nonsense' is not an item" in res.stderr


# -- other hosts, other names, other versions --------------------------------------------------
def test_restore_onto_a_host_with_other_db_names_and_users(rig, host):
    """A new host's .env names other databases and users, which do not exist yet: restore
    creates them with the admin connection and reports the server it used."""
    archive = backup(host)
    original = {"memory": db_state(host, "memory"), "skills": db_state(host, "skills"),
                "sqlite": sqlite_rows(host.root / "store" / "messages.db")}
    new = rig.new_host(populated=False, datasets=False, with_roles=False)
    try:
        env = dict(new.env, MEMORY_DB_NAME="mem store", MEMORY_DB_USER="Mem-Owner",
                   SKILLS_DB_NAME="skills2", SKILLS_DB_USER="sk2")
        new.env = env
        (new.root / "store").mkdir(parents=True)
        (new.root / ".env").write_text(content.env_text(env))
        set_config(new, db_admin={"user": "postgres", "password": SUPERPASS})
        # The new host trusts the old one's signing key, as its operator would set it up.
        public = json.loads(cli(host, "keys", "--json", check=True).stdout)["signing"]
        cli(new, "keys", "--trust", public["public"], check=True)
        res = cli(new, "restore", str(archive), "--yes", "--json", "--only",
                  "messages.db,memory_db.sql,skills_db.sql,groups/,mount-allowlist.json")
        assert res.returncode == 0, res.stderr
        report = json.loads(res.stdout)
        mem = report["connections"]["memory_db.sql"]
        assert mem["database"] == "mem store" and mem["user"] == "Mem-Owner"
        assert mem["address"] == f"{new.address}:5432"
        assert mem["created_role"] and mem["created_database"]
        assert mem["owner_map"] == {"memory_user": "Mem-Owner"}
        with new.cluster.connect() as admin:
            ident = admin.execute("SELECT system_identifier::text FROM pg_control_system()"
                                  ).fetchone()[0]
        assert mem["system_identifier"] == ident
        assert any(n.startswith("memory_db.sql comes from another PostgreSQL server")
                   for n in report["notes"])
        assert not report["agent"]["started"]
        for key, db, user in (("memory", "mem store", "Mem-Owner"), ("skills", "skills2", "sk2")):
            pw = content.MEMORY_PASSWORD if key == "memory" else content.SKILLS_PASSWORD
            with new.cluster.connect(dbname=db, user=user, password=pw) as conn:
                assert pg_rows(conn) == original[key]["rows"]
                assert pg_objects(conn) == original[key]["objects"]
                owners = {r[0] for r in conn.execute(
                    "SELECT tableowner FROM pg_tables WHERE schemaname = 'public'")}
                assert owners == {user}
        assert sqlite_rows(new.root / "store" / "messages.db") == original["sqlite"]
        assert tree_digest(new.root / "groups") == tree_digest(host.root / "groups")
    finally:
        rig.drop(new)


def test_connection_details_come_from_the_restored_env(host):
    """The host's .env is broken (wrong names); the archive's env, restored first, is the one
    used. An archive without skills_db regenerates it with the runbook's command."""
    archive = backup(host, "--skip-skills")
    original = db_state(host, "memory")
    write_env(host, MEMORY_DB_NAME="no_such_db", MEMORY_DB_USER="nobody")
    res = cli(host, "restore", str(archive), "--yes", "--json", "--no-start")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["connections"]["memory_db.sql"]["database"] == "memory_db"
    assert report["regenerated"] == ["skills_db"]
    assert any("this host's .env said no_such_db as nobody" in n for n in report["notes"])
    assert (host.root / "skills-regenerated").read_text().strip() == "regenerate skills"
    assert "MEMORY_DB_NAME=memory_db" in (host.root / ".env").read_text()
    assert db_state(host, "memory") == original
    assert not host.agent_running()


@pytest.fixture
def pg14(rig, host):
    """A PostgreSQL 14 server beside the host's own 18, as an older db jail would run."""
    cluster = Cluster(host.base / "pg14" / "data", f"{rig.net}.249", bindir=pg14_bindir(CACHE))
    cluster.init()
    cluster.start()
    yield cluster
    cluster.stop()


def test_dump_from_a_newer_pg_dump_is_refused_before_anything_runs(host, pg14):
    """The .env points at a PostgreSQL 14 server; the dumps come from pg_dump 18."""
    archive = backup(host)
    cluster = pg14
    with cluster.connect() as admin:
        content.create_databases(admin)
    write_env(host, WARDEN_DB_IP=cluster.address)
    before = {"env": (host.root / ".env").read_bytes(),
              "sqlite": sqlite_rows(host.root / "store" / "messages.db")}
    res = cli(host, "restore", str(archive), "--yes",
              "--only", "messages.db,memory_db.sql,skills_db.sql")
    assert res.returncode == 1
    err = " ".join(res.stderr.split())
    assert "memory_db.sql was written by pg_dump 18." in err
    assert f"newer than the PostgreSQL 14.22 server at {cluster.address}:5432" in err
    assert "nothing was changed" in err
    assert work_dirs(host) == []
    assert (host.root / ".env").read_bytes() == before["env"]
    assert sqlite_rows(host.root / "store" / "messages.db") == before["sqlite"]
    with cluster.connect(dbname="memory_db") as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                            ).fetchone()[0] == 0


# -- a host prepared by the runbook's step 1, PostgreSQL 18 with pgvector ----------------------
def prepared_host(rig):
    """A new host as its install leaves it: the roles made with that host's own passwords,
    empty databases, memory_db without pgvector yet; its .env (as the migration's point-env
    step leaves it: this host's addresses) holds the archive's database passwords."""
    new = rig.new_host(populated=False, datasets=False, with_roles=False)
    with new.cluster.connect() as admin:
        admin.execute("CREATE ROLE memory_user LOGIN PASSWORD 'the new host''s own'")
        admin.execute("CREATE ROLE skills_user LOGIN PASSWORD 'another of its own'")
        admin.execute("CREATE DATABASE memory_db OWNER memory_user")
        admin.execute("CREATE DATABASE skills_db OWNER skills_user")
        admin.execute("CREATE ROLE helper LOGIN CREATEROLE CREATEDB PASSWORD 'helper pw'")
    (new.root / "store").mkdir(parents=True)
    (new.root / ".env").write_text(content.env_text(new.env))
    return new


def test_restore_onto_a_prepared_host_sets_the_archives_passwords_and_makes_pgvector(rig, host):
    archive = backup(host)
    original = {k: db_state(host, k) for k in ("memory", "skills")}
    new = prepared_host(rig)
    try:
        # The new host trusts the old one's signing key, as its operator would set it up.
        public = json.loads(cli(host, "keys", "--json", check=True).stdout)["signing"]
        cli(new, "keys", "--trust", public["public"], check=True)
        only = ("--only", "messages.db,memory_db.sql,skills_db.sql")
        # Without db_admin: the role's password differs and nothing may change it.
        res = cli(new, "restore", str(archive), "--yes", *only)
        assert res.returncode == 1 and "Traceback" not in res.stderr
        assert "refused the password" in res.stderr and "db_admin" in res.stderr
        # A db_admin that is no superuser: may set passwords, may not make pgvector.
        set_config(new, db_admin={"user": "helper", "password": "helper pw"})
        res = cli(new, "restore", str(archive), "--yes", *only)
        err = " ".join(res.stderr.split())
        assert res.returncode == 1, res.stdout
        assert "clawdie.db_admin (helper) is not a superuser" in err
        assert "extension vector" in err and "nothing was changed" in err
        assert work_dirs(new) == [] and not (new.root / "store" / "messages.db").exists()
        with new.cluster.connect(dbname="memory_db") as conn:
            assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'vector'"
                                ).fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                                ).fetchone()[0] == 0

        set_config(new, db_admin={"user": "postgres", "password": SUPERPASS})
        dry = cli(new, "restore", str(archive), "--dry-run", *only)
        assert dry.returncode == 0, dry.stderr
        assert "ALTER ROLE \"memory_user\" PASSWORD '***'" in dry.stdout
        assert 'CREATE EXTENSION IF NOT EXISTS "vector" WITH SCHEMA "public" in memory_db' \
            in dry.stdout
        res = cli(new, "restore", str(archive), "--yes", "--json", *only)
        assert res.returncode == 0, res.stderr
        report = json.loads(res.stdout)
        mem = report["connections"]["memory_db.sql"]
        assert mem["password_set"] and mem["created_extensions"] == ["vector"]
        assert report["connections"]["skills_db.sql"]["extensions"] == []
        for secret in (content.MEMORY_PASSWORD, content.SKILLS_PASSWORD, SUPERPASS):
            assert secret not in res.stdout + res.stderr + dry.stdout + dry.stderr
        # The restored .env's passwords log in; every row is back, vectors by their text.
        for key in ("memory", "skills"):
            assert db_state(new, key) == original[key]
        with new.cluster.connect(dbname="memory_db") as conn:
            assert conn.execute("SELECT pg_get_userbyid(extowner) FROM pg_extension"
                                " WHERE extname = 'vector'").fetchone()[0] == "postgres"
            assert {r[0] for r in conn.execute("SELECT tableowner FROM pg_tables"
                                               " WHERE schemaname = 'public'")} == {"memory_user"}
            assert conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname ="
                                " 'memories_embedding'").fetchone()[0].endswith(
                "USING hnsw (embedding vector_cosine_ops)")
    finally:
        rig.drop(new)


def test_restore_and_drill_both_refuse_a_dump_only_a_superuser_could_replay(host, tmp_path):
    """The drill replays as the archive's app user, as restore does: a dump statement that
    needs a superuser fails both (the drill used to pass it, replaying as superuser)."""
    archive = backup(host)
    needs_super = kit.repack(archive, tmp_path / "superuser-only.tar.gz", kit.edit_member(
        "memory_db.sql", lambda b: b.replace(b"SET row_security = off;\n",
                                             b"SET row_security = off;\n"
                                             b"SET session_replication_role = replica;\n", 1)))
    before = state(host)
    drill = cli(host, "drill", str(needs_super), "--json", env={"TMPDIR": str(tmp_path)})
    assert drill.returncode != 0, drill.stdout
    checks = {c["name"]: c for c in json.loads(drill.stdout)["checks"]}
    assert checks["replay memory_db.sql"]["status"] == "fail"
    assert "session_replication_role" in checks["replay memory_db.sql"]["detail"]
    assert checks["replay skills_db.sql"]["status"] == "pass"
    assert checks["cleanup"]["status"] == "pass"
    res = cli(host, "restore", str(needs_super), "--yes", "--no-start")
    assert res.returncode == 1 and "session_replication_role" in res.stderr
    assert "rolled back" in res.stderr
    assert state(host) == before
