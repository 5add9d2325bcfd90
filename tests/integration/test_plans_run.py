"""What `--dry-run` shows is what runs: the runner's recorder (CLAWDIE_OPS_RECORD) sees the
planned commands of backup, restore and migrate, every one, in the plan's order."""
from __future__ import annotations

import json
import re
from pathlib import Path

from clawdie_ops.steps import in_order
from tests.conftest import cli
from tests.migrate_helpers import two_hosts, write_inventory
from tests.rig.postgres import SUPERPASS

# Names a run derives from the clock: a dry run and the real run a moment later may differ.
_STAMPS = [(re.compile(r"restore-\d{8}-\d{6}(-\d+)?"), "restore-STAMP"),
           (re.compile(r"pre-migrate-\d{8}-\d{6}"), "pre-migrate-STAMP"),
           (re.compile(r"\d\d\.[a-z]{3}\.\d{4}-\d{4}(-\d+)?"), "DATE")]


# pg_dump and psql from PATH or from clawdie.pg_bin (the rig's PostgreSQL 18 tools)
PG_DUMP = re.compile(r"(\S*/)?pg_dump --clean")
PSQL_REPLAY = re.compile(r"(\S*/)?psql -X -q --single-transaction")


def _steady(line: str) -> str:
    for pattern, token in _STAMPS:
        line = pattern.sub(token, line)
    return line


def recorded(path: Path) -> list[str]:
    return [_steady(json.loads(line)["command"]) for line in path.read_text().splitlines()]


def planned(dry: dict) -> list[list[str]]:
    return [[_steady(line) for line in group] for group in dry["commands"]]


def run_recorded(h, tmp_path: Path, name: str, *args: str, check: bool = True) -> list[str]:
    log = tmp_path / f"{name}.jsonl"
    cli(h, *args, env={"CLAWDIE_OPS_RECORD": str(log)}, check=check)
    return recorded(log)


def test_backup_runs_the_commands_its_dry_run_shows(host, tmp_path):
    dry = json.loads(cli(host, "backup", "--dry-run", "--json", check=True).stdout)
    plan = planned(dry)
    flat = [line for group in plan for line in group]
    assert any(" snapshot -r " in line for line in flat)
    assert sum(bool(PG_DUMP.match(line)) for line in flat) == 2
    ran = run_recorded(host, tmp_path, "backup", "backup", "--json")
    assert in_order(plan, ran) == []
    # the dump ran with the snapshot exported for it, into the spool: placeholders filled
    dumps = [line for line in ran if PG_DUMP.match(line)]
    assert len(dumps) == 2 and all("<" not in line for line in dumps)


def test_restore_runs_the_commands_its_dry_run_shows(host, tmp_path):
    archive = json.loads(cli(host, "backup", "--json", check=True).stdout)["archive"]
    dry = json.loads(cli(host, "restore", archive, "--dry-run", "--json", check=True).stdout)
    plan = planned(dry)
    flat = [line for group in plan for line in group]
    assert sum(bool(PSQL_REPLAY.match(line)) for line in flat) == 2
    ran = run_recorded(host, tmp_path, "restore", "restore", archive, "--yes", "--json")
    assert in_order(plan, ran) == []
    assert len([line for line in ran if PSQL_REPLAY.match(line)]) >= 2


def test_migrate_runs_the_commands_its_dry_run_shows(rig, tmp_path):
    old, new = two_hosts(rig, jails=("db",))
    write_inventory(rig, old, new, overrides={
        "db_host": new.address, "zfs_pool": new.pool_name,
        "db_admin": {"user": "postgres", "password": SUPERPASS}})
    dry = cli(old, "migrate", "--to", new.name, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    plan = planned(json.loads(dry.stdout))
    flat = [line for group in plan for line in group]
    for task in ("migrate-step check", "replicate --to", "backup --json", "restore '<archive>'",
                 "migrate-step env-apply", "doctor --json", "migrate-step schedule-resume"):
        assert any(task in line for line in flat), task
    log = tmp_path / "migrate.jsonl"
    res = cli(old, "migrate", "--to", new.name, "--yes", "--json",
              env={"CLAWDIE_OPS_RECORD": str(log)})
    assert res.returncode == 0, res.stderr
    ran = recorded(log)
    assert in_order(plan, ran) == []
    # the placeholders were filled: the restore got the copied archive's path
    assert any(re.search(r" restore \S+\.tar\.zst --yes --no-start --json --use-archive-server"
                         r" --only env,memory_db,skills_db$",
                         line)
               for line in ran)
    rig.drop(old)
    rig.drop(new)
