"""Settings precedence, .env parsing, and command lines built without a server."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from invoke import Config, MockContext, Result

from clawdie_ops import runner
from clawdie_ops.actions import backup
from clawdie_ops.config import settings as config
from clawdie_ops.zfs import commands as zfs
from clawdie_ops.errors import ConfigError, EnvFileError, InvalidName, ToolMissing, ToolTooOld
from clawdie_ops.archive.manifest import archive_stem
from clawdie_ops.sources.postgres import commands as pg
from tests.rig.content import env_text

TRICKY = "p a$s 'q' \"d\" \\ x:y #z"


def make_root(tmp_path: Path, **env: str) -> Path:
    values = {"ZFS_PREFIX": "clawdie", "WARDEN_DB_IP": "10.0.0.3",
              "MEMORY_DB_PASSWORD": TRICKY, **env}
    (tmp_path / ".env").write_text(env_text(values))
    return tmp_path


def load(tmp_path: Path, overrides: dict | None = None, **env: str) -> config.Settings:
    root = make_root(tmp_path, **env)
    return config.load(Config(overrides={"clawdie": overrides or {}}), root=root)


def test_env_values_with_spaces_quotes_and_dollars_survive(tmp_path):
    s = load(tmp_path)
    assert s.memory.password == TRICKY


def test_runbook_defaults(tmp_path):
    s = load(tmp_path)
    assert s.zfs_pool == "zroot" and s.db_port == 5432 and s.jails == ("db", "git", "cms",
                                                                         "management")
    assert s.datasets[0] == "zroot/clawdie/jails/db"
    assert s.memory.name == "memory_db" and s.skills.name == "skills_db"
    assert str(s.allowlist).endswith(".config/clawdie-cp/mount-allowlist.json")
    # bastille's jail `db` is the dataset jails/db, its files in jails/db/root
    assert s.command("jail_start", jail="db") == "bastille start db"
    assert s.root_dataset("db") == "zroot/clawdie/jails/db/root"
    assert s.command("jail_path", jail="db") == "jls -j db path"
    # the hint names the client of the server's major version, 18 when none is known
    assert pg.install_hint(s, 15) == "pkg install postgresql15-client"
    assert pg.install_hint(s) == "pkg install postgresql18-client"


def test_one_setting_names_the_jail_and_its_dataset(tmp_path):
    s = load(tmp_path, {"jail_name": "clawdie-{jail}"}, ZFS_PREFIX="bastille")
    assert s.command("jail_stop", jail="git") == "bastille stop clawdie-git"
    assert s.dataset("git") == "zroot/bastille/jails/clawdie-git"
    assert s.root_dataset("git") == "zroot/bastille/jails/clawdie-git/root"
    assert s.command("jail_path", jail="git") == "jls -j clawdie-git path"
    for bad in ("{name}", "a/{jail}", "-{jail}"):
        with pytest.raises(ConfigError) as err:
            load(tmp_path, {"jail_name": bad}).dataset("db")
        assert "clawdie.jail_name" in err.value.message


def test_env_then_config_precedence(tmp_path):
    s = load(tmp_path, ZFS_POOL="tank", DB_PORT="6543")
    assert (s.zfs_pool, s.db_port) == ("tank", 6543)
    s = load(tmp_path, {"zfs_pool": "other", "db_host": "192.0.2.9"}, ZFS_POOL="tank")
    assert s.zfs_pool == "other" and s.memory.host == "192.0.2.9"


def test_db_host_from_subnet(tmp_path):
    (tmp_path / "x").mkdir()
    root = tmp_path / "x"
    (root / ".env").write_text("WARDEN_SUBNET=10.44.0.0/24\n")
    s = config.load(Config(), root=root)
    assert s.db_host == "10.44.0.3"


def test_missing_env_names_the_file(tmp_path):
    with pytest.raises(EnvFileError, match=str(tmp_path / ".env")):
        config.load(Config(), root=tmp_path)


def test_root_from_environment(tmp_path, monkeypatch):
    make_root(tmp_path)
    monkeypatch.setenv("CLAWDIE_ROOT", str(tmp_path))
    assert config.load(Config()).root == tmp_path.resolve()


def test_command_templates_quote_values(tmp_path):
    weird = tmp_path / "with space; rm -rf x"
    weird.mkdir()
    (weird / ".env").write_text("WARDEN_DB_IP=10.0.0.3\n")
    cfg = Config(overrides={"clawdie": {"commands": {"agent_stop": "cd {root} && stop"}}})
    s = config.load(cfg, root=weird)
    assert s.command("agent_stop") == f"cd '{weird}' && stop"
    with pytest.raises(ConfigError, match="unknown field"):
        config.load(Config(overrides={"clawdie": {"commands": {"agent_stop": "x {nope}"}}}),
                    root=weird).command("agent_stop")


def test_pg_dump_line_has_no_password(tmp_path):
    s = load(tmp_path)
    line = runner.line(pg.pg_dump_cmd(s, s.memory, Path("/spool/memory_db.sql"), "00000003-1"))
    assert TRICKY not in line and "password" not in line.replace("--no-password", "")
    assert "--clean --if-exists" in line and "--snapshot=00000003-1" in line


def test_passfile_escapes_and_is_private(tmp_path):
    s = load(tmp_path)
    with pg.passfile(s.memory) as env:
        path = Path(env["PGPASSFILE"])
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        line = path.read_text()
    assert not path.exists()
    assert line == "10.0.0.3:5432:memory_db:memory_user:" + TRICKY.replace(
        "\\", "\\\\").replace(":", "\\:") + "\n"


def test_client_version_parsing_and_missing_tool(tmp_path):
    s = load(tmp_path)
    c = MockContext(run={"pg_dump --version": Result("pg_dump (PostgreSQL) 15.18 (Debian)\n")})
    assert pg.client_version(c, s) == (15, "15.18")
    c = MockContext(run={"pg_dump --version": Result("", stderr="not found", exited=127)})
    with pytest.raises(ToolMissing, match="pkg install postgresql16-client"):
        pg.client_version(c, s, major=16)  # the server's major names the client to install


def test_old_pg_dump_refused(tmp_path):
    s = load(tmp_path)
    server = pg.ServerInfo("16.4", 160004, None, "10.0.0.3:5432")
    with pytest.raises(ToolTooOld, match="pg_dump 15.18 is older") as err:
        pg.check_dump_compatible(s, 15, "15.18", server)
    assert "pkg install postgresql16-client" in err.value.hint
    pg.check_dump_compatible(s, 17, "17.1", server)  # newer pg_dump dumps older servers


def test_archive_name_is_the_runbooks():
    assert archive_stem(datetime(2026, 3, 16, 11, 30)) == "clawdie-backup-16.mar.2026-1130"


@pytest.mark.parametrize("bad", ["", "pool/../x", "pool/a b", "pool;rm", "-rf", "pool//x",
                                 "pool/$(x)", "/abs"])
def test_bad_dataset_names_never_reach_a_shell(bad):
    with pytest.raises(InvalidName):
        zfs.check_dataset(bad)


def test_snapshot_goes_through_the_template(tmp_path):
    s = load(tmp_path, {"commands": {"snapshot": "hostctl snap {parent} {name}"}})
    c = MockContext(run={"hostctl snap zroot/clawdie/jails x1": Result("")})
    zfs.snapshot_recursive(c, s, s.jails_parent, "x1")
    c.run.assert_called_once()


def test_plan_lists_every_step_without_secrets(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    s = load(tmp_path, {"home": str(home), "backup_dir": str(home)})
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "messages.db").write_bytes(b"")
    missing = Result("", stderr="cannot open 'zroot/clawdie/jails': dataset does not exist",
                     exited=1)
    c = MockContext(run={"zfs list -H -o name -r zroot/clawdie/jails": missing}, repeat=True)
    plan = backup.make_plan(c, s, backup.BackupOptions(), now=datetime(2026, 3, 16, 11, 30))
    assert plan.archive == home / "clawdie-backup-16.mar.2026-1130.tar.zst"  # zstd: default
    text = "\n".join(plan.describe(s))
    assert "zfs snapshot -r zroot/clawdie/jails@clawdie-backup-16.mar.2026-1130" in text
    assert "memory_db" in text and "skills_db" in text and TRICKY not in text
    assert "groups/ not found" in text
    skip = backup.make_plan(c, s, backup.BackupOptions(skip_skills=True, snapshot=False))
    assert [d.key for d in skip.databases] == ["memory"] and skip.snapshot is None


def test_restrict_lines_need_a_psql_of_august_2025_or_later(tmp_path):
    """pg_dump 17.6+/18 writes `\\restrict KEY`; psql older than its minor cannot read it."""
    s = config.load(Config(overrides={"clawdie": {"root": str(tmp_path)}}), require_env=False)
    assert pg.knows_restrict("18.0") and pg.knows_restrict("17.6") and pg.knows_restrict("15.14")
    assert not pg.knows_restrict("17.5") and not pg.knows_restrict("15.13")
    assert not pg.knows_restrict("12.22") and not pg.knows_restrict("16.9")
    pg.check_restrict(s, "memory_db.sql", "18.6", "15.18", "on this host")  # reads it
    pg.check_restrict(s, "memory_db.sql", "17.5", "17.5", "on this host")  # none written
    with pytest.raises(ToolTooOld) as err:
        pg.check_restrict(s, "memory_db.sql", "18.6", "17.5", "on newhost")
    assert "pg_dump 18.6" in err.value.message and "psql 17.5 on newhost" in err.value.message
    assert "\\restrict" in err.value.message
    assert "psql 17.6 or newer" in err.value.hint and "postgresql17-client" in err.value.hint


def test_an_unknown_setting_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"unknown setting clawdie\.zfs_pol\b"):
        config.section(Config(overrides={"clawdie": {"zfs_pol": "tank"}}))
    with pytest.raises(ConfigError, match=r"unknown setting clawdie\.drill\.hostt"):
        config.section(Config(overrides={"clawdie": {"drill": {"hostt": "db"}}}))
    with pytest.raises(ConfigError, match=r"clawdie\.commands\.agent_stpo"):
        config.section(Config(overrides={"clawdie": {"commands": {"agent_stpo": "x"}}}))
    assert config.section(Config(overrides={"clawdie": {"shell": "/bin/dash"}}))["shell"] == \
        "/bin/dash"


def test_backup_steps_carry_the_argv_they_run(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    s = load(tmp_path, {"home": str(home), "backup_dir": str(home)})
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "messages.db").write_bytes(b"")
    missing = Result("", stderr="cannot open 'zroot/clawdie/jails': dataset does not exist",
                     exited=1)
    c = MockContext(run={"zfs list -H -o name -r zroot/clawdie/jails": missing}, repeat=True)
    plan = backup.make_plan(c, s, backup.BackupOptions(), now=datetime(2026, 3, 16, 11, 30))
    kinds = [st.kind for st in plan.steps]
    assert kinds == [backup.Kind.SNAPSHOT, backup.Kind.COPY, backup.Kind.DUMP, backup.Kind.DUMP]
    snap, copy, memory, skills = plan.steps
    assert [runner.line(cmd) for cmd in snap.commands] == \
        ["zfs snapshot -r zroot/clawdie/jails@clawdie-backup-16.mar.2026-1130"]
    assert copy.commands == [] and copy.together  # SQLite's backup API, in-process
    assert memory.commands == [["pg_dump", "--clean", "--if-exists", "-h", "10.0.0.3", "-p",
                                "5432", "-U", "memory_user", "--no-password", "-f",
                                "<spool>/memory_db.sql", "--snapshot=<exported-snapshot>",
                                "--dbname=memory_db"]]
    assert memory.together and skills.together and skills.item == "skills_db.sql"
    # the run fills the placeholders of the very argv the plan shows
    from clawdie_ops.steps import fill
    assert fill(memory.commands[0], {"<spool>": "/s", "<exported-snapshot>": "3-1"})[-3:] == \
        ["/s/memory_db.sql", "--snapshot=3-1", "--dbname=memory_db"]


W2 = "-c max_parallel_maintenance_workers=2 -c min_parallel_table_scan_size=0"


@pytest.mark.parametrize("value, env", [
    (None, {"PGOPTIONS": f"-c maintenance_work_mem=1GB {W2}"}),  # the default
    ("512 MB", {"PGOPTIONS": f"-c maintenance_work_mem=512MB {W2}"}),
    ("65536", {"PGOPTIONS": f"-c maintenance_work_mem=65536 {W2}"}),
    ("", {"PGOPTIONS": W2}),  # the server's own maintenance_work_mem
])
def test_replay_environment_sets_maintenance_work_mem(tmp_path, value, env):
    s = load(tmp_path, {} if value is None else {"restore_maintenance_work_mem": value})
    assert pg.replay_env(s) == env
    assert pg.replay_note(s) == f"; PGOPTIONS {env['PGOPTIONS']}"


@pytest.mark.parametrize("value, env", [
    (4, {"PGOPTIONS": "-c max_parallel_maintenance_workers=4 -c min_parallel_table_scan_size=0"}),
    ("0", {"PGOPTIONS": "-c max_parallel_maintenance_workers=0"}),  # one process per build
    ("", {}),  # the server's own way, and its own maintenance_work_mem: PGOPTIONS untouched
])
def test_replay_environment_sets_index_workers(tmp_path, value, env):
    s = load(tmp_path, {"restore_index_workers": value,
                        "restore_maintenance_work_mem": ""})
    assert pg.replay_env(s) == env
    assert pg.replay_note(s) == (f"; PGOPTIONS {env['PGOPTIONS']}" if env else "")


@pytest.mark.parametrize("bad", ["-1", "2 -c fsync=off", "many", "65", "1.5"])
def test_index_workers_that_are_no_count_are_refused_naming_the_setting(tmp_path, bad):
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, {"restore_index_workers": bad})
    assert "clawdie.restore_index_workers" in str(exc.value) and bad in str(exc.value)


@pytest.mark.parametrize("bad", ["1 GB -c fsync=off", "lots", "-1", "1GB;", "1gb"])
def test_replay_memory_that_is_no_size_is_refused_naming_the_setting(tmp_path, bad):
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, {"restore_maintenance_work_mem": bad})
    assert "clawdie.restore_maintenance_work_mem" in str(exc.value) and bad in str(exc.value)
