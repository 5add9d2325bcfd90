"""`migrate --to NEW` on the two-host rig: everything moves, the agent runs on the new host."""
from __future__ import annotations

import json
import os
import subprocess

from clawdie_ops import __version__
from clawdie_ops.actions.migrate.report import describe_report
from tests.conftest import CLI, cli
from tests.migrate_helpers import (NEW_CRONTAB, OLD_CRONTAB, dataset_state, db_state,
                                   files_state, install_entry, journal_path, migrate, snapshots,
                                   sqlite_state, two_hosts, whole_state, write_inventory)
from tests.rig.postgres import SUPERPASS


def test_dry_run_prints_every_host_and_command_masks_secrets_and_changes_nothing(rig):
    old, new = two_hosts(rig)
    write_inventory(rig, old, new, overrides={
        "db_host": new.address, "zfs_pool": new.pool_name,
        "db_admin": {"user": "postgres", "password": SUPERPASS}})
    before = whole_state(old)
    res = cli(old, "migrate", "--to", new.name, "--dry-run")
    assert res.returncode == 0, res.stderr
    text = res.stdout
    for step in ("check-old", "check-new", "presync", "stop-old-agent", "final-backup",
                 "final-sync", "copy-archive", "trust-old-key", "restore", "point-env",
                 "start-new-agent",
                 "doctor", "pause-old-schedule", "resume-new-schedule"):
        assert f"[{step}]" in text
    assert new.alias in text and "replicate --to" in text and "restore" in text
    assert "preflight: ok" in text
    assert SUPERPASS not in text + res.stderr and "***" in text
    assert old.env["MEMORY_DB_PASSWORD"] not in text + res.stderr
    # nothing changed on either host, and no journal was written
    assert old.agent_running() and whole_state(old) == before
    assert not journal_path(old, new).exists()
    assert (old.home / "crontab").read_text() == OLD_CRONTAB
    assert (new.home / "crontab").read_text() == NEW_CRONTAB
    assert not (new.root / ".env").exists()
    assert all(not v for v in snapshots(new).values())
    as_json = cli(old, "migrate", "--to", new.name, "--dry-run", "--json")
    plan = json.loads(as_json.stdout)
    assert plan["dry_run"] and plan["preflight"] == "ok"
    assert [s["where"] for s in plan["plan"]["steps"]].count("new") >= 7
    assert SUPERPASS not in as_json.stdout
    # without --yes and without a terminal: refused before anything runs
    unconfirmed = cli(old, "migrate", "--to", new.name)
    assert unconfirmed.returncode == 3 and "--yes" in unconfirmed.stderr
    assert old.agent_running() and not journal_path(old, new).exists()
    rig.drop(old)
    rig.drop(new)


def test_migrate_moves_everything_and_the_agent_runs_on_the_new_host(rig):
    # A fresh new box: PostgreSQL but not the roles (an admin login creates them), and no
    # clawdie-ops (migrate installs this version there).
    old, new = two_hosts(rig, with_roles=False, new_has_tool=False)
    write_inventory(rig, old, new, overrides={
        "db_host": new.address, "zfs_pool": new.pool_name,
        "db_admin": {"user": "postgres", "password": SUPERPASS}}, install=install_entry())
    venv = new.home / ".local" / "clawdie-ops"
    dry = cli(old, "migrate", "--to", new.name, "--dry-run")
    assert dry.returncode != 0
    assert "clawdie-ops is not installed on" in dry.stdout + dry.stderr
    assert "the real run installs clawdie-ops" in dry.stdout + dry.stderr
    assert not venv.exists()
    refused = cli(old, "migrate", "--to", new.name, "--yes", "--no-install")
    assert refused.returncode != 0 and "--no-install was given" in refused.stderr
    assert not venv.exists() and old.agent_running()

    res, report = migrate(old, new)
    assert res.returncode == 0, res.stderr + res.stdout
    assert report["status"] == "done"
    # clawdie-ops was installed in its own virtualenv on the new host, and ran the restore
    assert report["tools"]["new"] == {"tool": str(venv / "bin" / "clawdie-ops"),
                                      "version": __version__, "how": "installed"}
    assert report["tools"]["old"]["how"] == "present"
    assert f"  installed clawdie-ops {__version__} on the new host: {venv}/bin/clawdie-ops" in \
        describe_report(report)
    version = subprocess.run([venv / "bin" / "clawdie-ops", "--version"], capture_output=True,
                             text=True, check=True, env={"PATH": "/usr/bin:/bin"})
    assert version.stdout.strip() == f"clawdie-ops {__version__}"
    assert report["to"]["name"] == new.name
    assert any(str(venv / "bin" / "clawdie-ops") in line for line in report["rollback"])

    # the agent moved
    assert new.agent_running() and not old.agent_running()
    # SQLite, both databases, files and datasets: row for row, byte for byte
    assert sqlite_state(new) == sqlite_state(old)
    assert db_state(new) == db_state(old)
    assert files_state(new, ("WARDEN_DB_IP", "ZFS_POOL")) == \
        files_state(old, ("WARDEN_DB_IP", "ZFS_POOL"))
    assert dataset_state(new) == dataset_state(old)
    old_snaps, new_snaps = snapshots(old), snapshots(new)
    for jail, names in old_snaps.items():
        assert names and names <= new_snaps[jail], f"{jail}: snapshot history not received"
    # the new host's .env names its own PostgreSQL and pool, not the old host's
    env = (new.root / ".env").read_text()
    assert f"WARDEN_DB_IP={new.address}" in env and f"ZFS_POOL={new.pool_name}" in env
    assert report["env_changes"]["WARDEN_DB_IP"] == {"from": old.address, "to": new.address}
    # schedule handoff: old paused, new active
    assert (old.home / "crontab").read_text().count("#clawdie-paused# ") == 2
    assert "#clawdie-paused#" not in (new.home / "crontab").read_text()

    # the report: what moved, the downtime, how to roll back
    assert report["downtime_s"] > 0 and report["agent_stopped_at"] and report["healthy_at"]
    assert set(report["moved"]["items"]) >= {"messages.db", "memory_db.sql", "skills_db.sql",
                                             "env", "groups/"}
    assert report["moved"]["archive"]["sha256"] and report["moved"]["dataset_bytes"] > 0
    assert len(report["moved"]["datasets"]) == 4
    assert report["copy"]["attempts"] == 1
    assert any("agent-start" in line for line in report["rollback"])
    assert report["restore"]["connections"]["memory_db.sql"]["created_role"] is True
    # the trust came along: the new host trusts the old host's signing key, and only its
    # public half (the new host signs its own backups with a key of its own)
    old_key = json.loads(cli(old, "keys", "--json", check=True).stdout)["signing"]
    trusted = (new.home / ".config" / "clawdie-ops" / "trusted_keys").read_text()
    assert old_key["public"].split()[1] in trusted
    assert not (new.home / ".config" / "clawdie-ops" / "signing.key").exists()
    assert SUPERPASS not in res.stdout + res.stderr
    assert old.env["MEMORY_DB_PASSWORD"] not in res.stdout + res.stderr
    journal = json.loads(journal_path(old, new).read_text())
    assert journal["status"] == "done"
    assert SUPERPASS not in journal_path(old, new).read_text()
    assert old.env["MEMORY_DB_PASSWORD"] not in journal_path(old, new).read_text()

    # the same command again: nothing to do, nothing touched
    again = cli(old, "migrate", "--to", new.name, "--yes")
    assert again.returncode == 0, again.stderr
    assert "completed earlier" in again.stdout
    assert new.agent_running() and not old.agent_running()
    rig.drop(old)
    rig.drop(new)


def test_migrate_from_a_third_machine_relays_over_ssh_to_both_hosts(rig):
    """The operator's laptop: neither host is this machine (--from OLD --to NEW)."""
    old, new = two_hosts(rig)
    laptop = rig.base / "laptop"
    laptop.mkdir()
    (laptop / ".invoke.json").write_text(json.dumps({"clawdie": {
        "ssh_config": str(rig.ssh_config),
        "hosts": {
            # the old host runs replicate itself: it needs the ssh config naming the new one
            "oldbox": {"ssh": old.alias, "overrides": {"ssh_config": str(rig.ssh_config)}},
            "newbox": {"ssh": new.alias, "overrides": {"db_host": new.address,
                                                       "zfs_pool": new.pool_name}}}}}))
    env = {k: v for k, v in os.environ.items() if k != "CLAWDIE_ROOT"}
    env["HOME"] = str(laptop)
    res = subprocess.run([CLI, "migrate", "--from", "oldbox", "--to", "newbox", "--yes",
                          "--json"], env=env, cwd=laptop, capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=300)
    assert res.returncode == 0, res.stderr + res.stdout
    report = json.loads(res.stdout)
    assert report["status"] == "done" and report["downtime_s"] > 0
    assert new.agent_running() and not old.agent_running()
    assert sqlite_state(new) == sqlite_state(old)
    assert db_state(new) == db_state(old)
    assert dataset_state(new) == dataset_state(old)
    assert (laptop / ".clawdie-ops" / "migrations" / "oldbox--to--newbox.json").exists()
    assert not (old.home / ".clawdie-ops").exists()
    rig.drop(old)
    rig.drop(new)


def test_migrate_from_postgresql_15_onto_a_host_prepared_on_18_upgrades_it(rig):
    """The runbook's step 1 on the new host: PostgreSQL 18 with pgvector, the roles made by
    its install with that host's own passwords, empty databases. No --force: the restore in
    the window gives the roles the archive's passwords (as db_admin), so the restored .env
    works; the old host's PostgreSQL 15 data arrives row for row in 18."""
    old, new = two_hosts(rig, old_pg=15, prepared=True, jails=("db",))
    assert (old.cluster.major, new.cluster.major) == (15, 18)
    write_inventory(rig, old, new, overrides={
        "db_host": new.address, "zfs_pool": new.pool_name,
        "db_admin": {"user": "postgres", "password": SUPERPASS}})
    dry = cli(old, "migrate", "--to", new.name, "--dry-run", "--json")
    plan = json.loads(dry.stdout)
    assert plan["preflight"] == "ok", dry.stdout + dry.stderr
    assert any("an upgrade from PostgreSQL 15." in n and "to 18." in n
               for n in plan["plan"]["notes"])
    # a data directory runs only on its own major: the databases go by dump and restore
    assert any(n.startswith("PostgreSQL databases: dump and restore") and
               "an upgrade from PostgreSQL 15 to 18" in n for n in plan["plan"]["notes"])

    res, report = migrate(old, new)
    assert res.returncode == 0, res.stderr + res.stdout
    assert report["status"] == "done"
    assert report["postgres"]["path"] == "dump" and "upgrade" in report["postgres"]["why"]
    assert {"memory_db.sql", "skills_db.sql"} <= set(report["moved"]["items"])
    versions = next(c for c in report["checks"] if c["name"] == "PostgreSQL versions")
    assert "an upgrade from PostgreSQL 15." in versions["detail"]
    mem = report["restore"]["connections"]["memory_db.sql"]
    assert mem["version"].startswith("18.") and mem["password_set"]
    assert db_state(new) == db_state(old)  # logs in with the restored .env's passwords
    assert sqlite_state(new) == sqlite_state(old)
    assert new.agent_running() and not old.agent_running()
    assert SUPERPASS not in res.stdout + res.stderr
    assert old.env["MEMORY_DB_PASSWORD"] not in res.stdout + res.stderr
    rig.drop(old)
    rig.drop(new)
