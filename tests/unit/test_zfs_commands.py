"""ZFS, sanoid and syncoid command construction, and name validation, without a server."""
from __future__ import annotations

import configparser
import re
from datetime import datetime

import pytest
from invoke import Config, MockContext, Result

from clawdie_ops import runner
from clawdie_ops.config import settings as config
from clawdie_ops.zfs import datasets, replication, rollback, sanoid, syncoid, commands as zfs
from clawdie_ops.hosts import ssh
from clawdie_ops.errors import DatasetMissing, InvalidName, NotManaged, ZfsError

DB = "zroot/clawdie/jails/db"
GIT = "zroot/clawdie/jails/git"
BAD_NAMES = ["", "a;b", "-rf", "pool/ds name", "pool/../etc", "pool//x", "$(id)", "pool/`x`",
             "pool/ds\nrm", "pool/x|y", "/abs", "pool/"]


def settings(**over) -> config.Settings:
    cfg = {"commands": {"jail_status": "jls -j {jail_name} jid"}, **over}
    return config.load(Config(overrides={"clawdie": cfg}), root="/nonexistent",
                       env={"ZFS_PREFIX": "clawdie", "WARDEN_DB_IP": "10.0.0.3"})


def ok(stdout: str = "", stderr: str = "", exited: int = 0) -> Result:
    return Result(stdout=stdout, stderr=stderr, exited=exited)


# -- names ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_dataset_name_is_a_clear_error_and_never_a_command(bad):
    c = MockContext(run={})  # any c.run would raise NotImplementedError
    s = settings()
    with pytest.raises(InvalidName, match="not a valid"):
        rollback.make_plan(c, s, f"{bad}@snap")
    with pytest.raises(InvalidName):
        zfs.snapshots(c, s, bad)
    with pytest.raises(InvalidName):
        zfs.snapshot_each(c, s, [DB, bad], "x")
    c.run.assert_not_called()


@pytest.mark.parametrize("target", ["db", "db@a@b", "db@", "db@a;rm -rf /", "db@-r", "db@a b"])
def test_bad_snapshot_name_is_refused_before_any_command(target):
    c = MockContext(run={})
    with pytest.raises(InvalidName):
        rollback.make_plan(c, settings(), target)
    c.run.assert_not_called()


@pytest.mark.parametrize("host", ["", "-oProxyCommand=sh", "a b", "h;id", "$(id)", "h`x`"])
def test_bad_host_is_refused_before_ssh_runs(host):
    c = MockContext(run={})
    with pytest.raises(InvalidName, match="host"):
        ssh.resolve(c, host)
    c.run.assert_not_called()


def test_manual_snapshot_name_refuses_sanoid_and_syncoid_prefixes():
    when = datetime(2026, 3, 16, 11, 30, 5)
    assert zfs.manual_name("pre-upgrade", when) == "pre-upgrade_2026-03-16_11:30:05"
    for tag in ("autosnap", "syncoid_x", "AutoSnap"):
        with pytest.raises(InvalidName, match="pick another --tag"):
            zfs.manual_name(tag, when)
    with pytest.raises(InvalidName):
        zfs.manual_name("a b", when)


def test_jail_shorthand_and_datasets_outside_the_set():
    s = settings()
    assert datasets.name_to_dataset(s, "db") == DB
    assert [j.dataset for j in datasets.select(s, ["git", DB])] == [GIT, DB]
    with pytest.raises(NotManaged, match="not one of the configured"):
        datasets.select(s, ["zroot/other"])
    assert datasets.select(s, ["zroot/other"], allow_other=True)[0].jail is None
    assert datasets.jail_of(s, DB + "/child") == "db"
    assert datasets.jail_of(s, "zroot/clawdie/jails/dbx") is None


# -- zfs -----------------------------------------------------------------------------------

def test_snapshot_of_several_datasets_is_one_atomic_command_on_openzfs():
    s = settings()
    both = f"zfs snapshot -r {DB}@t1 {GIT}@t1"  # each with its descendants (root)
    c = MockContext(run={both: ok()})
    assert zfs.snapshot_each(c, s, [DB, GIT], "t1") is True
    assert [call.args[0] for call in c.run.call_args_list] == [both]


def test_snapshot_falls_back_to_one_per_dataset_on_old_zfs():
    s = settings()
    c = MockContext(run={f"zfs snapshot -r {DB}@t1 {GIT}@t1": ok(stderr="too many arguments",
                                                                exited=2),
                         f"zfs snapshot -r {DB}@t1": ok(), f"zfs snapshot -r {GIT}@t1": ok()})
    assert zfs.snapshot_each(c, s, [DB, GIT], "t1") is False
    assert [call.args[0] for call in c.run.call_args_list][1:] == [
        f"zfs snapshot -r {DB}@t1", f"zfs snapshot -r {GIT}@t1"]


def test_snapshot_failure_names_the_dataset():
    c = MockContext(run={f"zfs snapshot -r {DB}@t1": ok(stderr="permission denied", exited=1)})
    with pytest.raises(ZfsError, match=f"{DB}@t1 failed: permission denied"):
        zfs.snapshot_each(c, settings(), [DB], "t1")


LIST = f"zfs list -H -o name -t snapshot -r -d 1 {DB}"


def snapshot_mock(extra: dict | None = None, written: Result | None = None) -> MockContext:
    names = [f"{DB}@a", f"{DB}@b", f"{DB}@c"]
    props = "".join(f"{n}\tcreation\t{1000 + i}\n{n}\tused\t{100 * (i + 1)}\n"
                    f"{n}\treferenced\t{5000 + i}\n" for i, n in enumerate(names))
    run = {LIST: ok("\n".join(names) + "\n"),
           f"zfs list -H -o name {DB}": ok(DB + "\n"),
           f"zfs list -H -o name -r {DB}": ok(DB + "\n"),
           "zfs get -Hp -o name,property,value creation,used,referenced " + " ".join(names):
               ok(props),
           f"zfs get -Hp -o name,property,value referenced {DB}": ok(f"{DB}\treferenced\t7000\n"),
           f"zfs get -Hp -o value written@a {DB}":
               written or ok(stderr="bad property list: invalid property 'written@a'", exited=2),
           "jls -j db jid": ok(exited=1)}
    run.update(extra or {})
    return MockContext(run=run)


def test_snapshots_newest_first_with_sizes_from_zfs_get_hp():
    snaps = zfs.snapshots(snapshot_mock(), settings(), DB)
    assert [x.name for x in snaps] == ["c", "b", "a"]
    assert (snaps[0].creation, snaps[0].used, snaps[0].referenced) == (1002, 300, 5002)


def test_rollback_plan_lists_exactly_the_newer_snapshots_and_their_size():
    s = settings()
    plan = rollback.make_plan(snapshot_mock(), s, "db@a")
    assert [x.full for x in plan.destroys] == [f"{DB}@c", f"{DB}@b"]
    assert plan.snapshot_bytes == 500
    assert plan.commands == [f"zfs rollback -r {DB}@a"]
    assert plan.jail == "db" and not plan.jail_running
    assert plan.parts[0].written is None  # old ZFS: no written@: the plan says what it can
    text = "\n".join(plan.describe(s))
    assert "2 newer snapshots" in text and "cannot count bytes written" in text
    assert "6.8 KiB now, 4.9 KiB at the snapshot (+2.0 KiB)" in text


def test_rollback_plan_uses_written_at_where_zfs_has_it():
    c = snapshot_mock(written=ok("123456\n"))
    plan = rollback.make_plan(c, settings(), f"{DB}@a")
    assert plan.parts[0].written == 123456
    assert "120.6 KiB written since" in "\n".join(plan.describe(settings()))


def test_rollback_refuses_unknown_snapshot_and_foreign_dataset():
    with pytest.raises(DatasetMissing, match=f"snapshot not found: {DB}@zz"):
        rollback.make_plan(snapshot_mock(), settings(), "db@zz")
    c = MockContext(run={})
    with pytest.raises(NotManaged, match="--force"):
        rollback.make_plan(c, settings(), "zroot/other@a")
    c.run.assert_not_called()


def test_rollback_of_running_jail_stops_and_restarts_it_even_when_zfs_fails():
    s = settings(commands={"jail_status": "jls -j {jail_name} jid",
                           "jail_stop": "bastille stop {jail_name}",
                           "jail_start": "bastille start {jail_name}"})
    c = snapshot_mock({"jls -j db jid": [ok("7"), ok("7"), ok(exited=1)],
                       f"zfs rollback -r {DB}@a": ok(stderr="dataset is busy", exited=1),
                       "bastille stop db": ok(), "bastille start db": ok()})
    plan = rollback.make_plan(c, s, "db@a")
    assert plan.jail_running
    with pytest.raises(ZfsError, match="rollback to .*dataset is busy"):
        rollback.run(c, s, plan)
    issued = [call.args[0] for call in c.run.call_args_list]
    assert issued.index("bastille stop db") < issued.index(f"zfs rollback -r {DB}@a") \
        < issued.index("bastille start db")


# -- sanoid --------------------------------------------------------------------------------

def test_sanoid_config_has_the_runbook_retention_per_class():
    text = sanoid.render(settings())
    ini = configparser.ConfigParser()
    ini.read_string(text)
    assert ini[DB]["use_template"] == "clawdie_db"
    for jail in ("git", "cms", "management"):
        assert ini[f"zroot/clawdie/jails/{jail}"]["use_template"] == "clawdie_jail"
    db, other = ini["template_clawdie_db"], ini["template_clawdie_jail"]
    assert (db["hourly"], db["daily"], db["monthly"]) == ("24", "14", "3")
    assert (other["hourly"], other["daily"], other["monthly"]) == ("12", "7", "2")
    for t in (db, other):
        assert t["autosnap"] == "yes" and t["autoprune"] == "yes"
        assert t["weekly"] == t["yearly"] == t["frequently"] == "0"


# -- ssh and syncoid -----------------------------------------------------------------------

ALIAS_G = """host newbox
user root
hostname 10.1.2.3
port 2222
batchmode yes
identitiesonly yes
stricthostkeychecking true
identityfile ~/.ssh/clawdie_ed25519
userknownhostsfile /etc/clawdie/known hosts /root/.ssh/known_hosts
serveraliveinterval 0
"""
DEFAULT_G = """user root
hostname 10.1.2.3
port 22
batchmode no
identitiesonly no
stricthostkeychecking ask
identityfile ~/.ssh/id_rsa
identityfile ~/.ssh/id_ed25519
userknownhostsfile ~/.ssh/known_hosts ~/.ssh/known_hosts2
serveraliveinterval 0
"""


def resolved_host(tmp_path) -> ssh.SshHost:
    conf = tmp_path / "ssh_config"
    conf.write_text("Host newbox\n  HostName 10.1.2.3\n")  # ssh itself is mocked below
    c = MockContext(run={f"ssh -G -F {conf} newbox": ok(ALIAS_G),
                         "ssh -G -F /dev/null 10.1.2.3": ok(DEFAULT_G)})
    return ssh.resolve(c, "newbox", str(conf))


def test_ssh_alias_resolves_to_what_the_config_changed(tmp_path):
    h = resolved_host(tmp_path)
    assert (h.hostname, h.user, h.port) == ("10.1.2.3", "root", 2222)
    assert h.identity_files == ("~/.ssh/clawdie_ed25519",) and h.config_file.endswith("config")
    assert dict(h.options) == {"BatchMode": "yes", "IdentitiesOnly": "yes",
                               "StrictHostKeyChecking": "true",
                               "UserKnownHostsFile": "/etc/clawdie/known hosts "
                                                     "/root/.ssh/known_hosts"}


def test_syncoid_command_carries_the_ssh_config_quoted_for_its_shell(tmp_path):
    h = resolved_host(tmp_path)
    line = runner.line(syncoid.command("syncoid", DB, "tank/clawdie/jails/db", h,
                                       syncoid.SyncOptions("zstd-fast", "20m")))
    assert line == (
        "syncoid --recursive --compress=zstd-fast '--pv-options=-n -b -i 5' "
        "--source-bwlimit=20m "
        "--sshport=2222 '--sshkey='\"'\"'~/.ssh/clawdie_ed25519'\"'\"'' "
        "--sshoption=IdentitiesOnly=yes --sshoption=BatchMode=yes "
        "--sshoption=StrictHostKeyChecking=true "
        "'--sshoption='\"'\"'UserKnownHostsFile=/etc/clawdie/known hosts "
        "/root/.ssh/known_hosts'\"'\"'' "
        f"{DB} root@10.1.2.3:tank/clawdie/jails/db 2>&1")


def test_syncoid_target_names_the_user_so_root_needs_no_sudo():
    h = ssh.SshHost("n", "10.0.0.9", "backup", 22)
    assert syncoid.target_spec(h, DB) == f"backup@10.0.0.9:{DB}"
    assert syncoid.ssh_args(h) == []
    with pytest.raises(InvalidName):
        syncoid.target_spec(h, "x;reboot")
    with pytest.raises(InvalidName):
        syncoid.SyncOptions("none", "10m; rm")
    with pytest.raises(InvalidName):
        syncoid.SyncOptions("bzip9")


def test_compression_only_when_both_ends_have_it():
    assert syncoid.choose_compress({"zstd", "lzop"}, {"zstd"}) == "zstd-fast"
    assert syncoid.choose_compress({"zstd", "lzop"}, {"lzop", "pv"}) == "lzo"
    assert syncoid.choose_compress({"pv"}, {"zstd"}) == "none"
    assert syncoid.found_tools("/usr/bin/zstd\n/usr/local/bin/pv\n") == {"zstd", "pv"}


FIRST_RUN = """\
WARN: ZFS resume feature not available on source and target machine - sync will continue without resume support.
INFO: Sending oldest full snapshot zp/c/jails/git@pre_2026 (~ UNKNOWN) to new target filesystem:
Pseudo-terminal will not be allocated because stdin is not a terminal.
131072
275896
INFO: Updating new target filesystem with incremental zp/c/jails/git@pre_2026 ... syncoid_vm_2026 (~ UNKNOWN):
2184
"""


def test_syncoid_output_counts_each_transfer_from_pv():
    report = syncoid.parse_output(FIRST_RUN)
    assert [(t.kind, t.counted) for t in report.transfers] == [("full", 275896),
                                                               ("incremental", 2184)]
    assert (report.kind, report.bytes, report.method) == ("full", 278080, "pv")
    assert report.warnings and not report.errors


def test_syncoid_output_without_pv_falls_back_to_its_estimate():
    report = syncoid.parse_output(
        "Sending incremental zp/a@x ... syncoid_2 (~ 12 KB):\n"
        "CRITICAL ERROR: Target zp/b exists but has no snapshots matching with zp/a!\n"
        "                target. Cowardly refusing to destroy your existing target.\n")
    assert (report.kind, report.bytes, report.method) == ("incremental", 12 * 1024, "estimate")
    assert report.refused_existing and report.errors


# -- replication plan ----------------------------------------------------------------------

def test_target_pool_and_inventory_overrides_map_the_dataset_names():
    s = settings()
    cfg = {"hosts": {"new": {"ssh": "newbox", "root": "/srv/clawdie",
                             "overrides": {"zfs_pool": "tank", "home": "/home/c", "commands": {
                                 "jail_stop": "service jail stop {jail_name}"}}}}}
    ts, alias = replication.target_settings(s, cfg, "new")
    assert alias == "newbox" and ts.zfs_pool == "tank" and str(ts.root) == "/srv/clawdie"
    assert replication.map_dataset(s, ts, DB) == "tank/clawdie/jails/db"
    assert ts.command("jail_stop", jail="db") == "service jail stop db"
    ts2, alias2 = replication.target_settings(s, cfg, "other")
    assert alias2 == "other" and replication.map_dataset(s, ts2, DB) == DB


PARENT = "zroot/clawdie/jails"
TREE = f"zfs get -rHp -o name,property,value creation,receive_resume_token {PARENT}"


def tree(filesystems: list[str], snaps: list[str], token: str = "-") -> Result:
    """What `zfs get -r` of the jails' parent prints (creation, receive_resume_token)."""
    lines = [f"{fs}\tcreation\t1" for fs in filesystems]
    lines += [f"{fs}\treceive_resume_token\t{token if fs == DB else '-'}" for fs in filesystems]
    lines += [f"{snap}\tcreation\t{i + 2}" for i, snap in enumerate(snaps)]
    lines += [f"{snap}\treceive_resume_token\t-" for snap in snaps]
    return ok("\n".join(lines) + "\n")


def replication_mocks(remote_snaps: str, token: str = "-") -> tuple[MockContext, MockContext]:
    local = MockContext(run={
        TREE: tree([PARENT, DB, f"{DB}/root"], [f"{DB}@a"]),
        "ssh -G newbox": ok(ALIAS_G), "ssh -G -F /dev/null 10.1.2.3": ok(DEFAULT_G),
        runner.line(syncoid.probe_cmd()): ok("/usr/bin/zstd\n"),
        runner.line(syncoid.version_cmd("syncoid")): ok("/usr/local/bin/syncoid version 2.3.0\n")})
    remote = MockContext(run={
        runner.line(syncoid.probe_cmd()): ok("/usr/bin/zstd\n"),
        TREE: tree([PARENT, DB], remote_snaps.split(), token)})
    return local, remote


def test_the_probe_reads_each_side_once_and_knows_zfs_without_resume_tokens():
    """One `zfs get -r` per host, whatever the number of datasets; zfs-fuse, which has no
    receive_resume_token, is asked again for the creation times alone."""
    local, remote = replication_mocks(f"{DB}@a\n")
    remote.set_result_for("run", TREE, ok(
        stderr="bad property list: invalid property 'receive_resume_token'", exited=2))
    remote.set_result_for("run", f"zfs get -rHp -o name,property,value creation {PARENT}",
                          ok(f"{PARENT}\tcreation\t1\n{DB}\tcreation\t1\n{DB}@b\tcreation\t5"
                             f"\n{DB}@a\tcreation\t3\n"))
    plan = replication.make_plan(local, settings(), {}, "newbox", ["db"], conn=remote)
    assert (plan.pairs[0].state, plan.pairs[0].common) == ("common", "a")
    assert plan.pairs[0].children == (f"{DB}/root",)  # not on the target yet: sent in full
    zfs_calls = [c.args[0] for c in local.run.call_args_list if c.args[0].startswith("zfs ")]
    assert zfs_calls == [TREE]
    gone = MockContext(run={TREE: ok(stderr=f"cannot open '{PARENT}': dataset does not exist",
                                     exited=1)})
    assert zfs.tree(gone, settings(), PARENT) is None


def test_replication_sets_aside_a_target_that_shares_no_snapshot_and_never_destroys_it():
    s = settings()
    local, remote = replication_mocks(f"{DB}@other\n")
    with pytest.raises(ZfsError, match="shares no snapshot") as err:
        replication.make_plan(local, s, {}, "newbox", ["db"], conn=remote,
                              aside_suffix="pre-test")
    assert "set" in err.value.hint and "aside" in err.value.hint
    plan = replication.make_plan(local, s, {}, "newbox", ["db"], replace_existing=True,
                                 conn=remote, aside_suffix="pre-test")
    pair = plan.pairs[0]
    assert pair.state == "diverged" and pair.aside == f"{DB}.pre-test"
    assert pair.children == (f"{DB}/root",)
    command = runner.line(plan.command(pair))
    # the jail's files are in the child `root`: -r, and never --force-delete (it would
    # destroy the target's children too)
    assert "--recursive" in command and "--force-delete" not in command
    text = "\n".join(plan.describe())
    assert f"zfs rename {DB} {DB}.pre-test" in text and f"with {DB}/root" in text
    assert "syncoid version 2.3.0" in text
    assert plan.options.compress == "zstd-fast"


def test_replication_classes_a_target_holding_a_resume_token_as_resumable():
    local, remote = replication_mocks("", token="1-e604ea4bf-e0-789c63a2")
    plan = replication.make_plan(local, settings(), {}, "newbox", ["db"], conn=remote)
    assert plan.pairs[0].state == "resumable" and plan.pairs[0].aside is None
    assert "receive_resume_token" in "\n".join(plan.describe())


def test_syncoid_before_2_3_starts_parallel_runs_seconds_apart():
    """Its control socket is /tmp/syncoid-HOST-SECONDS before 2.3: two starts within one
    second would share one master connection."""
    local, remote = replication_mocks("", token="1-e604ea4bf-e0-789c63a2")
    plan = replication.make_plan(local, settings(), {}, "newbox", ["db"], conn=remote)
    assert plan.syncoid_version == (2, 3, 0) and not plan.shared_sockets
    for old in ((2, 1, 0), (2, 2, 9), None):  # unknown: as careful as the oldest
        plan.syncoid_version = old
        assert plan.shared_sockets
    assert syncoid.control_socket_prefix(plan.host).startswith("/tmp/syncoid-")


def test_the_next_start_waits_for_the_sockets_second_to_pass(tmp_path):
    import threading
    import time

    prefix = str(tmp_path / "syncoid-root@h-")
    stale = prefix + "1000"  # an earlier run's, known before this start
    open(stale, "w").close()
    started = time.monotonic()

    def make_socket() -> None:
        time.sleep(0.3)
        open(prefix + str(int(time.time())), "w").close()
    threading.Thread(target=make_socket).start()
    replication._apart(prefix, started, {stale}, threading.Event(), threading.Event())
    made = max(int(p.rsplit("-", 1)[1]) for p in map(str, tmp_path.iterdir()))
    assert time.time() >= made + 1 and time.monotonic() - started >= 0.3

    # no socket at all (syncoid failed first): START_GAP after that start, never forever
    started = time.monotonic() - replication.SOCKET_WAIT
    replication._apart(str(tmp_path / "none-"), started, set(), threading.Event(),
                       threading.Event())
    assert time.monotonic() - started < replication.SOCKET_WAIT + 1
    # that run has ended already (its master closed): no wait at all
    ended = threading.Event()
    ended.set()
    started = time.monotonic()
    replication._apart(str(tmp_path / "none-"), started, set(), ended, threading.Event())
    assert time.monotonic() - started < 0.5


def test_zfs_delegation_runs_syncoid_without_privilege_elevation():
    local, remote = replication_mocks(f"{DB}@a\n")
    plan = replication.make_plan(local, settings(), {"zfs_delegation": True}, "newbox", ["db"],
                                 conn=remote)
    assert plan.pairs[0].state == "common"
    assert "--no-privilege-elevation" in runner.line(plan.command(plan.pairs[0]))
    plain = replication.make_plan(local, settings(), {}, "newbox", ["db"], conn=remote)
    assert "--no-privilege-elevation" not in runner.line(plain.command(plain.pairs[0]))


@pytest.mark.parametrize("task", ["snapshot", "snapshots", "rollback", "sanoid-config",
                                  "replicate"])
def test_every_flag_has_help_text(task):
    import subprocess

    from tests.conftest import CLI

    res = subprocess.run([CLI, task, "--help"], capture_output=True, text=True, check=True)
    options = res.stdout.split("Options:")[1].strip().splitlines()
    flags = [line for line in options if line.lstrip().startswith("-")]
    described = [line for line in flags
                 if re.match(r"^\s*(-\w(\s\w+)?, )?--[\w-]+(=\w+)?\s{2,}\S", line)]
    assert flags and described == flags, res.stdout


def test_fabric_connections_hand_every_command_to_sh_c():
    """Fabric passes a command to the remote login shell as it is (csh on older FreeBSD
    installs); clawdie-ops' Connections wrap it in `/bin/sh -c '...'` (tested against a
    csh-like login shell in tests/integration/test_freebsd_like_host.py)."""
    from unittest.mock import Mock

    h = ssh.SshHost("box", "192.0.2.7", "root", 22)
    conn = ssh.connect(h)
    assert conn.config.run.shell == "/bin/sh"
    remote_runner = conn.config.runners.remote
    r = remote_runner.__new__(remote_runner)
    r.clawdie_shell, r.channel = "/bin/sh", Mock()
    r.send_start_message('mktemp -d "${TMPDIR:-/tmp}/x.XXXX"')
    r.channel.exec_command.assert_called_once_with(
        "/bin/sh -c 'mktemp -d \"${TMPDIR:-/tmp}/x.XXXX\"'")


def test_a_listing_that_fails_names_the_host_and_what_to_check():
    broken = MockContext(run={TREE: ok(stderr="permission denied", exited=1),
                              f"zfs get -rHp -o name,property,value creation {PARENT}":
                                  ok(stderr="permission denied", exited=1)})
    with pytest.raises(ZfsError, match="snapshots on newbox failed: permission denied") as err:
        zfs.tree(broken, settings(), PARENT, where="newbox")
    assert f"zfs list -r {PARENT}" in err.value.hint
