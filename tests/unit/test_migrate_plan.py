"""The migration plan, inventory and masking: decisions made before anything connects."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from clawdie_ops.config import settings as config, inventory
from clawdie_ops.actions.migrate import plan as migrate
from clawdie_ops.actions.migrate.report import describe_report
from clawdie_ops.errors import ConfigError
from clawdie_ops.config.masking import MASK, is_secret_key, mask_text, masked

ADMIN_PW = "adm1n s3cret 'x'"


def cfg(**hosts) -> dict:
    section = config.section({})
    section["hosts"] = hosts
    section["ssh_config"] = "/etc/clawdie/ssh_config"
    return section


NEWBOX = {"ssh": "newbox", "root": "/home/clawdie/clawdie-ai", "peer_ssh": "newbox.lan",
          "overrides": {"zfs_pool": "tank", "db_host": "10.0.0.3",
                        "db_admin": {"user": "postgres", "password": ADMIN_PW}}}


def plan(opts: migrate.Options | None = None, **hosts) -> migrate.Plan:
    return migrate.make_plan(cfg(**(hosts or {"newbox": NEWBOX})),
                             opts or migrate.Options(to="newbox"), Path("/home/op"))


def test_plan_has_the_four_phases_in_order_with_a_host_for_every_step():
    p = plan()
    phases = [s.phase for s in p.steps]
    assert phases == sorted(phases, key=list(migrate.PHASES).index)
    ids = [s.id for s in p.steps]
    assert ids.index("presync") < ids.index("stop-old-agent") < ids.index("final-sync") \
        < ids.index("final-backup") < ids.index("copy-archive") < ids.index("restore") \
        < ids.index("point-env") < ids.index("start-new-agent") < ids.index("doctor") \
        < ids.index("pause-old-schedule")
    pg_steps = ("pg-count-old", "stop-old-db", "check-new-db")  # the dataset path's only
    assert [s.id for s in p.steps if s.phase == "downtime"] == \
        [s for s in migrate.DOWNTIME if s not in pg_steps]
    assert {s.where for s in p.steps} == {"old", "new", "here"}
    assert all(s.command for s in p.steps)


def test_the_old_host_here_runs_this_very_clawdie_ops_and_the_new_host_its_own():
    p = plan()
    check_old = next(s for s in p.steps if s.id == "check-old")
    check_new = next(s for s in p.steps if s.id == "check-new")
    assert check_old.command.startswith(f"{sys.executable} -m clawdie_ops migrate-step check")
    assert check_new.command.startswith("clawdie-ops migrate-step check --role target --stdin")
    restore = next(s for s in p.steps if s.id == "restore")
    assert "-f '<tmp>/config.json' restore '<archive>' --yes --no-start --json" in \
        restore.command
    presync = next(s for s in p.steps if s.id == "presync")
    assert "replicate --to newbox --replace-existing --aside-suffix pre-migrate-" in \
        presync.command and presync.command.endswith("--yes --json --jobs 2")  # --sync-jobs
    assert p.journal == Path("/home/op/.clawdie-ops/migrations/local--to--newbox.json")


def test_the_new_hosts_own_jail_datasets_are_set_aside_without_force_and_named():
    p = plan(migrate.Options(to="newbox", aside_suffix="pre-migrate-20261129-101500"))
    presync = next(s for s in p.steps if s.id == "presync")
    # set aside (renamed, kept), never replaced: no --force needed, no --force-delete ever
    assert "--replace-existing --aside-suffix pre-migrate-20261129-101500" in presync.command
    assert "NAME.pre-migrate-20261129-101500" in presync.why
    assert "force-delete" not in "\n".join(p.describe())


def test_plan_text_and_data_never_show_a_password():
    p = plan()
    text = "\n".join(p.describe())
    assert ADMIN_PW not in text and MASK in text
    assert "newbox" in text and "tank" in text and "10.0.0.3" in text
    assert ADMIN_PW not in repr(p.as_dict())
    assert p.as_dict()["to"]["overrides"]["db_admin"]["password"] == MASK


def test_plan_refuses_a_new_host_that_is_this_machine_or_the_old_one():
    with pytest.raises(ConfigError, match="this machine"):
        plan(migrate.Options(to="local"))
    with pytest.raises(ConfigError, match="same host"):
        plan(migrate.Options(to="newbox", from_="newbox"))


def test_a_host_not_in_the_inventory_is_an_ssh_alias_with_its_own_config():
    p = plan(migrate.Options(to="otherbox"))
    assert p.new.ssh == "otherbox" and not p.new.in_inventory
    assert any("not in clawdie.hosts" in n for n in p.notes)


def test_inventory_rejects_unknown_keys_settings_and_unsafe_names():
    with pytest.raises(ConfigError, match="unknown key.*sshalias"):
        inventory.hosts({"hosts": {"a": {"sshalias": "x"}}})
    with pytest.raises(ConfigError, match="unknown setting.*zpool"):
        inventory.hosts({"hosts": {"a": {"overrides": {"zpool": "tank"}}}})
    with pytest.raises(ConfigError, match="not a valid"):
        inventory.hosts({"hosts": {"a": {"ssh": "-oProxyCommand=evil"}}})
    with pytest.raises(ConfigError, match="not a valid"):
        inventory.hosts({"hosts": {"a": {"ssh": "new box"}}})
    with pytest.raises(ConfigError, match="mapping"):
        inventory.hosts({"hosts": ["a"]})


def test_inventory_overrides_carry_the_root_and_merge_command_templates():
    h = inventory.resolve(cfg(newbox=NEWBOX), "newbox")
    over = h.settings_overrides()
    assert over["root"] == "/home/clawdie/clawdie-ai" and over["zfs_pool"] == "tank"
    assert h.reach_from_peer == "newbox.lan"
    merged = inventory.apply(config.section({}), {"commands": {"agent_stop": "service x stop"},
                                                  "zfs_pool": "tank"})
    assert merged["commands"]["agent_stop"] == "service x stop"
    assert merged["commands"]["agent_start"] == config.DEFAULT_COMMANDS["agent_start"]
    assert merged["zfs_pool"] == "tank"


def test_no_from_means_this_machine_or_its_local_inventory_entry():
    assert inventory.resolve(cfg(), None).local
    here = inventory.resolve(cfg(oldbox={"ssh": "local", "root": "/srv/c"}), None)
    assert here.name == "oldbox" and here.local and here.root == "/srv/c"


def test_masking_covers_the_keys_a_clawdie_env_and_config_hold():
    for key in ("MEMORY_DB_PASSWORD", "password", "ANTHROPIC_API_KEY", "TELEGRAM_BOT_TOKEN",
                "api_key", "client_secret"):
        assert is_secret_key(key), key
    for key in ("db_host", "ssh", "keyboard", "zfs_pool", "monkey_count"):
        assert not is_secret_key(key), key
    data = {"a": {"db_admin": {"user": "pg", "password": "pw"}}, "list": [{"token": "t"}],
            "empty_password": ""}
    assert masked(data) == {"a": {"db_admin": {"user": "pg", "password": MASK}},
                            "list": [{"token": MASK}], "empty_password": ""}
    assert mask_text("psql with pw s3cr3t!", ["s3cr3t!", "", "ab"]) == f"psql with pw {MASK}"


def test_report_for_a_person_says_where_it_stopped_and_what_the_new_host_holds():
    report = {"status": "failed", "from": {"name": "old"}, "to": {"name": "new"},
              "stopped_at": "restore", "stopped_on": "new new (rig-h2)",
              "error": "restore failed", "undone": ["started the agent on the old host again"],
              "problems": [], "old_host": {"changed": "nothing", "added": ["/b/a.tar.zst"]},
              "new_host": {"archive": "/b/x.tar.zst", "restored": False,
                           "datasets": {"tank/c/jails/db": ["s1"]}},
              "checks": [], "warnings": [], "journal": "/j.json"}
    text = "\n".join(describe_report(report))
    assert "stopped at: restore" in text and "undone: started the agent" in text
    assert "new host holds: archive=/b/x.tar.zst" in text
    assert "tank/c/jails/db@s1" in text
    assert "old host: nothing changed or deleted; added: /b/a.tar.zst" in text


def test_report_for_a_person_names_the_databases_the_new_host_set_aside():
    report = {"status": "done", "from": {"name": "old"}, "to": {"name": "new"},
              "restore": {"safety": {"dir": "/r/before", "databases": {
                  "memory_db.sql": {"database": "memory_db_pre_restore_20261125-150000",
                                    "address": "10.0.1.3:5432"}}}},
              "checks": [], "warnings": [], "rollback": [], "journal": "/j.json"}
    text = "\n".join(describe_report(report))
    assert ("new host: its memory_db from before the restore is kept as "
            "memory_db_pre_restore_20261125-150000 at 10.0.1.3:5432") in text


def test_each_step_runs_the_argv_the_plan_shows_with_its_placeholders_filled():
    p = plan()
    steps = {s.id: s for s in p.steps}
    restore = steps[migrate.StepId.RESTORE]
    assert restore.argv(p.new, "/tmp/clawdie-ops.x/config.json", {"<archive>": "/b/a.tar.zst"}) \
        == ["clawdie-ops", "-f", "/tmp/clawdie-ops.x/config.json", "restore", "/b/a.tar.zst",
            "--yes", "--no-start", "--json", "--use-archive-server",
            "--only", "env,memory_db,skills_db"]  # the rest comes by install-files
    assert restore.command == "clawdie-ops -f '<tmp>/config.json' restore '<archive>' --yes " \
        "--no-start --json --use-archive-server --only env,memory_db,skills_db"
    trust = steps[migrate.StepId.TRUST_OLD_KEY]
    assert trust.argv(p.new, None)[-4:] == ["migrate-step", "trust-key", "--stdin", "--json"]
    assert trust.stdin and p.steps.index(trust) == p.steps.index(restore) - 1
    backup = steps[migrate.StepId.FINAL_BACKUP]
    assert backup.argv(p.old, None) == [sys.executable, "-m", "clawdie_ops", "backup", "--json",
                                        "--databases-only"]  # the rest: final-files
    assert steps[migrate.StepId.CHECK_NEW].stdin and not backup.stdin
    checksum = steps[migrate.StepId.COPY_ARCHIVE]
    assert checksum.where == "here" and checksum.host_key == "new"
    assert checksum.argv(p.new, None, {"<path>": "/b/x.partial"})[-4:] == \
        ["--path", "/b/x.partial", "--stdin", "--json"]
    assert not steps[migrate.StepId.CONNECT].args  # runs here, in-process
    # the commands the recorder must find: the final sync runs at once with backup and copy
    groups = p.commands()
    alongside = next(g for g in groups if any("backup --json" in line for line in g))
    assert any("replicate --to newbox" in line for line in alongside)
    assert any("migrate-step checksum" in line for line in alongside)
    assert len(alongside) == 3
