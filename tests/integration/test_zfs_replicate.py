"""`clawdie-ops replicate` over real SSH between two simulated hosts on zfs-fuse."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import CLI, cli
from tests.helpers import children, cmdline, descendants, jail_digest, wait_until
from tests.integration.test_zfs_snapshots import RIG_PATH, configure, zfs_snapshots
from tests.rig.services import ZFS, sh

JAILS = ("db", "git", "cms", "management")


@pytest.fixture
def target(rig):
    """The new host: sshd, its own pool, nothing received yet."""
    h = rig.new_host(ssh=True, datasets=False, populated=False)
    yield h
    rig.drop(h)


def point_at(source, target, rig) -> None:
    """The source operator's config: the rig's ssh config file and an inventory entry."""
    configure(source, ssh_config=str(rig.ssh_config), hosts={
        target.alias: {"ssh": target.alias, "root": str(target.root),
                       "overrides": {"home": str(target.home)}}})


def digests(h, pool: str | None = None) -> dict[str, dict[str, str]]:
    """Every file of each jail dataset and of its `root` child (bastille's layout), apart."""
    out = {}
    for jail in JAILS:
        for rel in ("", "/root"):
            ds = (h.dataset(jail) if pool is None else f"{pool}/clawdie/jails/{jail}") + rel
            out[jail + rel] = jail_digest(h.pool.mount_of(ds))
    assert all(out[f"{j}/root"] for j in JAILS) and all("jail.conf" in out[j] for j in JAILS)
    return out


def test_replicate_delivers_every_dataset_then_only_the_increment(rig, host, target):
    tpool = target.pool_name
    # The source's PostgreSQL lives in its db jail's dataset: stopped here, so the files
    # compared and the increment's bytes are only what this test wrote
    host.cluster.stop()
    # The db jail "runs" on the target; its stop and start record what the dataset holds.
    (target.home / ".rig-jails").mkdir()
    (target.home / ".rig-jails" / "db").touch()
    tdb = f"{tpool}/clawdie/jails/db"
    probe = f"(zfs list -H -o name -t snapshot -r {tdb} 2>/dev/null | wc -l)"
    configure(host, ssh_config=str(rig.ssh_config), hosts={target.alias: {
        "ssh": target.alias, "root": str(target.root), "overrides": {
            "home": str(target.home), "commands": {
                "jail_stop": f"rm -f {{home}}/.rig-jails/{{jail_name}} && {probe} > "
                             "{home}/at-stop",
                "jail_start": f"touch {{home}}/.rig-jails/{{jail_name}} && {probe} > "
                              "{home}/at-start"}}}})

    plan = cli(host, "replicate", "--to", target.alias, "--target-pool", tpool, "--dry-run",
               "--json", env=RIG_PATH, check=True)
    lines = json.loads(plan.stdout)["plan"]
    assert sum("full (first time)" in line for line in lines) == 4
    assert any(f"root@{target.address}:{tdb}" in line and "--sshport=2222" in line
               for line in lines)
    assert not (target.home / "at-stop").exists()  # the dry run changed nothing there

    res = cli(host, "replicate", "--to", target.alias, "--target-pool", tpool, "--json",
              env=RIG_PATH, check=True)
    first = json.loads(res.stdout)
    assert [d["mode"] for d in first["datasets"]] == ["full"] * 4
    for d in first["datasets"]:
        assert d["bytes_method"] == "pv" and d["bytes"] >= 200_000  # data.bin is 200 kB
        assert d["target"] == f"{tpool}/clawdie/jails/{d['jail']}"
        assert d["source"] in res.stderr  # progress per dataset
    assert first["bytes"] == sum(d["bytes"] for d in first["datasets"])
    assert digests(target, tpool) == digests(host)  # byte for byte
    # The target's jail was stopped before anything arrived and started once it had.
    assert (target.home / "at-stop").read_text().strip() == "0"
    assert int((target.home / "at-start").read_text()) >= 1
    assert (target.home / ".rig-jails" / "db").exists()
    for d in first["datasets"]:  # each jail with its root child, one recursive syncoid
        assert d["children"] == [f"{d['source']}/root"]
        assert [t["kind"] for t in d["transfers"]].count("full") == 2

    mnt = host.jail_files("db")
    (mnt / "increment.bin").write_bytes(os.urandom(64_000))
    (mnt / "etc" / "rc.conf").write_text("hostname=db2\n")
    done_at = int(time.time())  # syncoid's snapshot names have one-second resolution:
    wait_until(lambda: int(time.time()) > done_at, 5, "the next second")
    second = json.loads(cli(host, "replicate", "--to", target.alias, "--target-pool", tpool,
                            "--json", env=RIG_PATH, check=True).stdout)
    by_jail = {d["jail"]: d for d in second["datasets"]}
    assert {d["mode"] for d in second["datasets"]} == {"incremental"}
    assert 64_000 <= by_jail["db"]["bytes"] < 64_000 + 40_000  # the new file, little else
    for jail in ("git", "cms", "management"):
        assert by_jail[jail]["bytes"] < 40_000  # nothing changed: a few kB per dataset
    assert by_jail["db"]["bytes"] < first["datasets"][0]["bytes"] / 2
    assert digests(target, tpool) == digests(host)
    newest = zfs_snapshots(host.dataset("db"))[-1].split("@")[1]
    assert newest.startswith("syncoid_") and f"{tdb}@{newest}" in zfs_snapshots(tdb)


def test_replicate_refuses_an_unknown_host_key(rig, host, target, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text("")
    config = tmp_path / "ssh_config"
    # Whatever StrictHostKeyChecking says (yes, no, accept-new): an unknown key is refused
    # on the replication leg, and nothing is recorded.
    for strict in ("yes", "no", "accept-new"):
        config.write_text(rig.ssh_config.read_text().replace(
            str(rig.known_hosts), str(known)).replace(
            "StrictHostKeyChecking yes", f"StrictHostKeyChecking {strict}"))
        configure(host, ssh_config=str(config))
        res = cli(host, "replicate", "--to", target.alias, "--target-pool", target.pool_name,
                  "--dry-run", env=RIG_PATH)
        err = " ".join(res.stderr.split())
        assert res.returncode == 1 and f"the host key of {target.alias} is unknown" in err, err
        assert "ssh-keyscan" in err
        assert known.read_text() == ""
    res = cli(host, "replicate", "--to", "nosuch;host", env=RIG_PATH)
    assert res.returncode == 1 and "not a valid host" in res.stderr


def zfs_datasets(pool: str) -> list[str]:
    return sh(ZFS, "list", "-H", "-o", "name", "-r", pool).stdout.split()


STREAM_READERS = ("mbuffer", "zstd", "lzop")


def _ppid(pid: int) -> int:
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def received_bytes(sshd: int, target: str) -> int | None:
    """Bytes the first reader of the receive pipeline into `target` has read so far
    (/proc/PID/io): mbuffer or the decompressor where syncoid uses them (zfs-fuse's
    `zfs receive` hands its stdin to the daemon, so its own count stays at a few kB).
    None while no receive into `target` runs. syncoid -r receives the jail dataset first
    (a few kB), then its `root`: the one to cut."""
    sessions = {pid for pid in descendants(sshd)
                if f"zfs receive -F {target} " in cmdline(pid) + " "
                or f"'{target}'" in cmdline(pid)}
    if not sessions:
        return None
    most = 0
    for pid in descendants(sshd):
        name = cmdline(pid).split(" ", 1)[0].rsplit("/", 1)[-1]
        if (name in STREAM_READERS and _ppid(pid) in sessions) or pid in sessions:
            try:
                io = (Path("/proc") / str(pid) / "io").read_text()
            except OSError:
                continue
            most = max(most, next((int(line.split()[1]) for line in io.splitlines()
                                   if line.startswith("rchar:")), 0))
    return most


def test_replication_killed_midway_completes_when_run_again(rig, host, target):
    point_at(host, target, rig)
    tpool = target.pool_name
    mnt = host.jail_files("db")
    (mnt / "big.bin").write_bytes(os.urandom(3_000_000))
    env = host.proc_env()
    env.update(RIG_PATH)
    # 150 kB/s: the db stream takes about twenty seconds, long enough to cut it on a
    # loaded machine too.
    proc = subprocess.Popen([CLI, "replicate", "--to", target.alias, "--target-pool", tpool,
                             "--dataset", "db", "--bwlimit", "150k", "--json"], env=env,
                            cwd=host.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    sshd = target.sshd.proc.pid
    root = f"{tpool}/clawdie/jails/db/root"
    deadline = time.monotonic() + 60
    while (start := received_bytes(sshd, root)) is None:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the receive of the jail's root never started"
        time.sleep(0.1)
    # some of the root's stream has arrived (beyond what its readers read to start up)
    wait_until(lambda: (received_bytes(sshd, root) or 0) > start + 100_000, 60,
               "the first 100 kB of the root's stream to arrive")
    # Cut the link: kill the target's per-connection sshd processes (the listener stays).
    for pid in children(sshd):
        os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err
    assert f"replicating {host.dataset('db')} to {target.alias}" in err
    assert "run the same replicate again" in err
    tdb = f"{tpool}/clawdie/jails/db/root"
    cut_short = tdb not in zfs_datasets(tpool) or \
        not (target.pool.mount_of(tdb) / "big.bin").exists()
    assert cut_short, "the first run finished before the link was cut: the test proves nothing"

    again = json.loads(cli(host, "replicate", "--to", target.alias, "--target-pool", tpool,
                           "--dataset", "db", "--json", env=RIG_PATH, check=True).stdout)
    assert again["datasets"][0]["bytes"] >= 3_000_000
    assert jail_digest(target.pool.mount_of(tdb)) == jail_digest(mnt)


def test_ssh_options_with_spaces_survive_syncoids_shell(tmp_path):
    """syncoid pastes `-o VALUE` into a shell string: what ssh then reads is what we meant."""
    import shlex

    from clawdie_ops.hosts import ssh as sshmod
    from clawdie_ops.zfs import syncoid

    known = tmp_path / "known hosts"  # spaces in the paths
    key = tmp_path / "id one"
    key.write_text("")
    h = sshmod.SshHost("box", "192.0.2.7", "root", 2222, (str(key),),
                       (("UserKnownHostsFile", f"{known} /etc/other"),
                        ("StrictHostKeyChecking", "yes")))
    argv = shlex.split(shlex.join(syncoid.ssh_args(h)))  # what syncoid's @ARGV holds
    values = {}
    for arg in argv:
        flag, _, value = arg.partition("=")
        values.setdefault(flag, []).append(value)
    # syncoid 2.1: "-o $_" for each --sshoption, "-p $port", "-i $key", in one shell line.
    line = "ssh -G " + " ".join("-o " + v for v in values["--sshoption"]) + \
        f" -p {values['--sshport'][0]} -i {values['--sshkey'][0]} 192.0.2.7"
    seen = sshmod.parse(subprocess.run(["sh", "-c", line], capture_output=True, text=True,
                                       check=True).stdout)
    assert seen["userknownhostsfile"] == [f"{known} /etc/other"]
    assert seen["port"] == ["2222"] and seen["stricthostkeychecking"] == ["true"]
    assert str(key) in seen["identityfile"]


def _mounted(dataset: str) -> str:
    return sh(ZFS, "get", "-H", "-o", "value", "mounted", dataset).stdout.strip()


def _db_replicated_once(rig, host, target) -> tuple[tuple[str, ...], str, str]:
    """The db jail replicated to `target` once: the replicate arguments, the target's jail
    dataset and its `root`."""
    point_at(host, target, rig)
    tpool = target.pool_name
    args = ("replicate", "--to", target.alias, "--target-pool", tpool, "--dataset", "db",
            "--json")
    cli(host, *args, env=RIG_PATH, check=True)
    return args, f"{tpool}/clawdie/jails/db", f"{tpool}/clawdie/jails/db/root"


def test_a_target_left_unmounted_by_a_cut_receive_is_mounted_by_the_next_replicate(
        rig, host, target):
    """The fault campaign's replicate-30/31: a killed `zfs receive` (or an sshd restart)
    mid-way through an incremental leaves the target unmounted; the next replicate exited
    0 with every snapshot received and the target still unmounted (its jail would start
    on an empty folder)."""
    args, tdb, troot = _db_replicated_once(rig, host, target)
    # what an incremental receive cut short leaves: it unmounts the target first
    sh(ZFS, "unmount", troot)
    sh(ZFS, "unmount", tdb)
    assert _mounted(troot) == "no" and _mounted(tdb) == "no"
    (host.jail_files("db") / "after.bin").write_bytes(os.urandom(50_000))

    res = cli(host, *args, env=RIG_PATH, check=True)
    assert _mounted(tdb) == "yes" and _mounted(troot) == "yes"
    assert jail_digest(target.pool.mount_of(troot)) == jail_digest(host.jail_files("db"))
    assert jail_digest(target.pool.mount_of(tdb)) == jail_digest(host.pool.mount_of(
        host.dataset("db")))
    item = json.loads(res.stdout)["datasets"][0]
    assert sorted(item["remounted"]) == sorted([tdb, troot])
    assert f"{target.alias}:{troot} was received but not mounted: mounted it" in res.stderr
    # mounted as it should be: the run after that has nothing to mount
    again = json.loads(cli(host, *args, env=RIG_PATH, check=True).stdout)
    assert again["datasets"][0]["remounted"] == []

    # the campaign's replicate-7: the jail's root left mounted inside db's folder while db
    # is not, so that folder is not empty and `zfs mount db` alone fails
    sh(ZFS, "unmount", troot)
    sh(ZFS, "unmount", tdb)
    sh(ZFS, "mount", troot)
    assert _mounted(tdb) == "no" and _mounted(troot) == "yes"
    (host.jail_files("db") / "later.bin").write_bytes(os.urandom(50_000))
    res = cli(host, *args, env=RIG_PATH, check=True)
    assert _mounted(tdb) == "yes" and _mounted(troot) == "yes"
    assert json.loads(res.stdout)["datasets"][0]["remounted"] == [tdb]
    assert jail_digest(target.pool.mount_of(troot)) == jail_digest(host.jail_files("db"))
    assert jail_digest(target.pool.mount_of(tdb)) == jail_digest(host.pool.mount_of(
        host.dataset("db")))


def test_a_failed_replicate_mounts_the_targets_earlier_state_again(rig, host, target, tmp_path):
    """The campaign's replicate-8: a `zfs receive` killed mid-way through an incremental
    left the target unmounted and the run failed; its jail then started on an empty
    folder. Now the failed run mounts the earlier state again before the jail starts."""
    args, tdb, troot = _db_replicated_once(rig, host, target)
    earlier = jail_digest(target.pool.mount_of(troot))
    # the receive cut short: the target unmounted, then syncoid fails
    failing = tmp_path / "syncoid"
    failing.write_text(f"#!/bin/sh\n[ \"$1\" = --version ] && exec syncoid \"$@\"\n"
                       f"{ZFS} unmount {troot} && {ZFS} unmount {tdb}\n"
                       "echo 'CRITICAL ERROR: receive cut short' >&2\nexit 2\n")
    failing.chmod(0o755)
    configure(host, syncoid=str(failing))
    (host.jail_files("db") / "after.bin").write_bytes(os.urandom(50_000))

    res = cli(host, *args, env=RIG_PATH)
    assert res.returncode == 1, res.stderr
    err = " ".join(res.stderr.split())
    assert f"replicating {host.dataset('db')} to {target.alias}" in err
    assert f"{tdb}, {troot} mounted again (its earlier state)" in err, err
    assert _mounted(tdb) == "yes" and _mounted(troot) == "yes"
    assert jail_digest(target.pool.mount_of(troot)) == earlier


def _logging_syncoid(tmp_path: Path, log: Path, fail: str = "") -> Path:
    """A syncoid that notes when each dataset's run starts and ends (db's ends a second
    late, so that the runs overlap when they go at once) and fails for `fail`."""
    wrapper = tmp_path / "syncoid"
    wrapper.write_text(f"""#!/bin/sh
[ "$1" = --version ] && exec syncoid "$@"
prev=; last=; for a in "$@"; do prev=$last; last=$a; done
echo "start ${{prev##*/}} $(date +%s.%N)" >> {log}
case "$prev" in */{fail or 'none'}) echo 'CRITICAL ERROR: refused here' >&2; rc=2 ;;
  *) syncoid "$@"; rc=$? ;; esac
case "$prev" in */db) sleep 1 ;; esac
echo "end ${{prev##*/}} $(date +%s.%N)" >> {log}
exit $rc
""")
    wrapper.chmod(0o755)
    return wrapper


def _runs(log: Path) -> dict[str, tuple[float, float]]:
    """Each dataset's (start, end) from the wrapper's log."""
    seen: dict[str, list[float]] = {}
    for line in log.read_text().splitlines():
        _, name, at = line.split()
        seen.setdefault(name, []).append(float(at))
    return {name: (t[0], t[-1]) for name, t in seen.items()}


def test_replicate_with_jobs_sends_datasets_at_once_and_starts_none_after_a_failure(
        rig, host, target, tmp_path):
    host.cluster.stop()  # its files live in the db jail's dataset: compared below
    point_at(host, target, rig)
    tpool = target.pool_name
    log = tmp_path / "runs.log"
    configure(host, syncoid=str(_logging_syncoid(tmp_path, log)))
    args = ("replicate", "--to", target.alias, "--target-pool", tpool, "--json")
    plan = cli(host, *args, "--jobs", "2", "--dry-run", env=RIG_PATH, check=True)
    # the rig's syncoid is Debian 12's 2.1: its starts are spaced (FreeBSD's 2.3 needs not)
    assert any(line.startswith("at once    2 of these datasets, each started once the one "
                               "before has named its SSH control socket")
               for line in json.loads(plan.stdout)["plan"]), plan.stdout

    res = json.loads(cli(host, *args, "--jobs", "2", env=RIG_PATH, check=True).stdout)
    assert res["jobs"] == 2 and [d["jail"] for d in res["datasets"]] == list(JAILS)
    assert [d["mode"] for d in res["datasets"]] == ["full"] * 4
    assert digests(target, tpool) == digests(host)
    runs = _runs(log)
    assert runs["git"][0] < runs["db"][1]  # git began while db still ran

    # A failure: git refuses at once; db, beside it, finishes; cms and management never start
    log.unlink()
    configure(host, syncoid=str(_logging_syncoid(tmp_path, log, fail="git")))
    (host.jail_files("db") / "after.bin").write_bytes(os.urandom(50_000))
    failed = cli(host, *args, "--jobs", "2", env=RIG_PATH)
    assert failed.returncode == 1, failed.stderr
    err = " ".join(failed.stderr.split())
    assert f"replicating {host.dataset('git')} to {target.alias}" in err, err
    assert "refused here" in err
    runs = _runs(log)
    assert set(runs) == {"db", "git"}, runs
    assert runs["db"][1] > runs["git"][1]  # db went on to its end after git had failed
    assert digests(target, tpool)["db/root"] == digests(host)["db/root"]  # after.bin came
    bad = cli(host, *args, "--jobs", "0", env=RIG_PATH)
    assert bad.returncode != 0 and "--jobs 0 is not a number of datasets at once" in \
        bad.stderr, bad.stderr
