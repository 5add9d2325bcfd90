"""Migration parts without hosts: preflight rules, journal, .env editing, resumable copy, remote."""
from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from pathlib import Path

import paramiko
import pytest
from invoke import MockContext, Result

from clawdie_ops import runner
from clawdie_ops.config import envfile, inventory
from clawdie_ops.actions.migrate import checks as mc
from clawdie_ops.hosts import remote, ssh, transfer
from clawdie_ops.config.settings import read_env
from clawdie_ops.errors import ConfigError, HostError, RemoteTaskFailed
from clawdie_ops.actions.migrate.journal import Journal
from clawdie_ops.config.masking import MASK


# -- preflight rules -------------------------------------------------------------------------
def facts(role: str, **over) -> dict:
    base = {
        "role": role, "tool_version": "0.1.0", "root": "/srv/clawdie", "root_exists": True,
        "env_present": True, "backup_dir": "/srv/backups", "backup_dir_exists": True,
        "space": {"backup_dir": 10 << 30, "root": 10 << 30},
        "pg_client": {"pg_dump": {"major": 15, "version": "15.8"},
                      "psql": {"major": 15, "version": "15.8"}},
        "zfs": {"pool": "zroot" if role == "source" else "tank", "pool_exists": True,
                "available": 10 << 30,
                "datasets": {f"{'zroot' if role == 'source' else 'tank'}/c/jails/db":
                             {"exists": role == "source", "referenced": 1 << 20,
                              "snapshots": ["s2", "s1"] if role == "source" else []}}},
        "sqlite": {"present": role == "source", "bytes": 1 << 20,
                   "non_empty_tables": 7 if role == "source" else 0},
        "groups_bytes": 1000, "agent_running": role == "source",
        "databases": {k: {"host": "10.0.0.3", "port": 5432, "database": f"{k}_db",
                          "user": f"{k}_user", "login": True, "version": "15.8",
                          "version_num": 150008,
                          "identity": "111" if role == "source" else "222",
                          "non_empty_tables": 3 if role == "source" else 0, "size": 1 << 20}
                      for k in ("memory", "skills")},
        "admin": {"configured": False, "login": False},
    }
    base.update(over)
    return base


def by_name(checks: list[mc.Check]) -> dict[str, mc.Check]:
    return {ch.name: ch for ch in checks}


def test_two_ready_hosts_pass_every_check():
    checks = mc.evaluate(facts("source"), facts("target"), new_name="newbox")
    assert not mc.failures(checks), [c.as_dict() for c in mc.failures(checks)]
    assert by_name(checks)["database identity"].status == "ok"


def test_guard_refuses_the_old_database_behind_the_new_hosts_settings():
    new = facts("target")
    for db in new["databases"].values():
        db["identity"] = "111"
    ch = mc.identity_guard(facts("source"), new, "newbox")
    assert ch.status == "fail" and "OLD host's PostgreSQL" in ch.detail
    assert "clawdie.hosts.newbox.overrides.db_host" in ch.fix


def test_a_newer_pg_dump_than_the_new_server_is_refused_before_anything_runs():
    old = facts("source", pg_client={"pg_dump": {"major": 17, "version": "17.2"},
                                     "psql": {"major": 17, "version": "17.2"}})
    checks = by_name(mc.postgres_versions(old, facts("target")))
    assert checks["PostgreSQL versions"].status == "fail"
    assert "transaction_timeout" in checks["PostgreSQL versions"].detail


def test_an_older_pg_dump_than_the_old_server_is_refused():
    old = facts("source", pg_client={"pg_dump": {"major": 14, "version": "14.9"}})
    assert by_name(mc.postgres_versions(old, facts("target")))["pg_dump on old host"].status \
        == "fail"


def test_an_older_clawdie_ops_on_the_new_host_is_refused():
    assert mc.tool_versions(facts("source", tool_version="0.2.0"),
                            facts("target", tool_version="0.1.9")).status == "fail"
    assert mc.tool_versions(facts("source"), facts("target", tool_version="0.1.1")).status \
        == "warn"


def test_missing_roles_pass_only_when_an_admin_may_create_them():
    new = facts("target")
    for db in new["databases"].values():
        db.update(login=False, error="password authentication failed", identity=None)
    assert mc.failures(mc.databases_on_new(new, "newbox"))
    new["admin"] = {"configured": True, "login": True, "create_role": True, "identity": "222"}
    assert not mc.failures(mc.databases_on_new(new, "newbox"))


def test_a_new_host_with_data_is_refused_unless_forced_or_left_by_this_migration():
    new = facts("target", agent_running=True, sqlite={"present": True, "non_empty_tables": 2})
    assert mc.new_host_data(facts("source"), new, force=False, ours=False).status == "fail"
    assert mc.new_host_data(facts("source"), new, force=True, ours=False).status == "warn"
    assert mc.new_host_data(facts("source"), new, force=False, ours=True).status == "warn"


def test_the_new_hosts_own_jail_datasets_are_set_aside_not_a_reason_to_stop():
    new = facts("target")
    new["zfs"]["datasets"]["tank/c/jails/db"] = {"exists": True, "snapshots": ["other"],
                                                "children": ["tank/c/jails/db/root"]}
    # made by the new host's own `bastille create` (runbook step 1): no reason to stop
    assert mc.new_host_data(facts("source"), new, force=False, ours=False).status == "ok"
    assert mc.set_aside(facts("source"), new) == ["tank/c/jails/db"]
    ch = mc.datasets_aside(facts("source"), new, "pre-migrate-X")
    assert ch.status == "warn" and "tank/c/jails/db -> tank/c/jails/db.pre-migrate-X" in ch.detail
    new["zfs"]["datasets"]["tank/c/jails/db"]["snapshots"] = ["s1"]  # received before: fine
    assert mc.set_aside(facts("source"), new) == []
    new["zfs"]["datasets"]["tank/c/jails/db"].update(snapshots=[], resume_token=True)
    assert mc.set_aside(facts("source"), new) == []  # an interrupted receive: resumed
    # data of its own still stops it
    busy = facts("target", agent_running=True)
    assert mc.new_host_data(facts("source"), busy, force=False, ours=False).status == "fail"


def test_pool_space_counts_used_with_the_jails_children_not_referenced():
    old = facts("source")
    old["zfs"]["datasets"]["zroot/c/jails/db"].update(referenced=100 << 10, used=5 << 30)
    new = facts("target")
    new["zfs"]["available"] = 1 << 30  # room for the parent's own files, not for its root
    ch = by_name(mc.space(old, new))["space in the new pool"]
    assert ch.status == "fail" and "5.0 GiB" in ch.detail


def test_space_checks_name_the_place_and_the_amounts():
    new = facts("target", space={"backup_dir": 1000, "root": 10 << 30})
    checks = by_name(mc.space(facts("source"), new))
    assert checks["space for the archive"].status == "fail"
    assert "/srv/backups" in checks["space for the archive"].detail
    new = facts("target")
    new["zfs"]["available"] = 1000
    assert by_name(mc.space(facts("source"), new))["space in the new pool"].status == "fail"


def test_missing_checkout_or_backup_directory_is_a_failure_with_the_fix():
    checks = by_name(mc.directories(facts("source", backup_dir_exists=False),
                                    facts("target", root_exists=False), "newbox"))
    assert checks["Clawdie checkout on new host"].status == "fail"
    assert "mkdir -p /srv/backups" in checks["backup directory on old host"].fix


# -- journal -----------------------------------------------------------------------------
def test_journal_records_steps_masked_and_private(tmp_path):
    path = tmp_path / "j" / "a--to--b.json"
    j = Journal.open(path, {"from": ["a", "local"], "to": ["b", "b"]})
    j.record("final-backup", {"archive": "/x.tar.zst", "db_admin": {"password": "pw!"}}, 1.5)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "pw!" not in path.read_text()
    again = Journal.open(path, {"from": ["a", "local"], "to": ["b", "b"]})
    assert again.done("final-backup") and not again.done("restore")
    assert again.result("final-backup")["db_admin"]["password"] == MASK
    with pytest.raises(ConfigError, match="another plan"):
        Journal.open(path, {"from": ["a", "local"], "to": ["c", "c"]})
    assert not Journal.open(path, {"from": ["x"], "to": ["y"]}, restart=True).steps


# -- .env editing ------------------------------------------------------------------------
def test_env_apply_changes_only_the_named_keys_and_reads_back(tmp_path):
    env = tmp_path / ".env"
    env.write_text("# Clawdie\nAGENT_NAME=clawdie\nWARDEN_DB_IP=10.0.0.3\n"
                   "MEMORY_DB_PASSWORD='a \\'q\\' $x'\nexport ZFS_POOL=zroot\n")
    env.chmod(0o600)
    changes = envfile.set_values(env, {"WARDEN_DB_IP": "10.1.0.3", "ZFS_POOL": "tank pool",
                                       "DB_PORT": "5433", "AGENT_NAME": "clawdie"})
    assert changes == {"WARDEN_DB_IP": {"from": "10.0.0.3", "to": "10.1.0.3"},
                       "ZFS_POOL": {"from": "zroot", "to": "tank pool"},
                       "DB_PORT": {"from": None, "to": "5433"}}
    values = read_env(env)
    assert values["WARDEN_DB_IP"] == "10.1.0.3" and values["ZFS_POOL"] == "tank pool"
    assert values["DB_PORT"] == "5433" and values["MEMORY_DB_PASSWORD"] == "a 'q' $x"
    assert env.read_text().startswith("# Clawdie\nAGENT_NAME=clawdie\n")
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert envfile.set_values(env, {"WARDEN_DB_IP": "10.1.0.3"}) == {}


# -- the resumable copy --------------------------------------------------------------------
class Flaky(transfer.LocalFiles):
    """Local files whose writes break after `fail_after` bytes, `times` times."""

    def __init__(self, fail_after: int, times: int) -> None:
        super().__init__("flaky")
        self.fail_after, self.times, self.resets = fail_after, times, 0

    def open_write(self, path: str, offset: int):
        fh = super().open_write(path, offset)
        if self.times <= 0:
            return fh
        self.times -= 1
        limit = self.fail_after

        class Breaking(io.RawIOBase):
            written = 0

            def write(self, b):
                room = limit - Breaking.written
                if len(b) > room:
                    fh.write(bytes(b[:room]))
                    fh.flush()
                    raise OSError("Connection reset by peer")
                Breaking.written += len(b)
                return fh.write(b)

            def close(self):
                fh.close()
                super().close()
        return Breaking()

    def reset(self) -> None:
        self.resets += 1


def _source(tmp_path: Path, size: int = 3 * transfer.CHUNK + 123) -> tuple[Path, str]:
    src = tmp_path / "a.tar.zst"
    src.write_bytes(os.urandom(size))
    return src, hashlib.sha256(src.read_bytes()).hexdigest()


def test_copy_resumes_after_a_dropped_connection_and_verifies(tmp_path):
    src, digest = _source(tmp_path)
    dest = tmp_path / "out" / "a.tar.zst"
    dest.parent.mkdir()
    dst = Flaky(fail_after=transfer.CHUNK + 10, times=1)
    result = transfer.copy(transfer.LocalFiles(), str(src), dst, str(dest),
                           size=src.stat().st_size, sha256=digest,
                           verify=transfer.local_sha256, sleep=lambda s: None)
    assert result.attempts == 2 and result.resumed_from == [transfer.CHUNK + 10]
    assert dest.read_bytes() == src.read_bytes() and dst.resets == 1
    assert not Path(str(dest) + ".partial").exists()
    assert result.bytes_sent <= src.stat().st_size  # the prefix was not sent again


def test_copy_that_arrives_damaged_is_sent_again_whole(tmp_path):
    src, digest = _source(tmp_path, 5000)
    dest = tmp_path / "a.copy"
    Path(str(dest) + ".partial").write_bytes(b"garbage!")  # a stale prefix
    result = transfer.copy(transfer.LocalFiles(), str(src), transfer.LocalFiles(), str(dest),
                           size=5000, sha256=digest, verify=transfer.local_sha256,
                           sleep=lambda s: None)
    assert result.attempts == 2 and "sha256 on arrival" in result.errors[0]
    assert dest.read_bytes() == src.read_bytes()


def test_copy_gives_up_after_its_retries_and_keeps_the_partial_for_next_time(tmp_path):
    src, digest = _source(tmp_path)
    dest = tmp_path / "a.copy"
    with pytest.raises(HostError, match="failed after 3 attempts"):
        transfer.copy(transfer.LocalFiles(), str(src), Flaky(100, times=9), str(dest),
                      size=src.stat().st_size, sha256=digest, verify=transfer.local_sha256,
                      retries=3, sleep=lambda s: None)
    assert Path(str(dest) + ".partial").exists() and not dest.exists()


def test_copy_removes_partial_copies_of_older_archives(tmp_path):
    src, digest = _source(tmp_path, 1000)
    stale = tmp_path / "older.tar.zst.partial"
    stale.write_bytes(b"half an older archive")
    transfer.copy(transfer.LocalFiles(), str(src), transfer.LocalFiles(), str(tmp_path / "a"),
                  size=1000, sha256=digest, verify=transfer.local_sha256,
                  discard=(str(stale),))
    assert not stale.exists() and (tmp_path / "a").read_bytes() == src.read_bytes()


def test_copy_already_complete_is_not_sent_again(tmp_path):
    src, digest = _source(tmp_path, 1000)
    dest = tmp_path / "a.copy"
    dest.write_bytes(src.read_bytes())
    result = transfer.copy(transfer.LocalFiles(), str(src), transfer.LocalFiles(), str(dest),
                           size=1000, sha256=digest, verify=transfer.local_sha256)
    assert result.already_there and result.bytes_sent == 0


# -- remote ---------------------------------------------------------------------------------
NEW = inventory.Host(name="newbox", ssh="newbox")


def test_remote_commands_are_quoted_and_stdin_goes_in_one_piece():
    assert remote.tool_command(NEW, "restore", "/b/x y.tar.zst", "--json",
                               config_file="/tmp/clawdie-ops.ab/config.json") == \
        "clawdie-ops -f /tmp/clawdie-ops.ab/config.json restore '/b/x y.tar.zst' --json"
    assert runner._Payload('{"a": 1}').read(1) == '{"a": 1}'


def test_run_tool_parses_json_and_names_the_host_on_failure():
    ok = MockContext(run=Result(stdout='{"running": true}\n', exited=0))
    assert remote.run_tool(ok, NEW, "migrate-step", "agent-status")[0] == {"running": True}
    missing = MockContext(run=Result(stderr="sh: clawdie-ops: not found", exited=127))
    with pytest.raises(RemoteTaskFailed, match="not installed on newbox"):
        remote.run_tool(missing, NEW, "migrate-step", "check")
    old = MockContext(run=Result(stderr="No idea what 'migrate-step' is!", exited=1))
    with pytest.raises(RemoteTaskFailed, match="too old"):
        remote.run_tool(old, NEW, "migrate-step", "check")
    failing = MockContext(run=Result(
        stdout="", stderr="error: restore failed at step 'database'\n  -> the hint\n", exited=1))
    with pytest.raises(RemoteTaskFailed) as exc:
        remote.run_tool(failing, NEW, "restore", "/x")
    assert "on newbox (newbox) failed (exit 1): restore failed at step 'database'" in \
        exc.value.message
    assert exc.value.hint == "the hint"


def test_temporary_config_paths_are_checked_before_rm(tmp_path):
    c = MockContext(run=[Result(stdout="/tmp/clawdie-ops.Ab12Cd34\n", exited=0),
                         Result(exited=0)])
    assert remote.write_temp_config(c, NEW, {"clawdie": {}}) == \
        "/tmp/clawdie-ops.Ab12Cd34/config.json"
    bad = MockContext(run=Result(stdout="/\n", exited=0))
    with pytest.raises(HostError):
        remote.write_temp_config(bad, NEW, {"clawdie": {}})
    remote.remove_temp_config(MockContext(), NEW, "/")  # not ours: no command at all


def test_accepting_a_new_host_key_records_it_like_accept_new(tmp_path):
    known = tmp_path / "ssh" / "known_hosts"
    policy = ssh.AcceptNewPolicy(known)
    key = paramiko.Ed25519Key.from_private_key(io.StringIO(_ed25519()))
    client = paramiko.SSHClient()
    policy.missing_host_key(client, "[10.0.0.9]:2222", key)
    line = known.read_text().strip()
    assert line == f"[10.0.0.9]:2222 ssh-ed25519 {key.get_base64()}"
    assert client.get_host_keys().lookup("[10.0.0.9]:2222")
    assert policy.accepted and key.fingerprint in policy.accepted[0]


def _ed25519() -> str:
    import subprocess
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{d}/k"],
                       check=True)
        return Path(f"{d}/k").read_text()


def test_json_summary_is_found_after_stray_output():
    assert remote.parse_json('warning\n{"a": {"b": 1}}\n') == {"a": {"b": 1}}
    assert remote.parse_json("no json") is None
    assert json.loads(json.dumps(remote.parse_json("{}"))) == {}


def test_a_command_that_ends_before_reading_its_input_is_a_clear_error():
    """invoke raises ThreadException when stdin cannot be sent: the command already ended
    (say, `clawdie-ops: not found`). That is a HostError naming the host, not a crash."""
    from invoke.exceptions import ThreadException

    class Ended(MockContext):
        def run(self, command, **kw):
            raise ThreadException([])
    with pytest.raises(HostError) as exc:
        remote.run_tool(Ended(), NEW, "migrate-step", "check", stdin={"config": {}})
    assert "on newbox (newbox) ended before it read its input" in exc.value.message
    assert "clawdie-ops migrate-step check" in exc.value.hint

    # the stdin writer's own error is named: a closed socket is not a lost link
    from invoke.util import ExceptionWrapper

    class Closed(MockContext):
        def run(self, command, **kw):
            raise ThreadException([ExceptionWrapper({}, OSError, OSError("Socket is closed"),
                                                    None)])
    with pytest.raises(HostError) as exc:
        remote.run_tool(Closed(), NEW, "migrate-step", "check", stdin={"config": {}})
    assert exc.value.message.endswith("(sending it: OSError: Socket is closed)")


def with_vector(f: dict, *, installed: bool, offered: str | None = "0.8.1",
                superuser_admin: bool | None = None) -> dict:
    """Facts with pgvector: used in memory_db (old) or offered by the server (new)."""
    mem = f["databases"]["memory"]
    if f["role"] == "source":
        mem["extensions"] = [{"name": "vector", "version": "0.8.1", "schema": "public"}]
    else:
        mem["extensions"] = [{"name": "vector", "version": "0.8.1", "schema": "public"}] \
            if installed else []
        mem["offered"] = {"vector": {"version": offered, "superuser": True, "trusted": False}} \
            if offered else {}
        if superuser_admin is not None:
            f["admin"] = {"configured": True, "login": True, "create_role": True,
                          "create_db": True, "superuser": superuser_admin}
    return f


def test_extensions_on_the_new_host_are_checked_before_anything_changes():
    old = with_vector(facts("source"), installed=True)
    ok = by_name(mc.evaluate(old, with_vector(facts("target"), installed=True), new_name="n"))
    assert ok["extensions of memory_db on new host"].status == "ok"
    assert "present there" in ok["extensions of memory_db on new host"].detail
    made = by_name(mc.evaluate(old, with_vector(facts("target"), installed=False,
                                                superuser_admin=True), new_name="n"))
    assert made["extensions of memory_db on new host"].status == "ok"
    assert "made by db_admin before the replay: vector 0.8.1" in \
        made["extensions of memory_db on new host"].detail
    for new, words in ((with_vector(facts("target"), installed=False), "no db_admin"),
                       (with_vector(facts("target"), installed=False, superuser_admin=False),
                        "not one"),
                       (with_vector(facts("target"), installed=False, offered=None,
                                    superuser_admin=True), "not available"),
                       (with_vector(facts("target"), installed=False, offered="0.5.0",
                                    superuser_admin=True), "older than the old host's 0.8.1")):
        ch = by_name(mc.evaluate(old, new, new_name="n"))["extensions of memory_db on new host"]
        assert ch.status == "fail" and words in ch.detail, ch.detail
        assert "db_admin" in ch.fix


def test_upgrade_is_named_and_restrict_lines_need_a_new_enough_psql():
    old = facts("source", pg_client={"pg_dump": {"major": 18, "version": "18.6"},
                                     "psql": {"major": 18, "version": "18.6"}})
    new = facts("target", pg_client={"pg_dump": {"major": 18, "version": "18.6"},
                                     "psql": {"major": 18, "version": "18.6"}})
    for db in new["databases"].values():
        db.update(version="18.6", version_num=180006)
    ch = by_name(mc.evaluate(old, new, new_name="n"))
    assert ch["PostgreSQL versions"].status == "ok"
    assert "an upgrade from PostgreSQL 15.8 to 18.6 by dump and restore" in \
        ch["PostgreSQL versions"].detail
    assert "psql on new host" not in ch
    new["pg_client"]["psql"] = {"major": 17, "version": "17.5"}
    ch = by_name(mc.evaluate(old, new, new_name="n"))["psql on new host"]
    assert ch.status == "fail" and "pg_dump 18.6" in ch.detail and "psql 17.5" in ch.detail
