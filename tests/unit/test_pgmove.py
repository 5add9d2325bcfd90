"""Which way PostgreSQL travels (pgmove.decide) and the window's steps for each way."""
from __future__ import annotations

from pathlib import Path

from clawdie_ops.actions.migrate import pgmove, plan as migrate
from tests.unit.test_migrate_plan import cfg, NEWBOX


def facts(major: int, *, found: bool = True, data_dir: str = "/var/db/postgres/data18",
          jails: tuple[str, ...] = ("db", "git")) -> dict:
    return {"settings": {"jails": list(jails)},
            "pg_files": {"jail": "db", "data_dir": data_dir, "found": found,
                         "major": major if found else None,
                         "path": f"/jails/db/root{data_dir}", "why": "no PG_VERSION"},
            "databases": {"memory": {"login": True, "version_num": major * 10000 + 6,
                                     "version": f"{major}.6"}}}


def test_same_major_in_the_jail_moves_by_dataset():
    d = pgmove.decide(facts(18), facts(18), pg_dump=False)
    assert d.path == "dataset" and "both hosts run PostgreSQL 18" in d.why
    assert "/jails/db/root/var/db/postgres/data18" in d.note()


def test_dump_when_asked_for_an_upgrade_or_files_outside_the_jail():
    assert pgmove.decide(facts(18), facts(18), pg_dump=True).why == "asked for (--pg-dump)"
    up = pgmove.decide(facts(15, data_dir="/var/db/postgres/data15"), facts(18), False)
    assert up.path == "dump" and "an upgrade from PostgreSQL 15 to 18" in up.why
    away = pgmove.decide(facts(18, found=False), facts(18), False)
    assert away.path == "dump" and "not in jail db's dataset (no PG_VERSION)" in away.why
    bare = pgmove.decide(facts(18), facts(18, data_dir=""), False)
    assert bare.path == "dump" and "pg_data_dir is empty" in bare.why
    stays = pgmove.decide(facts(18, jails=("git",)), facts(18), False)
    assert stays.path == "dump" and "not among the jails that travel" in stays.why


def test_the_dataset_window_stops_the_db_before_the_sync_and_checks_rows_after_env():
    opts = migrate.Options(to="newbox", pg_path="dataset", delta=False)
    p = migrate.make_plan(cfg(newbox=NEWBOX), opts, Path("/home/op"))
    ids = [s.id for s in p.steps if s.phase == "downtime"]
    assert ids[:4] == ["stop-old-agent", "pg-count-old", "stop-old-db", "final-sync"]
    assert ids.index("point-env") + 1 == ids.index("check-new-db")
    assert set(ids) <= set(migrate.DOWNTIME)
    by_id = {s.id: s for s in p.steps}
    assert "backup --no-databases --json" in by_id["final-backup"].command
    assert by_id["restore"].args[-2:] == ("--only", "<items>")
    assert by_id["stop-old-db"].where == "old" and by_id["check-new-db"].where == "new"
    dump = migrate.make_plan(cfg(newbox=NEWBOX), migrate.Options(to="newbox"),
                             Path("/home/op"))
    assert "--no-databases" not in {a for s in dump.steps for a in s.args}


def test_with_the_delta_too_the_window_has_no_archive():
    opts = migrate.Options(to="newbox", pg_path="dataset")
    p = migrate.make_plan(cfg(newbox=NEWBOX), opts, Path("/home/op"))
    ids = [s.id for s in p.steps if s.phase == "downtime"]
    assert not {"final-backup", "copy-archive", "restore"} & set(ids)
    assert ids.index("final-files") > ids.index("final-sync")
    assert ids.index("install-files") + 1 == ids.index("point-env")
    assert ids.index("check-new-db") == ids.index("point-env") + 1
    assert "trust-old-key" in ids  # the new host can still verify the old host's archives
    dump = migrate.make_plan(cfg(newbox=NEWBOX), migrate.Options(to="newbox"),
                             Path("/home/op"))
    by_id = {s.id: s for s in dump.steps}
    assert "--databases-only" in by_id["final-backup"].args
    assert "--no-databases" not in by_id["final-backup"].args


def test_install_files_runs_beside_the_jails_start_only_where_no_restore_comes_first():
    from clawdie_ops.actions.migrate.run import after_sync

    def runs(pg_path: str) -> list[list[str]]:
        p = migrate.make_plan(cfg(newbox=NEWBOX), migrate.Options(to="newbox", pg_path=pg_path),
                              Path("/home/op"))
        window = [s for s in p.steps if s.phase == "downtime"]
        after = window[window.index(next(s for s in window if s.id == "final-sync")) + 1:]
        return [[s.id for s in run] for run in after_sync(
            [s for s in after if s.id not in migrate.ALONGSIDE_SYNC + migrate.BESIDE_SYNC])]

    dataset = runs("dataset")
    assert dataset[0] == ["start-new-jails", "install-files"]
    assert [r for r in dataset if len(r) > 1] == [dataset[0]]
    assert [r[0] for r in dataset[1:]] == ["trust-old-key", "point-env", "check-new-db",
                                           "start-new-agent", "doctor"]
    dump = runs("dump")  # the restore writes .env first, install-files after it
    assert all(len(r) == 1 for r in dump)
    assert [r[0] for r in dump].index("install-files") == \
        [r[0] for r in dump].index("restore") + 1


def test_a_continued_window_tolerates_the_old_databases_it_stopped():
    from clawdie_ops.checks import Check
    checks = [Check("memory_db on old host", "fail", "connection refused", "check the jail"),
              Check("ZFS on new host", "fail", "pool missing", "create it")]
    same = pgmove.stopped_by_us(checks, {"state": "rolled_back"}, True)
    assert [c.status for c in same] == ["fail", "fail"]
    relaxed = pgmove.stopped_by_us(checks, {"state": "open"}, True)
    assert [c.status for c in relaxed] == ["warn", "fail"]
    assert "stopped the db jail" in relaxed[0].detail
    assert pgmove.stopped_by_us(checks, {"state": "open"}, False) == checks
