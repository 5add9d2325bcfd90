"""PostgreSQL moves with its jail: same major, the databases travel in the db jail's dataset
(pre-sync live, the increment in the window), checked by row counts; dump and restore for an
upgrade and with --pg-dump; a failure after the old db jail stopped starts it again."""
from __future__ import annotations

import json
import sys

from tests.conftest import cli
from tests.migrate_helpers import (db_state, files_state, migrate, sqlite_state, two_hosts,
                                   write_inventory)
from tests.rig.hosts import SimHost, linux_commands
from tests.rig.postgres import SUPERPASS

SKIP_ENV = ("WARDEN_DB_IP", "ZFS_POOL")
# What the agent writes between the pre-sync and the cut-over: run by the old host's
# agent_stop, so it lands after the pre-sync's snapshot and before the db jail stops.
CHANGE = """
import sys, psycopg
from dotenv import dotenv_values
env = dotenv_values(sys.argv[2], interpolate=False)
conn = psycopg.connect(host=sys.argv[1], dbname="memory_db", user="memory_user",
                       password=env["MEMORY_DB_PASSWORD"], autocommit=True)
conn.execute("INSERT INTO users (handle) VALUES ('after-presync')")
conn.execute("INSERT INTO memories (user_id, content, embedding) SELECT id, 'late memory', "
             "(SELECT embedding FROM memories ORDER BY id LIMIT 1) FROM users "
             "WHERE handle = 'after-presync'")
"""


def set_commands(h: SimHost, **commands: str) -> None:
    path = h.home / ".invoke.json"
    cfg = json.loads(path.read_text())
    cfg["clawdie"]["commands"].update(commands)
    path.write_text(json.dumps(cfg, indent=2))


def dataset_pair(rig) -> tuple[SimHost, SimHost]:
    """Both on PostgreSQL 18 in their db jails: the new host's own (empty) one is set aside
    with its jail datasets by the pre-sync."""
    old, new = two_hosts(rig, jails=("db",), new_jails=True)
    write_inventory(rig, old, new, overrides={
        "db_host": new.address, "zfs_pool": new.pool_name,
        "db_admin": {"user": "postgres", "password": SUPERPASS}})
    return old, new


def system_identifier(h: SimHost) -> int:
    with h.cluster.connect() as conn:
        return conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0]


def test_same_major_moves_postgresql_with_its_jail_and_a_late_change_arrives(rig):
    old, new = dataset_pair(rig)
    plan = json.loads(cli(old, "migrate", "--to", new.name, "--dry-run", "--json").stdout)
    assert plan["preflight"] == "ok", plan
    note = next(n for n in plan["plan"]["notes"] if n.startswith("PostgreSQL databases:"))
    assert "move with the db jail's dataset" in note and "both hosts run PostgreSQL 18" in note
    ids = [s["id"] for s in plan["plan"]["steps"]]
    assert ids.index("pg-count-old") < ids.index("stop-old-db") < ids.index("final-sync")
    assert ids.index("point-env") < ids.index("check-new-db") < ids.index("start-new-agent")
    # with messages.db and the files moving by what changed too, the window has no archive
    assert not {"final-backup", "copy-archive", "restore"} & set(ids)
    assert ids.index("install-files") < ids.index("point-env")
    forced = json.loads(cli(old, "migrate", "--to", new.name, "--dry-run", "--json",
                            "--pg-dump").stdout)
    assert any(n.startswith("PostgreSQL databases: dump and restore") and "--pg-dump" in n
               for n in forced["plan"]["notes"])
    assert "stop-old-db" not in [s["id"] for s in forced["plan"]["steps"]]

    old_id = system_identifier(old)
    script = old.base / "change.py"
    script.write_text(CHANGE)
    set_commands(old, agent_stop=f"{sys.executable} {script} {old.address} {old.root}/.env && "
                 + linux_commands()["agent_stop"])
    res, report = migrate(old, new)
    assert res.returncode == 0, res.stderr + res.stdout
    assert report["status"] == "done"
    assert report["postgres"]["path"] == "dataset"
    assert report["postgres"]["checked"]["match"] is True
    # no archive, no dump: the databases came in the dataset, the files by what changed
    assert not {"memory_db.sql", "skills_db.sql"} & set(report["moved"]["items"])
    assert report["moved"]["archive"]["sha256"] is None and not report["restore"]
    for sid in ("stop-old-agent", "pg-count-old", "stop-old-db", "final-sync", "final-files",
                "install-files", "check-new-db", "doctor"):
        assert report["downtime_steps"][sid] >= 0, sid

    # the new host's PostgreSQL is the moved cluster: same system identifier, every row,
    # the late change included, and pgvector answering a nearest-neighbour query
    assert system_identifier(new) == old_id
    moved = db_state(new)
    handles = [r[1] for r in moved["memory"]["public.users"]]
    assert "after-presync" in handles
    with new.db_connect("memory") as conn:
        near = conn.execute("SELECT content FROM memories ORDER BY embedding <-> "
                            "(SELECT embedding FROM memories WHERE content = 'late memory') "
                            "LIMIT 2").fetchall()
    assert len(near) == 2
    assert sqlite_state(new) == sqlite_state(old)
    assert files_state(new, SKIP_ENV) == files_state(old, SKIP_ENV)
    assert new.agent_running() and not old.agent_running()
    assert any("db-jail-start" in line for line in report["rollback"])

    # the old host is intact: its db jail stopped cleanly, its databases as they were
    assert not (old.home / ".rig-jails" / "db").exists()
    cli(old, "migrate-step", "db-jail-start", "--json", check=True)
    assert db_state(old) == moved
    rig.drop(old)
    rig.drop(new)


def test_pg_dump_forces_dump_and_restore_on_the_same_major(rig):
    old, new = dataset_pair(rig)
    res, report = migrate(old, new, "--pg-dump")
    assert res.returncode == 0, res.stderr + res.stdout
    assert report["postgres"]["path"] == "dump"
    assert "--pg-dump" in report["postgres"]["why"]
    assert {"memory_db.sql", "skills_db.sql"} <= set(report["moved"]["items"])
    assert "stop-old-db" not in report["downtime_steps"]
    assert db_state(new) == db_state(old)  # the old server kept running: a dump's copy
    assert (old.home / ".rig-jails" / "db").exists()
    rig.drop(old)
    rig.drop(new)


def test_a_failure_after_the_old_db_jail_stopped_starts_it_again(rig):
    old, new = dataset_pair(rig)
    before = db_state(old)
    set_commands(new, agent_start="echo the new host refuses >&2; exit 1")
    res, report = migrate(old, new)
    assert res.returncode != 0
    assert report["status"] == "failed" and report["stopped_at"] == "start-new-agent"
    assert "started the db jail (PostgreSQL) on the old host again" in report["undone"]
    assert any("left the datasets the new host received" in u for u in report["undone"])
    assert report["new_host"]["datasets_received"]
    # the old server runs again with every row; the agent too
    assert (old.home / ".rig-jails" / "db").exists()
    assert db_state(old) == before
    assert old.agent_running()
    rig.drop(old)
    rig.drop(new)
