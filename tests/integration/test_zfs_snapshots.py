"""Snapshots, listing, rollback and sanoid's retention on the rig's real zfs-fuse pools."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

from tests.conftest import cli
from tests.helpers import tree_digest
from tests.rig.hosts import RIG_BIN
from tests.rig.services import ZFS, sh

# syncoid and sanoid need the rig's zfs-fuse wrapper first on PATH (never the product).
RIG_PATH = {"PATH": f"{RIG_BIN}:{os.environ['PATH']}"}


def configure(h, **extra) -> None:
    """Add settings to the host's ~/.invoke.json, as an operator would."""
    path = h.home / ".invoke.json"
    data = json.loads(path.read_text())
    for key, value in extra.items():
        if isinstance(value, dict):
            data["clawdie"][key] = {**data["clawdie"].get(key, {}), **value}
        else:
            data["clawdie"][key] = value
    path.write_text(json.dumps(data, indent=2))


def run_json(h, *args: str) -> dict:
    return json.loads(cli(h, *args, "--json", check=True, env=RIG_PATH).stdout)


def zfs_snapshots(ds: str) -> list[str]:
    """Independent of the product: what zfs itself lists, oldest first."""
    out = sh(ZFS, "list", "-H", "-o", "name", "-t", "snapshot", "-r", "-d", "1", ds).stdout
    return [n for n in out.split() if n.startswith(ds + "@")]


def test_snapshot_list_and_rollback_change_the_files_exactly_as_zfs_says(host):
    db, root = host.dataset("db"), host.root_dataset("db")
    # The host's PostgreSQL lives in the db jail's dataset (var/db/postgres): stopped, so
    # the files compared are only what this test wrote (the jail's stand-in below neither
    # stops nor starts it)
    host.cluster.stop()
    top, mnt = host.pool.mount_of(db), host.jail_files("db")  # jail.conf / the jail's files
    assert (top / "jail.conf").is_file() and (mnt / "etc" / "rc.conf").is_file()
    first = run_json(host, "snapshot", "--tag", "before")
    assert first["atomic"] and first["name"].startswith("before_")
    assert {f"{db}@{first['name']}", f"{root}@{first['name']}"} <= set(first["snapshots"])
    for jail in ("db", "git", "cms", "management"):
        assert f"{host.dataset(jail)}@{first['name']}" in zfs_snapshots(host.dataset(jail))
        assert f"{host.root_dataset(jail)}@{first['name']}" in \
            zfs_snapshots(host.root_dataset(jail))
    at_first = tree_digest(top)
    files_at_first = tree_digest(mnt)
    assert files_at_first and set(files_at_first) < {
        k.removeprefix("root/") for k in at_first}  # the parent's tree shows its root

    (mnt / "etc" / "rc.conf").write_text("hostname=changed\n")
    (mnt / "data.bin").unlink()
    (mnt / "new.txt").write_bytes(os.urandom(30_000))
    (top / "jail.conf").write_text("db { path = /elsewhere; }\n")
    second = run_json(host, "snapshot", "--dataset", "db", "--tag", "after")
    # --dataset is recursive too: the jail's root child is in it
    assert second["snapshots"] == [f"{db}@{second['name']}", f"{root}@{second['name']}"]
    assert f"{root}@{second['name']}" in zfs_snapshots(root)
    (mnt / "newest.txt").write_bytes(os.urandom(10_000))

    listing = run_json(host, "snapshots", "--dataset", "db")["datasets"]
    assert [e["dataset"] for e in listing] == [db]
    snaps = listing[0]["snapshots"]
    assert [x["name"] for x in snaps] == [second["name"], first["name"]]  # newest first
    for x in snaps:  # the same numbers zfs itself reports
        raw = sh(ZFS, "get", "-Hp", "-o", "value", "creation,used,referenced",
                 x["snapshot"]).stdout.split()
        assert [x["creation"], x["used"], x["referenced"]] == [int(v) for v in raw]

    # A "running" db jail records what its files hold when it is stopped and started.
    jails = host.home / ".rig-jails"
    jails.mkdir(exist_ok=True)
    (jails / "db").write_text(str(mnt))
    configure(host, commands={
        "jail_stop": f"rm -f {{home}}/.rig-jails/{{jail_name}} && ls {mnt} > {{home}}/at-stop",
        "jail_start": f"echo {mnt} > {{home}}/.rig-jails/{{jail_name}} && ls {mnt} > "
                      "{home}/at-start"})

    target = f"{db}@{first['name']}"
    plan = run_json(host, "rollback", target, "--dry-run")
    # what each dataset of the tree loses, the root child's included
    assert [x["snapshot"] for x in plan["destroys"]] == [f"{db}@{second['name']}",
                                                         f"{root}@{second['name']}"]
    assert [d["dataset"] for d in plan["datasets"]] == [db, root]
    assert plan["commands"] == [f"zfs rollback -r {db}@{first['name']}",
                                f"zfs rollback -r {root}@{first['name']}"]
    assert plan["jail"] == "db" and plan["jail_running"]
    assert zfs_snapshots(root)[-1] == f"{root}@{second['name']}"  # dry run: nothing changed
    assert (mnt / "newest.txt").exists()

    refused = cli(host, "rollback", target, env=RIG_PATH)  # no terminal and no --yes
    assert refused.returncode == 3 and "--yes" in refused.stderr
    assert (mnt / "newest.txt").exists()

    done = run_json(host, "rollback", target, "--yes")
    assert done["destroyed"] == [f"{db}@{second['name']}", f"{root}@{second['name']}"]
    assert zfs_snapshots(db) == [target]
    assert zfs_snapshots(root) == [f"{root}@{first['name']}"]
    assert tree_digest(top) == at_first  # every file as it was, jail.conf and root/ alike
    assert tree_digest(mnt) == files_at_first
    assert done["jail_stopped"] and (jails / "db").exists()  # started again
    assert "newest.txt" in (host.home / "at-stop").read_text().split()  # stopped before
    assert (host.home / "at-start").read_text().split() == ["data.bin", "etc", "usr", "var"]
    # The other datasets were not touched.
    assert f"{host.dataset('git')}@{first['name']}" in zfs_snapshots(host.dataset("git"))


def test_rollback_refuses_a_snapshot_the_jails_root_does_not_have(host):
    db, root = host.dataset("db"), host.root_dataset("db")
    sh(ZFS, "snapshot", f"{db}@parent-only")  # not -r: the jail's files are not in it
    (host.jail_files("db") / "kept.txt").write_text("x")
    res = cli(host, "rollback", f"{db}@parent-only", "--yes", env=RIG_PATH)
    assert res.returncode == 1 and f"{root} (below {db}) has no snapshot @parent-only" \
        in res.stderr
    assert (host.jail_files("db") / "kept.txt").exists()
    assert zfs_snapshots(db) == [f"{db}@parent-only"]  # nothing rolled back


def test_rollback_refuses_unknown_snapshots_and_foreign_datasets(host):
    db = host.dataset("db")
    res = cli(host, "rollback", f"{db}@nope", "--yes", env=RIG_PATH)
    assert res.returncode == 1 and f"snapshot not found: {db}@nope" in res.stderr
    parent = f"{host.pool_name}/clawdie"
    sh(ZFS, "snapshot", "-r", f"{parent}@x")
    res = cli(host, "rollback", f"{parent}@x", "--yes", env=RIG_PATH)
    assert res.returncode == 1 and "not one of the configured jail datasets" in res.stderr
    assert "--force" in res.stderr
    forced = run_json(host, "rollback", f"{parent}@x", "--force", "--dry-run")
    assert forced["jail"] is None and not forced["managed"]
    res = cli(host, "rollback", "db@x;reboot", "--yes", env=RIG_PATH)
    assert res.returncode == 1 and "not a valid snapshot name" in res.stderr


def snap_count(ds: str, kind: str) -> int:
    return sum(1 for n in zfs_snapshots(ds) if n.split("@")[1].startswith("autosnap_")
               and n.endswith("_" + kind))


def test_sanoid_with_the_generated_config_creates_and_prunes_per_class(host, tmp_path):
    assert shutil.which("faketime"), "faketime is missing: run scripts/setup"
    confdir = tmp_path / "sanoid"
    confdir.mkdir()
    written = run_json(host, "sanoid-config", "--write", str(confdir))
    assert written["written"] == str(confdir / "sanoid.conf")
    env = {**os.environ, **RIG_PATH}
    sanoid = ["sanoid", "--configdir", str(confdir), "--cache-dir", str(tmp_path / "cache"),
              "--run-dir", str(tmp_path / "run")]

    res = subprocess.run([*sanoid, "--cron", "--verbose"], env=env, capture_output=True,
                         text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    jails = {j: host.dataset(j) for j in ("db", "git", "cms", "management")}
    roots = {j: host.root_dataset(j) for j in jails}
    for ds in [*jails.values(), *roots.values()]:  # recursive = zfs: the root children too
        assert [snap_count(ds, k) for k in ("hourly", "daily", "monthly")] == [1, 1, 1], ds
        assert snap_count(ds, "weekly") == snap_count(ds, "yearly") == 0
    for j in jails:  # one `zfs snapshot -r`: the same snapshots on the jail and its root
        assert [n.split("@")[1] for n in zfs_snapshots(jails[j])] == \
            [n.split("@")[1] for n in zfs_snapshots(roots[j])]

    # More autosnaps than the policy keeps (names dated long ago), and one manual snapshot.
    extra = {"db": (27, 16, 5), "git": (14, 9, 4)}
    for jail, counts in extra.items():
        for kind, n in zip(("hourly", "daily", "monthly"), counts, strict=True):
            for i in range(n):
                sh(ZFS, "snapshot", "-r",
                   f"{jails[jail]}@autosnap_2025-01-01_00:{i:02d}:00_{kind}")
    sh(ZFS, "snapshot", f"{jails['db']}@clawdie_manual")

    # Today every snapshot is young: sanoid keeps them all (a count alone never prunes).
    res = subprocess.run([*sanoid, "--prune-snapshots", "--verbose"], env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert snap_count(jails["db"], "hourly") == 28

    # 400 days on, they are all past their age: each class keeps exactly its count.
    res = subprocess.run(["faketime", "-f", "+400d", *sanoid, "--prune-snapshots",
                          "--verbose"], env=env, capture_output=True, text=True, timeout=300,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    kept = {j: [snap_count(ds, k) for k in ("hourly", "daily", "monthly")]
            for j, ds in jails.items()}
    assert kept == {"db": [24, 14, 3], "git": [12, 7, 2], "cms": [1, 1, 1],
                    "management": [1, 1, 1]}
    kept_roots = {j: [snap_count(ds, k) for k in ("hourly", "daily", "monthly")]
                  for j, ds in roots.items()}
    assert kept_roots == kept  # pruned with their jail
    assert f"{jails['db']}@clawdie_manual" in zfs_snapshots(jails["db"])
