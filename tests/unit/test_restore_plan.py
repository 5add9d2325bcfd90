"""Restore, drill and doctor decisions without a server: items, masking, dump scanning,
member safety, archive choice, JUnit, severities."""
from __future__ import annotations

import os
from datetime import datetime
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from invoke import Config, MockContext, Result

from clawdie_ops.config import settings as config
from clawdie_ops.actions import doctor, drill
from clawdie_ops.actions.restore import run as restore
from clawdie_ops.sources.postgres.dumpfile import Scanner, scan
from clawdie_ops.errors import ArchiveUnsafe, ConfigError
from clawdie_ops.archive.manifest import Manifest
from clawdie_ops.sources.postgres.commands import ServerInfo
from clawdie_ops.archive.signing import Trust
from clawdie_ops.archive.verify import Keys, Member, Verified, check_member
from tests.rig.content import env_text

# The tiny archives here are unsigned on purpose: staging is what these tests are about.
UNSIGNED_OK = Keys(Trust(allow_unsigned=True))

DUMP = b'''--
-- Dumped by pg_dump version 15.18 (Debian 15.18-0+deb12u1)
SET statement_timeout = 0;
CREATE TABLE public.users (id integer, handle text);
ALTER TABLE public.users OWNER TO memory_user;
ALTER FUNCTION public.f(uid integer) OWNER TO "Odd ""Role""";
COPY public.users (id, handle) FROM stdin;
1\tALTER TABLE x OWNER TO memory_user;
\\.
GRANT SELECT ON TABLE public.users TO reader;
REVOKE ALL ON TABLE public.users FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE memory_user IN SCHEMA public GRANT SELECT ON TABLES TO reader;
'''


def lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def test_scan_finds_the_roles_and_the_pg_dump_version():
    facts = scan(lines(DUMP))
    assert facts.roles == {"memory_user", 'Odd "Role"', "reader"}
    assert facts.pg_dump_major == 15 and facts.pg_dump_version == "15.18"


def test_owner_mapping_leaves_table_data_alone():
    out = b"".join(Scanner({"memory_user": "Mem-Owner"}).map_lines(lines(DUMP)))
    assert b'ALTER TABLE public.users OWNER TO "Mem-Owner";\n' in out
    assert b'FOR ROLE "Mem-Owner" IN SCHEMA' in out
    assert b"1\tALTER TABLE x OWNER TO memory_user;\n" in out  # a row, not a statement
    assert b'OWNER TO "Odd ""Role""";' in out  # other roles keep their names
    assert out.count(b"\n") == DUMP.count(b"\n")


def test_owner_mapping_ignores_the_rest_of_a_long_line():
    sc = Scanner({"memory_user": "x"})
    # The second piece of a line longer than one read looks like a statement: it is not one.
    assert sc.feed(b"COMMENT ON TABLE t IS 'long ") == b"COMMENT ON TABLE t IS 'long "
    piece = b"ALTER TABLE y OWNER TO memory_user;\n"
    assert sc.feed(piece) == piece
    assert sc.feed(piece) == b'ALTER TABLE y OWNER TO "x";\n'


BIG_DUMP = (b"\\restrict abc123\n" + DUMP +
            b"COPY public.memories (id, embedding) FROM stdin;\n" +
            b"".join(b"%d\t[%s]\n" % (i, b",".join(b"0.%d" % (i * j % 997) for j in range(300)))
                     for i in range(200)) +
            b"7\tGRANT ALL ON x TO memory_user;\n\\.\nCOPY public.e (x) FROM stdin;\n\\.\n"
            b"\\! echo hostile\nALTER TABLE public.memories OWNER TO memory_user;\n"
            b"\\unrestrict abc123\n")


@pytest.mark.parametrize("size", [128, 1000, 4096, 1 << 20])
def test_feeding_blocks_is_feeding_lines(size):
    """feed_block (COPY data in one slice) gives what feed gives line by line, whatever the
    read size above a statement's length: COPY rows in pieces, a terminator at a block's
    edge, EOF."""
    import io

    from clawdie_ops.sources.postgres.dumpfile import blocks

    one = Scanner({"memory_user": "Mem"}, skip_extensions=True)
    expected = b"".join(one.feed(line) for line in lines(BIG_DUMP))
    many = Scanner({"memory_user": "Mem"}, skip_extensions=True)
    got = b"".join(many.feed_block(b) for b in blocks(io.BytesIO(BIG_DUMP), size))
    assert got == expected
    assert (many.line, many.facts, many.in_copy) == (one.line, one.facts, one.in_copy)
    assert many.facts.meta == [(len(lines(DUMP)) + 207, "\\! echo hostile")]
    tail = Scanner()
    assert tail.feed_block(b"COPY t (x) FROM stdin;\n1\n\\.") == \
        b"COPY t (x) FROM stdin;\n1\n\\."
    assert not tail.in_copy and tail.line == 3


def info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = kind, link
    return ti


@pytest.mark.parametrize("name,kind,link,why", [
    ("/etc/passwd", tarfile.REGTYPE, "", "absolute path"),
    ("top/../../x", tarfile.REGTYPE, "", "'..'"),
    ("top/./x", tarfile.REGTYPE, "", "'.' path component"),
    ("top//x", tarfile.REGTYPE, "", "empty"),
    ("other/x", tarfile.REGTYPE, "", "outside the archive's top folder"),
    ("top/l", tarfile.SYMTYPE, "/etc", "symbolic link to '/etc' (outside"),
    ("top/l", tarfile.SYMTYPE, "groups", "clawdie-ops archives hold no links"),
    ("top/h", tarfile.LNKTYPE, "../x", "hard link"),
    ("top/d", tarfile.CHRTYPE, "", "device"),
    ("top/f", tarfile.FIFOTYPE, "", "fifo"),
    ("top/s", tarfile.GNUTYPE_SPARSE, "", "unsupported type"),
    ("top/a\\b", tarfile.REGTYPE, "", "backslash"),
])
def test_unsafe_members_are_refused(name, kind, link, why):
    with pytest.raises(ArchiveUnsafe) as exc:
        check_member(Path("a.tar.gz"), info(name, kind, link), "top")
    assert why in exc.value.message and "nothing was extracted" in exc.value.message


def test_safe_members_pass():
    assert check_member(Path("a"), info("top", tarfile.DIRTYPE), None) == ("top", "")
    assert check_member(Path("a"), info("top/groups/main/x y.md"), "top") == \
        ("top", "groups/main/x y.md")


def verified(*names: str, skipped: dict | None = None) -> Verified:
    files = {n: {"kind": "file", "size": 1, "sha256": "0"} for n in names}
    items = sorted({"groups/" if n.startswith("groups/") else n for n in names})
    m = Manifest("a", "t", "h", "0", items=items, files=files, skipped=skipped or {})
    return Verified(Path("/x/a.tar.gz"), "gzip", "top", m,
                    {n: Member(n, 1, "0", 0o600) for n in names}, 10)


def test_items_follow_the_runbook_order_and_accept_aliases():
    v = verified("env", "messages.db", "memory_db.sql", "skills_db.sql", "groups/a",
                 "mount-allowlist.json")
    items, regen, _ = restore.select_items(v, [])
    assert items == list(restore.ORDER) and not regen
    items, _, _ = restore.select_items(v, ["groups", "memory_db,.env"])
    assert items == ["env", "memory_db.sql", "groups/"]
    with pytest.raises(ConfigError, match="not an item"):
        restore.select_items(v, ["photos"])


def test_missing_skills_dump_means_regeneration():
    v = verified("env", "messages.db", "memory_db.sql", skipped={"skills_db.sql": "--skip-skills"})
    items, regen, notes = restore.select_items(v, [])
    assert "skills_db.sql" not in items and regen
    assert any("--skip-skills" in n and "regenerated" in n for n in notes)
    with pytest.raises(ConfigError, match="holds no groups/"):
        restore.select_items(v, ["groups/"])


def test_plan_shows_every_command_and_masks_every_secret(tmp_path):
    env = {"WARDEN_DB_IP": "10.0.0.3", "MEMORY_DB_PASSWORD": "mem-secret-1",
           "SKILLS_DB_PASSWORD": "sk-secret-2", "ANTHROPIC_API_KEY": "sk-ant-XYZ",
           "ZFS_PREFIX": "clawdie"}
    (tmp_path / ".env").write_text(env_text(env))
    cfg = Config(overrides={"clawdie": {
        "db_admin": {"user": "postgres", "password": "admin-secret-3"},
        # An operator put the API key into the start command: it must not be printed.
        "commands": {"agent_start": "cd {root} && ANTHROPIC_API_KEY=sk-ant-XYZ npm start"}}})
    s = config.load(cfg, root=tmp_path)
    v = verified("env", "memory_db.sql", "groups/a")
    server = ServerInfo("15.18", 150018, "7712", "10.0.0.3:5432")
    target = restore.DbTarget("memory_db.sql", s.memory, "memory_user", server,
                              {"public.users": 3}, exists=False, create_role=True,
                              create_db=True, extra_roles=["reader"])
    plan = restore.RestorePlan(v, s, ["env", "memory_db.sql", "groups/"], tmp_path / "w",
                               "zroot/clawdie/jails/db@clawdie-pre-restore-1", [target], None,
                               True, True, [], [],
                               restore.secrets_of(env, extra=("admin-secret-3",)))
    plan.steps = restore._steps(plan)
    text = "\n".join(plan.describe())
    for secret in ("mem-secret-1", "sk-secret-2", "sk-ant-XYZ", "admin-secret-3"):
        assert secret not in text
    assert "ANTHROPIC_API_KEY=*** npm start" in text
    assert "psql -X -q --single-transaction -v ON_ERROR_STOP=1 -h 10.0.0.3" in text
    assert "CREATE ROLE \"memory_user\" LOGIN PASSWORD '***'" in text
    assert 'CREATE ROLE "reader" NOLOGIN; GRANT "reader" TO "memory_user"' in text
    assert "zfs snapshot -r zroot/clawdie/jails/db@clawdie-pre-restore-1" in text
    assert f"{tmp_path}/.env <- {tmp_path}/w/staging/env" in text
    assert "system identifier 7712" in text
    kinds = [st.kind for st in plan.steps]
    assert kinds == ["env", "agent-stop", "database", "groups", "agent-start", "doctor"]


def test_drill_latest_without_readable_manifests_goes_by_valid_past_names(tmp_path):
    # None of these has a manifest to read (one byte each): the names decide, but an
    # impossible date is no crash and a future-dated name does not win.
    old = datetime(2024, 1, 1).timestamp()
    for name in ("clawdie-backup-31.dec.2025-2359.tar.gz",
                 "clawdie-backup-02.jan.2026-0100.tar.zst",
                 "clawdie-backup-02.jan.2026-0100-2.tar.gz",
                 "clawdie-backup-01.jan.2026-2300.tar.gz",
                 "clawdie-backup-31.feb.2026-0100.tar.gz",
                 "clawdie-backup-01.jan.2099-0100.tar.gz",
                 ".clawdie-backup-03.jan.2026-0100.tar.gz.partial", "other.tar.gz"):
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (old, old))
    # mtimes say otherwise: an archive copied later keeps its name's time.
    os.utime(tmp_path / "clawdie-backup-31.dec.2025-2359.tar.gz", (time.time() + 99,) * 2)
    assert drill.newest_archive(tmp_path).name == "clawdie-backup-02.jan.2026-0100-2.tar.gz"
    from clawdie_ops.archive import catalog
    assert catalog.name_time(Path("clawdie-backup-31.feb.2026-0100.tar.gz")) is None
    # doctor, by the names: the same order, without reading a manifest
    assert catalog.newest(tmp_path).name == "clawdie-backup-02.jan.2026-0100-2.tar.gz"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no clawdie-backup"):
        drill.newest_archive(tmp_path / "empty")


def test_junit_report_names_the_failing_check():
    result = {"archive": "/b/clawdie-backup-x.tar.gz", "duration_s": 1.5, "checks": [
        {"name": "verify archive", "item": "a", "status": "pass", "detail": "ok", "seconds": 0.1},
        {"name": "replay memory_db.sql", "item": "memory_db.sql", "status": "fail",
         "detail": "memory_db.sql: table public.users has 9 rows, manifest says 10",
         "seconds": 0.2},
        {"name": "files", "item": "", "status": "skip", "detail": "earlier", "seconds": 0.0}]}
    suite = ET.fromstring(drill.junit_xml(result)).find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    failure = suite.find("testcase[@name='replay memory_db.sql']/failure")
    assert "public.users has 9 rows" in failure.get("message")


def test_throwaway_cluster_runs_as_the_postgres_user_when_root(tmp_path):
    s = config.load(Config(), root=tmp_path, require_env=False)
    c = MockContext(run=Result("", exited=0), repeat=True)
    t = drill.Throwaway(c, s, Path("/usr/lib/postgresql/15/bin"), tmp_path / "pg", "postgres")
    t.as_root = True
    t._run("/usr/lib/postgresql/15/bin/initdb", "-D", str(tmp_path / "pg" / "data"))
    cmd = c.run.call_args[0][0]
    assert cmd == (f"su -m postgres -c 'cd {tmp_path}/pg && /usr/lib/postgresql/15/bin/initdb "
                   f"-D {tmp_path}/pg/data'")


def test_doctor_severity_and_ages():
    assert doctor._by_age(60, 2, 26) == "ok"
    assert doctor._by_age(3 * 3600, 2, 26) == "warn"
    assert doctor._by_age(27 * 3600, 2, 26) == "fail"
    checks = [doctor.Check("a", "ok", ""), doctor.Check("b", "warn", "")]
    assert doctor.exit_code(checks) == 1 and doctor.worst(checks) == "warn"
    assert doctor.exit_code(checks + [doctor.Check("c", "fail", "")]) == 2
    assert doctor.exit_code([]) == 0


def _tiny_archive(tmp_path: Path) -> Path:
    """A two-file archive with a manifest, written by Python's tarfile (no rig needed)."""
    import hashlib
    import json

    from tests import archive_kit as kit
    files = {"groups/main/a.md": b"hello\n", "env": b"X=1\n"}
    members = [(tarfile.TarInfo("top"), None)]
    members[0][0].type = tarfile.DIRTYPE
    for name, data in files.items():
        members.append((tarfile.TarInfo(f"top/{name}"), data))
    doc = {"format": 1, "agent_name": "a", "timestamp": "t", "items": ["groups/", "env"],
           "files": {n: {"kind": "file", "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                     for n, d in files.items()}}
    members.append((tarfile.TarInfo("top/manifest.json"), json.dumps(doc).encode()))
    return kit.write(tmp_path / "tiny.tar.gz", members)


def test_staging_never_follows_a_link_planted_in_its_target(tmp_path):
    from clawdie_ops.archive.verify import stage
    target = tmp_path / "target"
    outside = tmp_path / "outside"
    target.mkdir()
    outside.mkdir()
    (target / "groups").symlink_to(outside)
    with pytest.raises(ArchiveUnsafe, match="not a plain folder"):
        stage(_tiny_archive(tmp_path), target, lambda n: True, UNSIGNED_OK)
    assert list(outside.iterdir()) == []


# -- one pass: verify while staging -------------------------------------------------------------
def test_staging_writes_the_wanted_members_in_the_verifying_pass(tmp_path):
    from clawdie_ops.archive.verify import stage
    target = tmp_path / "staging"
    target.mkdir(mode=0o700)
    v = stage(_tiny_archive(tmp_path), target, lambda n: n == "env", UNSIGNED_OK)
    assert sorted(v.members) == ["env", "groups/main/a.md"] and v.env == {"X": "1"}
    assert [p.name for p in target.iterdir()] == ["env"]
    assert (target / "env").read_bytes() == b"X=1\n"
    assert (target / "env").stat().st_mode & 0o777 == 0o600


def test_staging_a_changed_member_fails_with_its_name(tmp_path):
    from clawdie_ops.errors import ArchiveCorrupt
    from clawdie_ops.archive.verify import stage
    from tests import archive_kit as kit
    bad = kit.repack(_tiny_archive(tmp_path), tmp_path / "bad.tar.gz",
                     kit.edit_member("groups/main/a.md", lambda b: b"changed\n"), sign=False)
    (tmp_path / "staging").mkdir()
    with pytest.raises(ArchiveCorrupt, match="groups/main/a.md"):
        stage(bad, tmp_path / "staging", lambda n: True, UNSIGNED_OK)


def test_staging_refuses_to_fill_the_disk(tmp_path, monkeypatch):
    import shutil as sh

    from clawdie_ops.archive import verify as vf
    from clawdie_ops.errors import OutputError
    monkeypatch.setattr(vf.shutil, "disk_usage", lambda p: sh._ntuple_diskusage(100, 99, 1))
    (tmp_path / "staging").mkdir()
    with pytest.raises(OutputError, match="not enough space .* to stage"):
        vf.stage(_tiny_archive(tmp_path), tmp_path / "staging", lambda n: True, UNSIGNED_OK)


def test_owner_mapping_of_a_staged_dump_keeps_its_mode_and_rows(tmp_path):
    from clawdie_ops.sources.postgres.dumpfile import rewrite_owners
    dump = tmp_path / "memory_db.sql"
    dump.write_bytes(DUMP)
    dump.chmod(0o600)
    rewrite_owners(dump, {"memory_user": "Mem-Owner"})
    out = dump.read_bytes()
    assert out == b"".join(Scanner({"memory_user": "Mem-Owner"}).map_lines(lines(DUMP)))
    assert b"1\tALTER TABLE x OWNER TO memory_user;\n" in out
    assert dump.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["memory_db.sql"]


# -- the pre-restore copy without a dump ----------------------------------------------------------
def test_aside_names_fit_postgresql_identifiers():
    from clawdie_ops.sources.postgres.aside import NAME_MAX, aside_name
    assert aside_name("memory_db", "20261125-132005") == \
        "memory_db_pre_restore_20261125-132005"
    long = aside_name("é" * 40, "20261125-132005-2")
    assert len(long.encode()) <= NAME_MAX and long.endswith("_pre_restore_20261125-132005-2")


def test_plan_renames_a_database_aside_instead_of_dumping_it(tmp_path):
    from clawdie_ops.sources.postgres.aside import DbShape
    (tmp_path / ".env").write_text(env_text({"WARDEN_DB_IP": "10.0.0.3"}))
    cfg = Config(overrides={"clawdie": {"db_admin": {"user": "postgres", "password": "pw"}}})
    s = config.load(cfg, root=tmp_path)
    server = ServerInfo("15.18", 150018, "7712", "10.0.0.3:5432")
    target = restore.DbTarget("memory_db.sql", s.memory, "memory_user", server, {}, exists=True,
                              aside="memory_db_pre_restore_1",
                              shape=DbShape("memory_user", "UTF8", "C", "C", "pg_default", -1))
    plan = restore.RestorePlan(verified("memory_db.sql"), s, ["memory_db.sql"], tmp_path / "w",
                               None, [target], None, False, False, [], [])
    plan.steps = restore._steps(plan)
    text = "\n".join(plan.describe())
    assert 'ALTER DATABASE "memory_db" RENAME TO "memory_db_pre_restore_1"' in text
    assert 'CREATE DATABASE "memory_db" OWNER "memory_user"' in text
    assert "pg_dump --clean" not in text
    assert 'ALTER DATABASE "memory_db_pre_restore_1" RENAME TO "memory_db"' in target.howto()
    assert target.report()["kept_as"] == "memory_db_pre_restore_1"


def test_extension_statements_are_read_and_skipped_for_the_app_users_replay():
    from clawdie_ops.sources.postgres.dumpfile import Scanner
    dump = [b"DROP EXTENSION IF EXISTS vector;\n",
            b"CREATE EXTENSION IF NOT EXISTS vector WITH SCHEMA public;\n",
            b"COMMENT ON EXTENSION vector IS 'vector data type and ivfflat and hnsw';\n",
            b"CREATE TABLE public.m (e public.vector(3));\n",
            b"COPY public.m (e) FROM stdin;\n",
            b"CREATE EXTENSION IF NOT EXISTS not_an_extension;\n",  # row data, not a statement
            b"\\.\n"]
    keep = Scanner()
    assert b"".join(keep.feed(line) for line in dump) == b"".join(dump)
    assert keep.facts.extensions == {"vector"}
    skip = Scanner(skip_extensions=True)
    out = [skip.feed(line) for line in dump]
    assert all(line.startswith(b"-- ") for line in out[:3])
    assert out[3:] == dump[3:]


def test_restore_steps_carry_the_argv_they_run(tmp_path):
    (tmp_path / ".env").write_text(env_text({"WARDEN_DB_IP": "10.0.0.3", "ZFS_PREFIX": "clawdie",
                                             "MEMORY_DB_PASSWORD": "mem-secret-1"}))
    s = config.load(Config(overrides={"clawdie": {}}), root=tmp_path)
    server = ServerInfo("15.18", 150018, "7712", "10.0.0.3:5432")
    target = restore.DbTarget("memory_db.sql", s.memory, "memory_user", server, {},
                              exists=True)
    plan = restore.RestorePlan(verified("env", "memory_db.sql"), s, ["env", "memory_db.sql"],
                               tmp_path / "w", "zroot/clawdie/jails/db@pre-1", [target], None,
                               True, True, [], [])
    plan.steps = restore._steps(plan)
    kinds = [st.kind for st in plan.steps]
    assert kinds == [restore.Kind.ENV, restore.Kind.AGENT_STOP, restore.Kind.DATABASE,
                     restore.Kind.AGENT_START, restore.Kind.DOCTOR]
    db = plan.steps[2]
    assert db.commands == [
        ["pg_dump", "--clean", "--if-exists", "-h", "10.0.0.3", "-p", "5432", "-U",
         "memory_user", "--no-password", "-f", str(tmp_path / "w/before/memory_db.sql"),
         "--dbname=memory_db"],
        ["psql", "-X", "-q", "--single-transaction", "-v", "ON_ERROR_STOP=1", "-h", "10.0.0.3",
         "-p", "5432", "-U", "memory_user", "--no-password", "--dbname=memory_db", "-f",
         str(tmp_path / "w/staging/memory_db.sql")]]
    assert db.undo == "memory_db (from its pre-restore dump)" and db.together
    assert [str(cmd) for cmd in plan.steps[1].commands] == [s.command("agent_stop")]
    assert plan.steps[0].commands == [] and plan.steps[0].action is not None  # in-process
    groups = plan.commands()
    assert groups[0] == ["zfs snapshot -r zroot/clawdie/jails/db@pre-1"]
    assert "mem-secret-1" not in repr(groups)


def test_a_restore_that_does_not_start_the_agent_shows_a_step_that_runs_nothing(tmp_path):
    (tmp_path / ".env").write_text(env_text({"WARDEN_DB_IP": "10.0.0.3"}))
    s = config.load(Config(overrides={"clawdie": {}}), root=tmp_path)
    plan = restore.RestorePlan(verified("groups/a"), s, ["groups/"], tmp_path / "w", None, [],
                               None, False, False, [], [])
    plan.steps = restore._steps(plan)
    start = next(st for st in plan.steps if st.kind is restore.Kind.AGENT_START)
    assert start.action is None and start.commands == []
    assert start.run(MockContext(run={}), None) is None  # type: ignore[arg-type]


def test_what_a_dump_needs_of_its_servers_extensions():
    from clawdie_ops.sources.postgres import extensions as ext
    entry = {"extensions": [{"name": "vector", "version": "0.8.1", "schema": "public"}]}
    # the manifest's record, plus what an older archive's dump alone says (no version)
    need = ext.wanted(entry, {"vector", "pg_trgm", "plpgsql"})
    assert need == [{"name": "vector", "version": "0.8.1", "schema": "public"},
                    {"name": "pg_trgm", "version": "", "schema": "public"}]
    offer = {"vector": ext.Available("vector", "0.8.6", superuser=True, trusted=False),
             "pg_trgm": ext.Available("pg_trgm", "1.6", superuser=True, trusted=True)}
    assert ext.unavailable(need, offer) == []
    assert ext.needs_superuser(["vector", "pg_trgm"], offer) == ["vector"]  # trusted: owner may
    assert ext.describe(need[0], offer) == "vector 0.8.6 (the archive's 0.8.1)"
    old = {"vector": ext.Available("vector", "0.5.0", superuser=True, trusted=False)}
    assert ext.unavailable(need, old) == [
        "extension vector is 0.5.0 there, older than the archive's 0.8.1",
        "extension pg_trgm is not available there (not in pg_available_extensions)"]
