"""One scenario per command: its hosts (built once, reset between faults), its command line,
the steps a fault can wait for, and what "survived" means for it.

Hosts are reused across the faults of a command: `reset` brings them back to the same
starting state (files copied back, databases recreated from templates, datasets destroyed
or snapshots removed), which costs a second where building a host costs several.

Adding a command: subclass Scenario, fill `faults` with the kinds that apply and the steps
they may wait for, and add it to SCENARIOS (and to WEIGHTS and COST in campaign.py). A
scenario whose command the installed clawdie-ops lacks is left out of the plan: `prune`
(branch operate) joins by itself once it is merged.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from clawdie_ops.config import settings as config
from clawdie_ops.hosts import agent
from tests.conftest import CLI, context_for
from tests.helpers import descendants, jail_digest, parents, set_config, tree_digest, wait_until
from tests.migrate_helpers import (NEW_CRONTAB, OLD_CRONTAB, dataset_state, db_state,
                                   files_state, journal_path, snapshots, sqlite_state, two_hosts,
                                   write_inventory)
from tests.rig.content import VECTOR_DIM
from tests.rig.hosts import PREFIX, RIG_BIN, Rig, SimHost
from tests.rig.postgres import DEBIAN_BIN, SUPERPASS
from tests.rig.proxy import CuttingProxy, through_proxy
from tests.rig.services import ZFS, Pool, sh, zfs_retry

from . import state as st

RIG_PATH = {"PATH": f"{RIG_BIN}:{os.environ['PATH']}"}


@dataclass
class Run:
    """How the faulted command ended."""
    code: int | None  # exit code; negative: killed by that signal; None: hung
    out: str = ""
    err: str = ""
    seconds: float = 0.0

    @property
    def reported(self) -> bool:
        """It ended by itself (success or a reported failure), not by a signal."""
        return self.code is not None and self.code >= 0


@dataclass
class Verdict:
    state: str  # "before", "archive", "changed", ...
    violations: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)


def mount_tmpfs(path: Path, size: str) -> None:
    """A small file system of its own at `path` (contents kept): the disk that fills up."""
    keep = path.with_name(path.name + ".before-tmpfs")
    if path.exists():
        path.rename(keep)
    path.mkdir(parents=True)
    sh("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    if keep.exists():
        sh("cp", "-a", f"{keep}/.", str(path))
        shutil.rmtree(keep)


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def empty(path: Path, keep: tuple[str, ...] = ()) -> None:
    for p in path.iterdir() if path.exists() else []:
        if p.name in keep:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def start_agent(h: SimHost) -> None:
    if not h.agent_running():
        c = context_for(h)
        agent.start(c, config.load(c.config, root=h.root))


def stop_agent(h: SimHost) -> None:
    """The rig's agent ends on SIGTERM and removes its pid file (tests/rig/fake_agent.py)."""
    pidfile = h.root / "store" / "clawdie.pid"
    if h.agent_running():
        try:
            os.kill(int(pidfile.read_text()), 15)
        except (ProcessLookupError, ValueError, OSError):
            return
        wait_until(lambda: not h.agent_running(), 20, "the rig's agent to stop")


def cli(h: SimHost, *args: str, env: dict | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    e = h.proc_env()
    e.update(env or {})
    return subprocess.run([CLI, *args], env=e, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, cwd=h.root if h.root.exists() else None)


def recreate_db(h: SimHost, name: str, owner: str, template: str | None) -> None:
    with h.cluster.connect() as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        tpl = f' TEMPLATE "{template}"' if template else ""
        admin.execute(f'CREATE DATABASE "{name}" OWNER "{owner}"{tpl}')


def drop_aside(h: SimHost) -> None:
    """Databases a restore set aside (renamed, kept as its rollback copy)."""
    with h.cluster.connect() as admin:
        for (name,) in admin.execute("SELECT datname FROM pg_database WHERE datname LIKE "
                                     f"'%{st.ASIDE}%'").fetchall():
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


def make_durable(h: SimHost) -> None:
    """Restart `h`'s PostgreSQL with fsync and synchronous commit on: a fault that crashes
    it must not lose what it had committed (the rig's speed settings would)."""
    h.cluster.stop()
    h.cluster.durable = True
    h.cluster.start()
    if h.pg_data_dir:  # its db jail's start (bin/rig-jail) keeps the same settings
        h.write_jail_pg()


def ensure_postgres(h: SimHost) -> Callable[[], None]:
    def up() -> None:
        # A postmaster.pid may be a snapshot's (a restore's ZFS rollback brings back the one
        # of the running server it was taken under): running means a postmaster works there.
        pidfile = h.cluster.datadir / "postmaster.pid"
        try:
            pid = pidfile.read_text().split("\n", 1)[0].strip()
            running = os.readlink(f"/proc/{pid}/cwd") == str(h.cluster.datadir)
        except OSError:
            running = False
        if not running:
            pidfile.unlink(missing_ok=True)
            h.cluster.start()
        h.cluster.wait()
    return up


def destroy_tree(name: str) -> None:
    """`zfs destroy -r`, patient: zfs-fuse unmounts asynchronously and says busy meanwhile;
    past 10 s, unmount the datasets (deepest first) and try once more."""
    try:
        zfs_retry("destroy", "-r", name, timeout=10)
        return
    except RuntimeError:
        pass
    names = sh(ZFS, "list", "-H", "-o", "name", "-r", name, check=False).stdout.split()
    for ds in sorted(names, key=len, reverse=True):
        sh(ZFS, "unmount", "-f", ds, check=False)
    zfs_retry("destroy", "-r", name, timeout=15)


def empty_pool(h: SimHost, abandoned: list[Pool]) -> None:
    """Remove every dataset the runs left on `h`'s pool. zfs-fuse sometimes keeps a received
    dataset busy for good (nothing open, no process: a daemon-side hold that OpenZFS does
    not have); then `h` gets a fresh pool and the stuck one is dropped at the end."""
    try:
        destroy_tree(f"{h.pool_name}/{PREFIX}")
        return
    except RuntimeError:
        pass
    abandoned.append(h.pool)
    n = len(abandoned)
    h.pool = Pool(f"{abandoned[0].name}p{n}", h.base / f"pool{n}.img", h.base / f"mnt{n}")
    h.pool.create()


def end_sessions(h: SimHost) -> None:
    """What a killed run left running on `h` through its sshd (a zfs receive, a restore)."""
    proc = h.sshd.proc if h.sshd else None
    if proc and proc.poll() is None:
        for pid in descendants(proc.pid):
            _kill(pid)


def destroy_snapshots(dataset_root: str, prefix: str) -> None:
    """Every snapshot named PREFIX... at or below `dataset_root`, one by one: `zfs destroy
    -r ROOT@NAME` says "does not exist" (and destroys nothing) on zfs-fuse when only a
    child holds NAME, as with restore's jails/db@clawdie-pre-restore-STAMP."""
    names = sh(ZFS, "list", "-H", "-o", "name", "-t", "snapshot", "-r", dataset_root,
               check=False).stdout.split()
    for full in sorted(names, key=len, reverse=True):
        if "@" in full and full.split("@", 1)[1].startswith(prefix):
            zfs_retry("destroy", full)


class Scenario:
    command = ""
    # fault kind -> the steps its trigger may wait for ("" means: by time)
    faults: dict[str, tuple[str, ...]] = {}
    timeout = 180.0

    def clean_run(self) -> subprocess.CompletedProcess:
        """The same command again, with no fault: the next run every invariant asks for."""
        assert self.host is not None
        return cli(self.host, *self.argv(random.Random(0)),
                   env={**RIG_PATH, "TMPDIR": str(self.tmpdir)})

    def __init__(self, rig: Rig, work: Path) -> None:
        self.rig = rig
        self.work = work / self.command
        self.work.mkdir(parents=True, exist_ok=True)
        self.tmpdir = self.work / "tmp"  # the tool's TMPDIR
        self.clock_file = self.work / "clock"
        self.host: SimHost | None = None
        self.abandoned: list[Pool] = []  # pools zfs-fuse would not let go of

    # -- set up once, reset before every fault --------------------------------------
    def setup(self) -> None:
        raise NotImplementedError

    def reset(self, rng: random.Random) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        for h in list(self.hosts()):
            if h.name in self.rig.hosts:
                end_sessions(h)
                try:
                    self.rig.drop(h)
                except RuntimeError:  # busy for now: the rig's teardown tries again
                    pass
        for pool in self.abandoned:
            pool.destroy()

    def hosts(self) -> list[SimHost]:
        return [self.host] if self.host else []

    # -- the command ----------------------------------------------------------------
    def argv(self, rng: random.Random) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        assert self.host is not None
        e = self.host.proc_env()
        e.update(RIG_PATH, TMPDIR=str(self.tmpdir))
        return e

    def cwd(self) -> Path:
        assert self.host is not None
        return self.host.root

    # -- what a fault acts on ---------------------------------------------------------
    def step_seen(self, step: str, procs: list[str]) -> bool:
        """Has the run reached `step`? `procs`: command lines of the tool's descendants and
        of the target's sshd sessions."""
        return False

    def postgres_for(self, step: str, pid: int):
        """(bindir, datadir, repair) of the PostgreSQL to stop at `step`."""
        h = self.host
        assert h is not None
        return DEBIAN_BIN, h.cluster.datadir, ensure_postgres(h)

    def full_dirs(self, step: str) -> list[Path]:
        return [self.tmpdir]

    def proxy_for(self, step: str) -> CuttingProxy:
        raise NotImplementedError

    def remote_pids(self, table: dict[int, int] | None = None) -> list[int]:
        """Processes of the target's sshd sessions (the remote side of the run)."""
        return []

    def target_sshd(self):
        raise NotImplementedError

    def target_pool(self) -> str:
        raise NotImplementedError

    # -- the invariants -------------------------------------------------------------
    def capture(self) -> dict:
        raise NotImplementedError

    def judge(self, before: dict, after: dict, run: Run) -> Verdict:
        raise NotImplementedError

    def next_run(self, before: dict, verdict: Verdict) -> tuple[bool, str, list[str]]:
        """Run the same command again, without a fault: (succeeded, detail, data lost)."""
        raise NotImplementedError

    def archive_dirs(self) -> list[Path]:
        return []

    def scan_dirs(self) -> list[Path]:
        """Where leftovers may sit (searched for secrets readable by others)."""
        return [h.base for h in self.hosts()] + [self.tmpdir]

    def scan_skip(self) -> tuple[Path, ...]:
        return tuple(p for h in self.hosts() for p in (h.base / "pg", h.base / "mnt",
                                                         h.base / "pool.img"))

    def leftovers(self) -> list[str]:
        """Work files a run left (reported, and must not stop the next run): TMPDIR's, and
        each installation's folders in clawdie.state_dir (restore's staging and copies)."""
        out = [str(p) for p in self.tmpdir.iterdir()] if self.tmpdir.exists() else []
        for h in self.hosts():
            out += [str(p) for p in state_dir_of(h).glob("installs/*/*")]
        return out

    def strays(self) -> list[int]:
        """Processes of this run that are not the tool's descendants (daemonized)."""
        return []

    def services(self) -> set[int]:
        """The hosts' database servers and their workers: a db jail's PostgreSQL that a
        rollback started (bastille start db) belongs to the jail, not to the tool."""
        datadirs = {str(h.cluster.datadir) for h in self.hosts()}
        table = parents()
        masters = set()
        for pid in table:
            args = _cmd_args(pid)
            if args and args[0].endswith("/postgres") and "-D" in args[:-1] \
                    and args[args.index("-D") + 1] in datadirs:
                masters.add(pid)
        return masters | {pid for pid, ppid in table.items() if ppid in masters}


def state_dir_of(h: SimHost) -> Path:
    """The host's clawdie.state_dir as its config says (a scenario may move it)."""
    cfg = json.loads((h.home / ".invoke.json").read_text())["clawdie"]
    return Path(cfg.get("state_dir") or h.state_dir)


def _installation_verdict(before: dict, after: dict, label: str = "installation") -> Verdict:
    """A command that must leave the installation alone: a changed datum is lost data, a
    changed mode a violation."""
    diff = st.differences(before, after, st.DATA_ONLY)
    v = Verdict("before") if not diff else \
        Verdict("changed", [f"{label} changed: {'; '.join(diff)}"],
                [f"{label} changed: {'; '.join(diff)}"])
    modes = st.mode_changes(before, after)
    if modes:
        v.violations.append(f"{label}: file modes changed: {', '.join(modes)}")
    return v


class Backup(Scenario):
    command = "backup"
    faults = {"sigkill": ("", "pg_dump", "archive-write"),
              "sigterm": ("", "pg_dump", "archive-write"),
              "pg-stop": ("", "pg_dump"),
              "disk-full": ("", "archive-write"),
              "clock-step": ("",)}

    def setup(self) -> None:
        h = self.host = self.rig.host("fbackup")
        make_durable(h)
        self.out = h.home / "backups"
        mount_tmpfs(self.out, "48m")
        mount_tmpfs(self.tmpdir, "48m")
        set_config(h, backup_dir=str(self.out))
        start_agent(h)
        # an archive from before the campaign: it must verify after every fault
        res = cli(h, "backup", "--json", env=RIG_PATH)
        assert res.returncode == 0, res.stderr[-800:]
        self.first = Path(json.loads(res.stdout)["archive"])

    def teardown(self) -> None:
        umount(self.out)
        umount(self.tmpdir)
        super().teardown()

    def reset(self, rng: random.Random) -> None:
        h = self.host
        assert h is not None
        empty(self.out, keep=(self.first.name,))
        empty(self.tmpdir)
        destroy_snapshots(f"{h.pool_name}/{PREFIX}/jails", "clawdie-backup-")
        ensure_postgres(h)()
        start_agent(h)

    def argv(self, rng: random.Random) -> list[str]:
        return ["backup", "--json"] + (["--compression", "gzip"] if rng.random() < 0.25 else [])

    def step_seen(self, step: str, procs: list[str]) -> bool:
        if step == "pg_dump":
            return any("pg_dump" in p for p in procs)
        if step == "archive-write":
            return any(p.name.endswith(".partial") for p in self.out.iterdir())
        return False

    def full_dirs(self, step: str) -> list[Path]:
        return [self.out, self.tmpdir]

    def capture(self) -> dict:
        assert self.host is not None
        return {"installation": st.installation(self.host),
                "archives": sorted(p.name for p in self.out.iterdir()
                                   if st.COMPLETE.match(p.name))}

    def judge(self, before: dict, after: dict, run: Run) -> Verdict:
        v = _installation_verdict(before["installation"], after["installation"])
        gone = set(before["archives"]) - set(after["archives"])
        if gone:
            v.lost.append(f"archives removed: {sorted(gone)}")
        if run.code == 0:
            name = Path(json.loads(run.out)["archive"]).name
            if name not in after["archives"]:
                v.lost.append(f"backup reported {name} but it is not there")
        return v

    def next_run(self, before: dict, verdict: Verdict) -> tuple[bool, str, list[str]]:
        assert self.host is not None
        res = cli(self.host, "backup", "--json", env={**RIG_PATH, "TMPDIR": str(self.tmpdir)})
        if res.returncode:
            return False, _last(res.stderr), []
        return True, Path(json.loads(res.stdout)["archive"]).name, []

    def archive_dirs(self) -> list[Path]:
        return [self.out]

    def leftovers(self) -> list[str]:
        return super().leftovers() + [str(p) for p in self.out.iterdir()
                                      if not st.COMPLETE.match(p.name)]


class Restore(Scenario):
    """An archive of state A restored over state B (A with rows, files and settings changed):
    afterwards the installation must be B (failed, rolled back) or A (succeeded)."""
    command = "restore"
    faults = {"sigkill": ("", "staging", "safety-dump", "psql"),
              "sigterm": ("", "staging", "safety-dump", "psql"),
              "pg-stop": ("", "psql"),
              "disk-full": ("", "staging"),
              "clock-step": ("",)}

    def setup(self) -> None:
        h = self.host = self.rig.host("frestore")
        make_durable(h)
        mount_tmpfs(h.root, "64m")  # the installation's disk: staging fills it
        mount_tmpfs(self.tmpdir, "64m")
        # clawdie.state_dir (staging, the pre-restore copies) on the installation's file
        # system, as the README asks: a full disk there fills both
        self.state = h.root / ".clawdie-ops-state"
        set_config(h, state_dir=str(self.state))
        (h.root / "store" / "messages.db").chmod(0o600)  # as an operator keeps it
        start_agent(h)
        res = cli(h, "backup", "--json", "--no-snapshot", "--output", str(self.work), env=RIG_PATH)
        assert res.returncode == 0, res.stderr[-800:]
        self.archive = Path(json.loads(res.stdout)["archive"])
        self.archive_state = st.installation(h)
        self._change_to_b(h)
        self.saved = self.work / "state-b"
        shutil.rmtree(self.saved, ignore_errors=True)
        self.saved.mkdir()
        stop_agent(h)
        sh("cp", "-a", str(h.root), str(self.saved / "root"))
        allow = h.home / ".config" / "clawdie-cp" / "mount-allowlist.json"
        shutil.copy2(allow, self.saved / "allowlist")
        for key in ("memory", "skills"):
            recreate_db(h, f"fault_tpl_{key}", f"{key}_user", f"{key}_db")
        start_agent(h)

    @staticmethod
    def _change_to_b(h: SimHost) -> None:
        import sqlite3
        con = sqlite3.connect(h.root / "store" / "messages.db", timeout=30)
        con.execute("INSERT INTO messages VALUES ('b1', '0@g.us', 'u', 'U', 'after the backup',"
                    " '2026-11-02T00:00:00Z', 0)")
        con.execute("DELETE FROM scheduled_tasks WHERE id = 't3'")
        con.commit()
        con.close()
        with h.db_connect("memory") as conn:
            # a pgvector column on the PostgreSQL 18 hosts, REAL[] on 15
            embedding = ("[" + ",".join(["0.5"] * VECTOR_DIM) + "]") if h.vector else "{0.5}"
            conn.execute("INSERT INTO memories (user_id, content, embedding) "
                         "VALUES (1, 'written after the backup', %s)", (embedding,))
            conn.execute("UPDATE users SET profile = '{\"tz\": \"CET\"}' WHERE id = 2")
        with h.db_connect("skills") as conn:
            conn.execute("DELETE FROM skill_chunks WHERE id % 7 = 0")
        with open(h.root / ".env", "a") as fh:
            fh.write("EXTRA_SETTING=after-the-backup\n")
        (h.root / "groups" / "main" / "CLAUDE.md").write_text("# changed after the backup\n")
        (h.root / "groups" / "new group").mkdir()
        (h.root / "groups" / "new group" / "notes.md").write_text("new\n")
        allow = h.home / ".config" / "clawdie-cp" / "mount-allowlist.json"
        allow.write_text(json.dumps({"allowedRoots": []}))

    def teardown(self) -> None:
        if self.host:
            stop_agent(self.host)
            umount(self.host.root)
        umount(self.tmpdir)
        super().teardown()

    def reset(self, rng: random.Random) -> None:
        h = self.host
        assert h is not None
        stop_agent(h)
        empty(h.root)
        empty(self.tmpdir)
        sh("cp", "-a", f"{self.saved / 'root'}/.", str(h.root))
        shutil.copy2(self.saved / "allowlist",
                     h.home / ".config" / "clawdie-cp" / "mount-allowlist.json")
        ensure_postgres(h)()
        drop_aside(h)
        for key in ("memory", "skills"):
            recreate_db(h, f"{key}_db", f"{key}_user", f"fault_tpl_{key}")
        destroy_snapshots(f"{h.pool_name}/{PREFIX}/jails", "clawdie-pre-restore-")
        # half the faults with an admin login (databases renamed aside), half without
        # (the current databases dumped as the rollback copy)
        self.admin = rng.random() < 0.5
        cfg = json.loads((h.home / ".invoke.json").read_text())
        cfg["clawdie"].pop("db_admin", None)
        if self.admin:
            cfg["clawdie"]["db_admin"] = {"user": "postgres", "password": SUPERPASS}
        (h.home / ".invoke.json").write_text(json.dumps(cfg, indent=2))
        (h.home / ".invoke.json").chmod(0o600)  # it holds the admin's password
        start_agent(h)

    def argv(self, rng: random.Random) -> list[str]:
        return ["restore", str(self.archive), "--yes", "--json"]

    def step_seen(self, step: str, procs: list[str]) -> bool:
        assert self.host is not None
        if step == "staging":  # STATE_DIR/installs/ROOT-SLUG/RUN/staging
            return any(self.state.glob("installs/*/*/staging"))
        if step == "psql":
            return any("psql" in p and "staging" in p for p in procs)
        if step == "safety-dump":
            return any("pg_dump" in p for p in procs)
        return False

    def full_dirs(self, step: str) -> list[Path]:
        assert self.host is not None
        return [self.host.root, self.tmpdir]

    def capture(self) -> dict:
        assert self.host is not None
        return {"installation": st.installation(self.host)}

    def judge(self, before: dict, after: dict, run: Run) -> Verdict:
        now, b, a = after["installation"], before["installation"], self.archive_state
        diff_b = st.differences(b, now, st.DATA_ONLY)
        diff_a = st.differences(a, now, st.DATA_ONLY)
        if not diff_b:
            v = Verdict("before")
            if run.code == 0:
                v.violations.append("restore reported success but nothing changed")
                v.lost.append(v.violations[-1])
            modes = st.mode_changes(b, now)
        elif not diff_a:
            v = Verdict("archive")
            # an interrupt after the restore completed says the archive's state stands
            if run.reported and run.code != 0 and \
                    "interrupted after the restore completed" not in run.err:
                msg = "restore reported a failure but the archive's state is in place"
                v.violations.append(msg)
                v.lost.append(msg)
            modes = st.mode_changes(a, now)
        else:
            msg = (f"installation is neither as before ({'; '.join(diff_b)}) nor the "
                   f"archive ({'; '.join(diff_a)})")
            v = Verdict("mixed", [msg])
            kept = self._reported_copies(run, diff_b, now)
            # SIGKILL cannot be caught: the next run must finish the job (checked there).
            # A failure that says what it could not undo and where the pre-restore copies
            # are (and they are there) is a violation; any other mix lost data.
            if kept:
                v.violations.append(f"rollback incomplete, reported: {kept}")
            elif run.code != -9:
                v.lost.append(msg)
            modes = []
        if modes:
            v.violations.append(f"file modes changed: {', '.join(modes)}")
        if run.reported and run.code != 0 and now["aside"]:
            v.violations.append(f"databases left aside after a rolled-back restore: "
                                f"{now['aside']}")
        return v

    @staticmethod
    def _reported_copies(run: Run, diff_b: list[str], now: dict) -> str:
        """When the error says what it COULD NOT roll back and where the pre-restore state
        is: which copies of the differing parts are really there ("" if any is missing)."""
        m = re.search(r"COULD NOT roll back: .*pre-restore state is in (\S+)", run.err, re.S)
        if not run.reported or run.code == 0 or not m:
            return ""
        before = Path(m.group(1))
        found = []
        for part in diff_b:
            name = part.split(":")[0]
            if name == "db":
                dumps = [before / f"{k}_db.sql" for k in ("memory", "skills")]
                if not all(p.exists() for p in dumps) and not now["aside"]:
                    return ""
                found.append("databases: " + (", ".join(now["aside"]) or
                                              ", ".join(p.name for p in dumps)))
            elif name in ("files", "sqlite"):
                if not before.is_dir() or not any(before.iterdir()):
                    return ""
                found.append(f"{name}: {before}")
            else:
                return ""
        return "; ".join(found)

    def next_run(self, before: dict, verdict: Verdict) -> tuple[bool, str, list[str]]:
        assert self.host is not None
        res = self.clean_run()
        now = st.installation(self.host)
        diff = st.differences(self.archive_state, now, st.DATA_ONLY)
        if res.returncode or diff:
            detail = _last(res.stderr) if res.returncode else f"state differs: {diff}"
            lost = [f"after a killed run the next restore could not finish: {detail}"] \
                if verdict.state in ("mixed", "unreadable") else []
            return False, detail, lost
        modes = st.mode_changes(self.archive_state, now)
        if modes and verdict.state != "archive":  # else the faulted run reported them
            return False, f"restored, but file modes changed: {', '.join(modes)}", []
        return True, "restored", []

    def archive_dirs(self) -> list[Path]:
        return [self.work]


class Drill(Scenario):
    """A drill of a good archive, in a sandbox in TMPDIR (a small file system)."""
    command = "drill"
    faults = {"sigkill": ("", "sandbox", "initdb", "psql"),
              "sigterm": ("", "sandbox", "initdb", "psql"),
              "pg-stop": ("psql",),
              "disk-full": ("", "sandbox"),
              "clock-step": ("",)}

    def setup(self) -> None:
        h = self.host = self.rig.host("fdrill")
        mount_tmpfs(self.tmpdir, "160m")
        # The throwaway cluster keeps the real clock under a clock step: libfaketime's
        # shared memory, created by root, cannot be opened by the postgres user.
        cmds = json.loads((h.home / ".invoke.json").read_text())["clawdie"]["commands"]
        set_config(h, commands={**cmds, "as_postgres": "env -u LD_PRELOAD -u FAKETIME_SHARED "
                                                        "su -m {user} -c {cmd}"})
        self.archives = self.work / "archives"
        self.archives.mkdir(exist_ok=True)
        res = cli(h, "backup", "--json", "--no-snapshot", "--output", str(self.archives),
                  env=RIG_PATH)
        assert res.returncode == 0, res.stderr[-800:]
        self.archive = Path(json.loads(res.stdout)["archive"])
        start_agent(h)

    def teardown(self) -> None:
        umount(self.tmpdir)
        super().teardown()

    def reset(self, rng: random.Random) -> None:
        for pid in self.strays():  # a cluster a killed drill left running
            _kill(pid)
        empty(self.tmpdir)
        assert self.host is not None
        start_agent(self.host)

    def argv(self, rng: random.Random) -> list[str]:
        return ["drill", str(self.archive), "--json"]

    def step_seen(self, step: str, procs: list[str]) -> bool:
        if step == "sandbox":
            return any(self.tmpdir.glob("clawdie-drill-*"))
        if step == "initdb":
            return any("initdb" in p for p in procs)
        if step == "psql":
            return any("psql" in p and "-f" in p for p in procs)
        return False

    def postgres_for(self, step: str, pid: int):
        for q in self.strays():
            args = _cmd_args(q)
            if "-D" in args:
                return Path(args[0]).parent, Path(args[args.index("-D") + 1]), None
        return None

    def strays(self) -> list[int]:
        """The drill's throwaway PostgreSQL (pg_ctl daemonizes it: no longer a descendant)."""
        out = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                args = _cmd_args(int(entry.name))
                if args and args[0].endswith("/postgres") and any(
                        a.startswith(str(self.tmpdir)) for a in args):
                    out.append(int(entry.name))
        return out

    def capture(self) -> dict:
        assert self.host is not None
        return {"installation": st.installation(self.host),
                "archive": tree_digest(self.archives)}

    def judge(self, before: dict, after: dict, run: Run) -> Verdict:
        v = _installation_verdict(before["installation"], after["installation"])
        if before["archive"] != after["archive"]:
            v.violations.append("the drilled archive changed")
            v.lost.append("the drilled archive changed")
        return v

    def next_run(self, before: dict, verdict: Verdict) -> tuple[bool, str, list[str]]:
        assert self.host is not None
        res = self.clean_run()
        if res.returncode:
            return False, _last(res.stderr), []
        # what the killed drill left (folders, its PostgreSQL) the next one must sweep
        running = [cmdline_of(q) for q in self.strays()]
        left = [p.name for p in self.tmpdir.glob("clawdie-drill-*")]
        if running or left:
            return False, (f"the next drill passed but left the killed one's "
                           f"{'PostgreSQL running: ' + '; '.join(running) if running else ''}"
                           f"{' folders: ' + ', '.join(left) if left else ''}"), []
        return True, "drill passed", []

    def archive_dirs(self) -> list[Path]:
        return [self.archives]


def _own_files(state: dict) -> dict:
    """Each dataset's own files: a jail dataset's digest without its `root` child's (kept
    apart), so a child whose receive was cut short is not also counted against its parent."""
    return {n: None if d is None else
            d if n.endswith("/root") else {k: v for k, v in d.items()
                                           if not k.startswith("root/")}
            for n, d in state.items()}


class Replicate(Scenario):
    """syncoid of the jail datasets to a target host, through a proxy that can cut the link."""
    command = "replicate"
    JAILS = ("db", "git")
    faults = {"sigkill": ("", "syncoid", "zfs-recv"),
              "sigterm": ("", "syncoid", "zfs-recv"),
              "ssh-cut": ("", "zfs-recv"),
              "zfs-recv-kill": ("zfs-recv",),
              "sshd-restart": ("", "zfs-recv"),
              "clock-step": ("",)}

    def setup(self) -> None:
        self.host = self.rig.host("freplsrc")
        self.target = self.rig.host("frepldst", ssh=True, populated=False, datasets=False)
        self.alias, self.proxy = through_proxy(self.rig, self.target)
        cfg = json.loads((self.host.home / ".invoke.json").read_text())
        # two of the four jails: the same paths, half the syncoid runs per case
        cfg["clawdie"].update(jails=list(self.JAILS), ssh_config=str(self.rig.ssh_config),
                              hosts={self.alias: {
            "ssh": self.alias, "root": str(self.target.root),
            "overrides": {"home": str(self.target.home)}}})
        (self.host.home / ".invoke.json").write_text(json.dumps(cfg, indent=2))
        self.tmpdir.mkdir(exist_ok=True)

    def hosts(self) -> list[SimHost]:
        return [h for h in (self.host, getattr(self, "target", None)) if h]

    def teardown(self) -> None:
        self.proxy.stop()
        super().teardown()

    def _tds(self, jail: str) -> str:
        return f"{self.target.pool_name}/{PREFIX}/jails/{jail}"

    def reset(self, rng: random.Random) -> None:
        assert self.host is not None
        if self.target.sshd.proc is None or self.target.sshd.proc.poll() is not None:
            self.target.sshd.start()
        empty(self.tmpdir)
        end_sessions(self.target)
        if rng.random() < 0.4:  # a first, full send; else an incremental one
            empty_pool(self.target, self.abandoned)
        # a change on the source, so that every run has a stream to send
        jail = rng.choice(self.JAILS)
        mnt = self.host.pool.mount_of(self.host.dataset(jail))
        (mnt / "changed.bin").write_bytes(rng.randbytes(rng.randint(100_000, 1_500_000)))

    def argv(self, rng: random.Random) -> list[str]:
        return ["replicate", "--to", self.alias, "--target-pool", self.target.pool_name,
                "--yes", "--json"]

    def step_seen(self, step: str, procs: list[str]) -> bool:
        if step == "syncoid":
            return any("syncoid" in p for p in procs)
        if step == "zfs-recv":
            return any(("zfs receive" in p or "zfs recv" in p) and self.target.pool_name in p
                       for p in procs)
        return False

    def remote_pids(self, table: dict[int, int] | None = None) -> list[int]:
        proc = self.target.sshd.proc
        return descendants(proc.pid, table) if proc and proc.poll() is None else []

    def proxy_for(self, step: str) -> CuttingProxy:
        return self.proxy

    def target_sshd(self):
        return self.target.sshd

    def target_pool(self) -> str:
        return self.target.pool_name

    def _target_digests(self) -> dict:
        have = set(sh(ZFS, "list", "-H", "-o", "name", "-r", self.target.pool_name,
                      check=False).stdout.split())
        # keyed as dataset_state is: each jail dataset and its `root` child (bastille's)
        names = [n for j in self.JAILS for n in (j, f"{j}/root")]
        return _own_files({n: jail_digest(self.target.pool.mount_of(self._tds(n)))
                           if self._tds(n) in have else None for n in names})

    def capture(self) -> dict:
        assert self.host is not None
        snaps = {j: {n for n in names if not n.startswith("syncoid_")}
                 for j, names in snapshots(self.host, self.JAILS).items()}
        return {"source": _own_files(dataset_state(self.host, self.JAILS)), "snapshots": snaps,
                "target": self._target_digests()}

    def judge(self, before: dict, after: dict, run: Run) -> Verdict:
        v = Verdict("before")
        if before["source"] != after["source"]:
            v.lost.append("the source datasets changed")
        for j, names in before["snapshots"].items():
            if not names <= after["snapshots"][j]:
                v.lost.append(f"source snapshots of {j} destroyed: "
                              f"{sorted(names - after['snapshots'][j])}")
        for j, now in after["target"].items():
            if now is not None and now not in (before["target"][j], after["source"][j]):
                v.violations.append(f"target dataset {j} holds neither its old content nor "
                                    "the source's")
        v.violations += v.lost
        if run.code == 0 and after["target"] != after["source"]:
            v.state = "changed"
            v.violations.append("replicate reported success but the target differs")
        return v

    def next_run(self, before: dict, verdict: Verdict) -> tuple[bool, str, list[str]]:
        assert self.host is not None
        res = self.clean_run()
        if res.returncode:
            return False, _last(res.stderr), []
        source = _own_files(dataset_state(self.host, self.JAILS))
        if self._target_digests() != source:
            props = sh(ZFS, "get", "-H", "-o", "name,property,value", "-r",
                       "mounted,canmount,mountpoint", f"{self.target.pool_name}/{PREFIX}",
                       check=False).stdout.split("\n")
            digests = self._target_digests()
            diff = [n for n, d in digests.items() if d != source.get(n)]
            files = {n: (sorted(set(source.get(n) or ()) ^ set(digests[n] or ())))[:5]
                     for n in diff}
            return False, (f"replicate succeeded but the target differs from the source in "
                           f"{', '.join(diff)} (files not on both sides: {files}; zfs get: "
                           f"{'; '.join(m for m in props if m and '@' not in m)})"), []
        return True, "replicated", []


class Migrate(Scenario):
    """migrate --to NEW, one jail dataset, both SSH links through proxies: the operator's
    (Fabric: commands and the archive copy) and the old host's to the new one (syncoid)."""
    command = "migrate"
    JAILS = ("db",)  # one jail dataset: the faults aim at the steps, not at the volume
    timeout = 480.0  # a clean migrate took 180 s on the 2 cores at a load average of 26
    faults = {"sigkill": ("", "syncoid", "copy", "psql"),
              "sigterm": ("", "syncoid", "copy", "psql"),
              "ssh-cut": ("copy", "zfs-recv"),
              "pg-stop": ("psql",),
              "zfs-recv-kill": ("zfs-recv",),
              "sshd-restart": ("", "copy", "zfs-recv"),
              "clock-step": ("",)}

    def setup(self) -> None:
        self.old, self.new = two_hosts(self.rig, jails=self.JAILS)
        make_durable(self.new)  # pg-stop crashes the new host's server mid-restore
        self.host = self.old
        self.alias, self.proxy = through_proxy(self.rig, self.new, port=2223,
                                               alias=f"rig-{self.new.name}-op")
        self.peer, self.peer_proxy = through_proxy(self.rig, self.new, port=2224,
                                                   alias=f"rig-{self.new.name}-peer")
        self._inventory()
        self.tmpdir.mkdir(exist_ok=True)

    def _inventory(self) -> None:
        """The new host in the old one's inventory: through the proxies, with an admin
        login there (migrate creates pgvector's extension in memory_db with it)."""
        write_inventory(self.rig, self.old, self.new, ssh=self.alias, peer_ssh=self.peer,
                        overrides={"db_host": self.new.address, "zfs_pool": self.new.pool_name,
                                   "db_admin": {"user": "postgres", "password": SUPERPASS}})
        (self.old.home / ".invoke.json").chmod(0o600)  # it holds the admin's password

    def hosts(self) -> list[SimHost]:
        return [h for h in (getattr(self, "old", None), getattr(self, "new", None)) if h]

    def teardown(self) -> None:
        self.proxy.stop()
        self.peer_proxy.stop()
        super().teardown()

    def reset(self, rng: random.Random) -> None:
        old, new = self.old, self.new
        if new.sshd.proc is None or new.sshd.proc.poll() is not None:
            new.sshd.start()
        ensure_postgres(new)()
        # the new host as a fresh box again: no agent, no data, no datasets
        end_sessions(new)
        stop_agent(new)
        pool = new.pool_name
        empty_pool(new, self.abandoned)
        if new.pool_name != pool:  # the inventory names the new host's pool
            self._inventory()
        drop_aside(new)
        for key in ("memory", "skills"):
            recreate_db(new, f"{key}_db", f"{key}_user", None)
        empty(new.root)
        empty(new.home / "backups")
        shutil.rmtree(new.home / ".config", ignore_errors=True)
        shutil.rmtree(new.home / ".rig-jails", ignore_errors=True)
        (new.home / "crontab").write_text(NEW_CRONTAB)
        # the old host as the operator found it: agent running, schedule active, no journal
        journal_path(old, new).unlink(missing_ok=True)
        (old.home / "crontab").write_text(OLD_CRONTAB)
        empty(old.home / "backups")
        empty(self.tmpdir)
        start_agent(old)

    def argv(self, rng: random.Random) -> list[str]:
        return ["migrate", "--to", self.new.name, "--yes", "--json"]

    def step_seen(self, step: str, procs: list[str]) -> bool:
        if step == "syncoid":
            return any("syncoid" in p for p in procs)
        if step == "copy":
            return any(p.name.endswith(".partial") for p in (self.new.home / "backups").iterdir())
        if step == "psql":
            return any("psql" in p and "staging" in p for p in procs)
        if step == "zfs-recv":
            return any(("zfs receive" in p or "zfs recv" in p) and self.new.pool_name in p
                       for p in procs)
        return False

    def postgres_for(self, step: str, pid: int):
        return DEBIAN_BIN, self.new.cluster.datadir, ensure_postgres(self.new)

    def full_dirs(self, step: str) -> list[Path]:
        return []

    def remote_pids(self, table: dict[int, int] | None = None) -> list[int]:
        proc = self.new.sshd.proc
        return descendants(proc.pid, table) if proc and proc.poll() is None else []

    def proxy_for(self, step: str) -> CuttingProxy:
        return self.proxy if step == "copy" else self.peer_proxy

    def target_sshd(self):
        return self.new.sshd

    def target_pool(self) -> str:
        return self.new.pool_name

    def capture(self) -> dict:
        # syncoid prunes its own older syncoid_ snapshots by design: the others must stay
        snaps = {j: {n for n in names if not n.startswith("syncoid_")}
                 for j, names in snapshots(self.old).items()}
        return {"installation": st.installation(self.old), "snapshots": snaps}

    def _moved(self) -> list[str]:
        """Where the new host differs from the old one after a migration that succeeded."""
        old, new = self.old, self.new
        skip = ("WARDEN_DB_IP", "ZFS_POOL")
        out = [k for k, fn in (("sqlite", sqlite_state), ("db", db_state)) if fn(old) != fn(new)]
        if dataset_state(old, self.JAILS) != dataset_state(new, self.JAILS):
            out.append("datasets")
        if files_state(old, skip) != files_state(new, skip):
            out.append("files")
        if not new.agent_running():
            out.append("agent not running on the new host")
        return out

    def judge(self, before: dict, after: dict, run: Run) -> Verdict:
        v = _installation_verdict(before["installation"], after["installation"],
                                  "the old host")
        for j, names in before["snapshots"].items():
            if not names <= after["snapshots"][j]:
                v.lost.append(f"old host's snapshots of {j} destroyed")
        if run.code == 0:
            diff = self._moved()
            if diff:
                v.violations.append(f"migrate reported success but the new host differs: "
                                    f"{diff}")
                v.lost.append(v.violations[-1])
        elif run.reported and not self.old.agent_running():
            v.violations.append("migrate reported a failure but the old host's agent is "
                                "not running again")
        return v

    def next_run(self, before: dict, verdict: Verdict) -> tuple[bool, str, list[str]]:
        res = cli(self.old, *self.argv(random.Random(0)),
                  env={**RIG_PATH, "TMPDIR": str(self.tmpdir)}, timeout=self.timeout)
        if res.returncode:
            return False, _last(res.stderr), []
        diff = self._moved()
        if diff:
            return False, f"migrated, but the new host differs: {diff}", \
                [f"the next migrate reported success but the new host differs: {diff}"]
        if st.differences(before["installation"], st.installation(self.old)):
            return False, "the old host's data changed", ["the old host's data changed"]
        return True, "migrated", []

    def scan_dirs(self) -> list[Path]:
        return super().scan_dirs() + [p for p in Path("/tmp").glob("clawdie-ops.*")]

    def archive_dirs(self) -> list[Path]:
        return [self.old.home / "backups", self.new.home / "backups"]


class Prune(Scenario):
    """prune --keep-last 3 over six real archives of six days (made under faketime), and a
    stale partial file a killed backup left three days ago (prune sweeps it).

    Invariants: the three newest archives are there and verify (every complete archive
    is inspected), nothing else changed in place, and the next prune succeeds and leaves
    exactly those three (no partial or lock of the faulted run stops it)."""
    command = "prune"
    KEEP = 3
    STALE = ".clawdie-backup-01.11.2026-0100.tar.zst.partial"
    faults = {"sigkill": ("", "remove"), "sigterm": ("", "remove"),
              "clock-step": ("", "remove")}

    def setup(self) -> None:
        h = self.host = self.rig.host("fprune")
        self.out = h.home / "backups"
        self.saved = self.work / "archives"
        self.saved.mkdir(exist_ok=True)
        self.tmpdir.mkdir(exist_ok=True)
        names = []
        for day in range(1, 7):  # oldest first
            e = h.proc_env()
            e.update(RIG_PATH)
            res = subprocess.run(["faketime", f"2026-11-0{day} 02:00:00", CLI, "backup",
                                  "--json", "--no-snapshot", "--output", str(self.saved)],
                                 env=e, capture_output=True, text=True, cwd=h.root)
            assert res.returncode == 0, res.stderr[-800:]
            names.append(Path(json.loads(res.stdout)["archive"]).name)
        self.all = set(names)
        self.keep = set(names[-self.KEEP:])

    def reset(self, rng: random.Random) -> None:
        empty(self.out)
        empty(self.tmpdir)
        sh("cp", "-a", f"{self.saved}/.", str(self.out))
        stale = self.out / self.STALE
        stale.write_bytes(rng.randbytes(4096))
        old = time.time() - 3 * 86400
        os.utime(stale, (old, old))

    def argv(self, rng: random.Random) -> list[str]:
        return ["prune", "--output", str(self.out), "--keep-last", str(self.KEEP), "--json"]

    def step_seen(self, step: str, procs: list[str]) -> bool:
        # the first old archive (or the stale partial) gone: prune is removing
        return step == "remove" and (
            not (self.out / self.STALE).exists()
            or len([p for p in self.out.iterdir() if st.COMPLETE.match(p.name)]) < len(self.all))

    def capture(self) -> dict:
        digests = tree_digest(self.out)  # once: it hashes every file of the folder
        return {"archives": {n: d for n, d in digests.items() if st.COMPLETE.match(n)}}

    def judge(self, before: dict, after: dict, run: Run) -> Verdict:
        v = Verdict("before" if before == after else "pruned")
        gone = sorted(self.keep - set(after["archives"]))
        if gone:
            v.lost.append(f"archives the policy keeps were removed: {gone}")
        changed = [n for n, d in after["archives"].items() if before["archives"].get(n) != d]
        if changed:
            v.lost.append(f"archives changed in place: {changed}")
        v.violations += v.lost
        if run.code == 0 and set(after["archives"]) != self.keep:
            v.violations.append(f"prune reported success but the directory holds "
                                f"{sorted(after['archives'])}")
        return v

    def next_run(self, before: dict, verdict: Verdict) -> tuple[bool, str, list[str]]:
        assert self.host is not None
        res = self.clean_run()
        left = {p.name for p in self.out.iterdir() if st.COMPLETE.match(p.name)}
        if res.returncode:
            return False, _last(res.stderr), []
        if left != self.keep:
            return False, f"after prune the directory holds {sorted(left)}", []
        partial = [p.name for p in self.out.iterdir() if p.name.endswith(".partial")]
        if partial:
            return False, f"the next prune left partial files: {partial}", []
        return True, "pruned", []

    def archive_dirs(self) -> list[Path]:
        return [self.out]


def _cmd_args(pid: int) -> list[str]:
    try:
        raw = (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def cmdline_of(pid: int) -> str:
    return " ".join(_cmd_args(pid))[:200]


def _kill(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def _last(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " / ".join(lines[-2:]) if lines else "(no output)"


SCENARIOS: dict[str, type[Scenario]] = {
    "backup": Backup, "restore": Restore, "drill": Drill, "replicate": Replicate,
    "migrate": Migrate, "prune": Prune,
}
