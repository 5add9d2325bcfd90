"""Simulated Clawdie hosts: own loopback address, sshd, PostgreSQL, ZFS pool, HOME and root."""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from . import content
from .postgres import DEFAULT_MAJOR, Cluster, bindir_for
from .services import (ZFS as ZFS_BIN, Pool, Sshd, ensure_zfs_fuse, sh, stale_pools,
                       without_bash, zfs_retry)

RIG_BIN = Path(__file__).parent / "bin"
RIG_JAIL = RIG_BIN / "rig-jail"
FAKE_AGENT = Path(__file__).parent / "fake_agent.py"
JAILS = ("db", "git", "cms", "management")
PG_JAIL = "db"


def pg_data_dir(major: int) -> str:
    """Where FreeBSD's postgresqlNN-server keeps its cluster, inside the db jail."""
    return f"/var/db/postgres/data{major}"
PREFIX = "clawdie"
SSH_PORT = 2222


def linux_commands(python: str = sys.executable) -> dict[str, str]:
    """The rig's Linux stand-ins for the FreeBSD command templates."""
    agent = f"{python} {FAKE_AGENT}"
    return {
        "agent_start": f"cd {{root}} && (setsid {agent} {{root}} >/dev/null 2>&1 &) && "
                       "for i in $(seq 50); do test -f {pidfile} && exit 0; sleep 0.1; done; "
                       "exit 1",
        # Waits until the agent has exited. The detached agent's parent is this sandbox's
        # init, which reaps orphans only every second or two (a FreeBSD init at once), so
        # an exited agent stays a zombie meanwhile: `kill -0` alone waited ~2 s per stop.
        "agent_stop": "pid=$(cat {pidfile}) && kill $pid && "
                      "while case $(ps -o stat= -p $pid) in ''|Z*) false;; esac; "
                      "do sleep 0.05; done",
        "jail_status": "test -f {home}/.rig-jails/{jail_name}",
        # bin/rig-jail: a started jail records its path as the kernel does (jls -j NAME
        # path); the db jail starts and stops the PostgreSQL whose data directory it holds
        "jail_start": f"{RIG_JAIL} start {{jail_name}} {{home}} {{root_dataset}} {{zfs}}",
        "jail_stop": f"{RIG_JAIL} stop {{jail_name}} {{home}} {{root_dataset}} {{zfs}}",
        "jail_path": "cat {home}/.rig-jails/{jail_name}",
        "skills_regen": "echo regenerate skills > {root}/skills-regenerated",
        "pg_install_hint": "apt-get install postgresql-client-{major}",
        # A per-host crontab file stands in for each user's crontab (all rig hosts share
        # one root); tests/integration/test_schedule.py uses the real crontab.
        "crontab_list": "cat {home}/crontab 2>/dev/null || true",
        "crontab_install": "cat > {home}/crontab",
        "sha256": "sha256sum {path} | cut -d ' ' -f 1",
        "archive_manifest": "tar --wildcards -xOf {path} '*/manifest.json'",
    }


@dataclass
class SimHost:
    name: str
    address: str
    base: Path
    pool: Pool
    cluster: Cluster
    sshd: Sshd | None = None
    alias: str = ""
    rows: int = 200
    env: dict[str, str] = field(default_factory=dict)
    no_bash: bool = False  # its sshd sessions run where bash fails (FreeBSD has none)
    login_shell: str = "/bin/sh"  # root's, for those sessions (bin/csh-like: as csh would)
    # PostgreSQL's data directory inside the db jail (clawdie.pg_data_dir); empty: the
    # cluster is outside any jail dataset (a host made without them)
    pg_data_dir: str = ""

    @property
    def root(self) -> Path:
        return self.base / "clawdie"

    @property
    def home(self) -> Path:
        return self.base / "home"

    @property
    def state_dir(self) -> Path:
        """The tool's private state folder on this host (clawdie.state_dir)."""
        return self.base / "state"

    @property
    def pool_name(self) -> str:
        return self.pool.name

    def dataset(self, jail: str) -> str:
        """bastille's jail dataset (jail.conf, fstab); the jail's files are in its `root`."""
        return f"{self.pool.name}/{PREFIX}/jails/{jail}"

    @property
    def vector(self) -> bool:
        """memory_db keeps pgvector embeddings (the PostgreSQL 18 hosts, as Clawdie runs)."""
        return self.cluster.major >= 18
    def root_dataset(self, jail: str) -> str:
        return f"{self.dataset(jail)}/root"

    def jail_files(self, jail: str) -> Path:
        """Where the jail's own files are: the mountpoint of its `root` dataset."""
        return self.pool.mount_of(self.root_dataset(jail))

    def clawdie_config(self) -> dict:
        """The tool's config section for this host (what an operator writes in ~/.invoke.yaml).

        pg_bin: the client tools of the host's own server, as a FreeBSD host has the
        postgresqlNN-client of its db jail's version (Debian's PATH has only 15's).
        signing: the test kit's key stands for another backup host of this operator's:
        archives a test builds by hand are signed with it (tests/archive_kit.py).
        schedule: Debian's paths for the cron jobs; root, as every rig host runs as root."""
        from tests.archive_kit import KIT_PUBLIC
        cfg = {"root": str(self.root), "home": str(self.home),
               "commands": linux_commands(), "backup_dir": str(self.home / "backups"),
               "state_dir": str(self.state_dir),
               "signing": {"trusted_keys": [KIT_PUBLIC]},
               "schedule": {"tool": str(Path(sys.executable).parent / "clawdie-ops"),
                            "sanoid": shutil.which("sanoid") or "/usr/sbin/sanoid",
                            "user": "root"}}
        if self.cluster.bindir != bindir_for(15):
            cfg["pg_bin"] = str(self.cluster.bindir)
        cfg["pg_data_dir"] = self.pg_data_dir
        return cfg

    def write_jail_pg(self) -> None:
        """What bin/rig-jail needs to run this host's PostgreSQL in its db jail (the
        server binaries, the options, the data directory inside the jail)."""
        c = self.cluster
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / ".rig-pg").write_text(
            f"PG_JAIL={PG_JAIL}\nBINDIR='{c.bindir}'\nDATA='{self.pg_data_dir.lstrip('/')}'\n"
            f"LOG='{c.log}'\nOPTS='{c.options()}'\n")

    def mark_jail_running(self, jail: str) -> None:
        """The jail runs (its PostgreSQL was started by the rig): as bin/rig-jail start."""
        marks = self.home / ".rig-jails"
        marks.mkdir(parents=True, exist_ok=True)
        (marks / jail).write_text(f"{self.jail_files(jail)}\n")

    def invoke_overrides(self) -> dict:
        return {"clawdie": self.clawdie_config()}

    def proc_env(self) -> dict[str, str]:
        """Environment for running the CLI as an operator on this host."""
        env = dict(os.environ)
        env.update(HOME=str(self.home), CLAWDIE_ROOT=str(self.root))
        return env

    def sqlite_counts(self) -> dict[str, int]:
        import sqlite3
        con = sqlite3.connect(self.root / "store" / "messages.db")
        try:
            names = [r[0] for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
            return {n: con.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}
        finally:
            con.close()

    def db_connect(self, key: str, **kw):
        return self.cluster.connect(
            dbname=f"{key}_db", user=f"{key}_user",
            password=content.MEMORY_PASSWORD if key == "memory" else content.SKILLS_PASSWORD, **kw)

    def agent_running(self) -> bool:
        pidfile = self.root / "store" / "clawdie.pid"
        if not pidfile.exists():
            return False
        try:
            os.kill(int(pidfile.read_text()), 0)
            return True
        except (ProcessLookupError, ValueError, FileNotFoundError):  # it stopped meanwhile
            return False


class Rig:
    """Builds and tears down simulated hosts under one run directory."""

    def __init__(self, base: Path, tag: str | None = None) -> None:
        self.base = base
        self.tag = tag or f"{os.getpid() % 10000:04d}{random.randint(0, 99):02d}"
        # A /16 of loopback per run, so concurrent runs never share an address.
        n = int(self.tag)
        self.net = f"127.{(n // 250) % 250 + 1}.{n % 250}"
        self.hosts: dict[str, SimHost] = {}
        self.ssh_dir = base / "ssh"
        self._ready = False
        self._count = 0
        # Each host's pool image (sparse): the bench's larger installations keep PostgreSQL
        # in the db jail's dataset, with snapshots holding the blocks a restore rewrites.
        self.pool_size = "1G"

    # -- shared pieces --------------------------------------------------------------
    def setup(self) -> None:
        if self._ready:
            return
        missing = [t for t in ("zfs-fuse", "sanoid", "syncoid", "sqlite3", "pg_dump", "ssh")
                   if not shutil.which(t) and not Path("/usr/sbin", t).exists()]
        if missing:
            raise RuntimeError(f"rig needs {', '.join(missing)}: run `bash scripts/setup` first")
        ensure_zfs_fuse()
        for stale in stale_pools(f"crig{self.tag}"):
            Pool(stale, Path("/nonexistent"), Path("/nonexistent")).destroy()
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)
        self.ssh_dir.mkdir(exist_ok=True)
        key = self.ssh_dir / "id_ed25519"
        if not key.exists():
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
        self._ready = True

    @property
    def client_key(self) -> Path:
        return self.ssh_dir / "id_ed25519"

    @property
    def ssh_config(self) -> Path:
        return self.ssh_dir / "config"

    @property
    def known_hosts(self) -> Path:
        return self.ssh_dir / "known_hosts"

    # -- hosts ----------------------------------------------------------------------
    def host(self, name: str, *, populated: bool = True, datasets: bool = True,
             rows: int = 200, ssh: bool = False, with_roles: bool | None = None,
             tool_on_path: bool = True, pg: int = DEFAULT_MAJOR, no_bash: bool = False,
             login_shell: str = "/bin/sh") -> SimHost:
        """A host with its pool and PostgreSQL; `populated` fills root, databases, datasets.

        `pg`: the server's major version, 18 (with pgvector in memory_db) or 15.

        `tool_on_path=False`: its sshd's PATH lacks the test venv, so a fresh box without
        clawdie-ops (migrate installs it there)."""
        if name in self.hosts:
            return self.hosts[name]
        self.setup()
        self._count += 1
        idx = self._count + 1
        if idx > 250:
            raise RuntimeError("rig: out of loopback addresses for this run")
        base = self.base / name
        base.mkdir(parents=True, exist_ok=True)
        base.chmod(0o755)
        address = f"{self.net}.{idx}"
        pool = Pool(f"crig{self.tag}{name}", base / "pool.img", base / "mnt")
        # As on a Clawdie host, PostgreSQL runs in the db jail, its data directory in the
        # jail's root dataset; a host made without jail datasets keeps it outside them.
        cluster = Cluster(base / "pg" / "data", address, bindir=bindir_for(pg),
                          run_dir=base / "pg")
        h = SimHost(name, address, base, pool, cluster, rows=rows, no_bash=no_bash,
                    login_shell=login_shell, pg_data_dir=pg_data_dir(pg) if datasets else "")
        self.hosts[name] = h
        pool.create(self.pool_size)
        if datasets:
            sh(ZFS_BIN, "create", "-p", f"{pool.name}/{PREFIX}/jails")
            for jail in JAILS:
                content.bastille_create(pool.name, f"{PREFIX}/jails", jail, address,
                                        populated=populated)
            cluster.datadir = h.jail_files(PG_JAIL) / h.pg_data_dir.lstrip("/")
        cluster.init()
        cluster.start()
        h.home.mkdir(parents=True, exist_ok=True)
        if datasets:
            h.write_jail_pg()
            h.mark_jail_running(PG_JAIL)
        h.env = {
            "AGENT_NAME": f"clawdie-{name}", "ZFS_POOL": pool.name, "ZFS_PREFIX": PREFIX,
            "WARDEN_DB_IP": address, "DB_PORT": "5432",
            "MEMORY_DB_NAME": "memory_db", "MEMORY_DB_USER": "memory_user",
            "MEMORY_DB_PASSWORD": content.MEMORY_PASSWORD,
            "SKILLS_DB_NAME": "skills_db", "SKILLS_DB_USER": "skills_user",
            "SKILLS_DB_PASSWORD": content.SKILLS_PASSWORD,
            "ANTHROPIC_API_KEY": f"sk-ant-rig-{name}-secret",
            "TELEGRAM_BOT_TOKEN": "123:abc def",
        }
        if with_roles if with_roles is not None else populated:
            with cluster.connect() as admin:
                content.create_databases(admin)
            if h.vector:
                with cluster.connect(dbname="memory_db") as admin:
                    content.create_vector_extension(admin)
        if populated:
            content.write_installation(h.root, h.home, h.env, rows=rows)
            for key in ("memory", "skills"):
                with h.db_connect(key, autocommit=False) as conn:
                    content.fill_database(conn, key, rows=rows, vector=h.vector)
        (h.home / ".invoke.json").write_text(json.dumps(h.invoke_overrides(), indent=2))
        if ssh:
            self.start_sshd(h, tool_on_path=tool_on_path)
        return h

    def start_sshd(self, h: SimHost, tool_on_path: bool = True) -> None:
        venv = f"{Path(sys.executable).parent}:" if tool_on_path else ""
        path = f"{RIG_BIN}:{venv}/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        h.sshd = Sshd(h.address, SSH_PORT, h.base / "sshd",
                      {"PATH": path, "HOME": str(h.home), "CLAWDIE_ROOT": str(h.root)},
                      (self.client_key.with_suffix(".pub")).read_text().strip(),
                      wrap=without_bash([], self.base, h.login_shell) if h.no_bash else [])
        h.sshd.start()
        h.alias = f"rig-{h.name}"
        with open(self.known_hosts, "a") as fh:
            fh.write(f"[{h.address}]:{SSH_PORT} ssh-ed25519 {h.sshd.host_pubkey}\n")
        with open(self.ssh_config, "a") as fh:
            fh.write(f"""
Host {h.alias}
  HostName {h.address}
  Port {SSH_PORT}
  User root
  IdentityFile {self.client_key}
  IdentitiesOnly yes
  UserKnownHostsFile {self.known_hosts}
  StrictHostKeyChecking yes
  BatchMode yes
""")

    def new_host(self, prefix: str = "h", **kw) -> SimHost:
        """A fresh host with a name not used before in this run."""
        return self.host(f"{prefix}{self._count + 1}", **kw)

    def drop(self, h: SimHost) -> None:
        if h.agent_running():
            subprocess.run(["kill", (h.root / "store" / "clawdie.pid").read_text()],
                           check=False)
        if h.sshd:
            h.sshd.stop()
        h.cluster.stop()
        # sessions outlive their sshd: a killed test's remote step (a slow jail start)
        # would otherwise write into the host's folders after they are removed
        subprocess.run(["pkill", "-f", f"{h.base}/"], check=False)
        # `zpool destroy -f` unmounts and destroys every dataset at once (0.2 to 0.6 s);
        # destroying the datasets first, waiting out zfs-fuse's asynchronous unmounts, took
        # 3.6 s of every host's drop. That way remains for a pool that refuses.
        if not h.pool.destroy(tries=3):
            try:
                zfs_retry("destroy", "-r", f"{h.pool.name}/{PREFIX}")
            except RuntimeError as exc:
                # zfs-fuse under load may keep a dataset "busy" for good (nothing holds it;
                # the pool stays until zfs-fuse restarts): a leak of the rig, not a test's
                warnings.warn(f"rig: {exc}; pool {h.pool.name} left behind", stacklevel=1)
            h.pool.destroy()
        self.hosts.pop(h.name, None)
        shutil.rmtree(h.base, ignore_errors=True)

    def teardown(self) -> None:
        for h in list(self.hosts.values()):
            self.drop(h)
        shutil.rmtree(self.base, ignore_errors=True)

