"""Two-host migration setups on the rig, and the state comparisons the migrate tests make."""
from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

from clawdie_ops.hosts import agent
from clawdie_ops.config import settings as config
from tests.conftest import REPO, cli, context_for
from tests.helpers import pg_rows, sqlite_rows, tree_digest
from tests.rig import content
from tests.rig.hosts import JAILS, Rig, SimHost
from tests.rig.postgres import DEFAULT_MAJOR

OLD_CRONTAB = ("0 * * * * sanoid --cron\n"
               "0 2 * * 0 cd /srv/clawdie && clawdie-ops backup --output /mnt/backup\n")
NEW_CRONTAB = "*/15 * * * * sanoid --cron\n"


WHEELHOUSE = REPO / ".cache" / "wheelhouse"


def two_hosts(rig: Rig, *, with_roles: bool = True, jails: tuple[str, ...] | None = None,
              new_has_tool: bool = True, old_pg: int = DEFAULT_MAJOR,
              prepared: bool = False, new_jails: bool = False) -> tuple[SimHost, SimHost]:
    """The old host as an operator finds it (populated, agent running, cron active) and a
    new host with Clawdie cloned but empty: no data, no jail datasets.

    `jails` narrows clawdie.jails on both hosts (fewer syncoid runs, for the fault tests
    whose point is elsewhere). `new_has_tool=False`: clawdie-ops is not on the new host.
    `old_pg`: the old host's PostgreSQL major (the new one runs 18). `prepared`: the new
    host's install made the roles with its own passwords, empty databases and pgvector.
    `new_jails`: the new host's bastille jails exist (runbook step 1), its own empty
    PostgreSQL running in its db jail (the pre-sync sets them aside)."""
    old = rig.new_host(ssh=True, pg=old_pg)
    new = rig.new_host(ssh=True, populated=False, datasets=new_jails,
                       with_roles=with_roles and not prepared, tool_on_path=new_has_tool)
    if prepared:
        with new.cluster.connect() as admin:
            for key in ("memory", "skills"):
                admin.execute(f"CREATE ROLE {key}_user LOGIN PASSWORD 'its own {key} pw'")
                admin.execute(f"CREATE DATABASE {key}_db OWNER {key}_user")
        with new.cluster.connect(dbname="memory_db") as admin:
            content.create_vector_extension(admin)
    new.root.mkdir(parents=True, exist_ok=True)  # runbook step 1: the checkout exists
    for h, tab in ((old, OLD_CRONTAB), (new, NEW_CRONTAB)):
        (h.home / "backups").mkdir(exist_ok=True)
        (h.home / "crontab").write_text(tab)
        if jails:
            path = h.home / ".invoke.json"
            cfg = json.loads(path.read_text())
            cfg["clawdie"]["jails"] = list(jails)
            path.write_text(json.dumps(cfg, indent=2))
    c = context_for(old)
    agent.start(c, config.load(c.config, root=old.root))
    assert old.agent_running()
    return old, new


def write_inventory(rig: Rig, old: SimHost, new: SimHost, **entry) -> dict:
    """The operator (on the old host) lists the new host in ~/.invoke.json's clawdie.hosts."""
    path = old.home / ".invoke.json"
    cfg = json.loads(path.read_text())
    e = {"ssh": new.alias, "overrides": {"db_host": new.address, "zfs_pool": new.pool_name}}
    e.update(entry)
    cfg["clawdie"]["ssh_config"] = str(rig.ssh_config)
    cfg["clawdie"]["hosts"] = {new.name: e}
    path.write_text(json.dumps(cfg, indent=2))
    return e


def install_entry() -> dict:
    """clawdie.hosts.NAME.install for a rig host without clawdie-ops: the interpreter under
    the test venv (same version, so the wheels fit) and the dependencies' wheels offline."""
    reqs = sorted(r for r in importlib.metadata.requires("clawdie-ops") or []
                  if "extra ==" not in r)
    marker = WHEELHOUSE / ".requirements"
    if not marker.exists() or marker.read_text() != "\n".join(reqs):
        WHEELHOUSE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
                        "--disable-pip-version-check", "-d", str(WHEELHOUSE), *reqs],
                       check=True)
        marker.write_text("\n".join(reqs))
    python = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    # not the system's site-packages (FreeBSD's default): the rig's wheels are the whole set
    return {"python": str(python), "pip_args": f"--no-index --find-links {WHEELHOUSE}",
            "system_site_packages": False}


def migrate(old: SimHost, new: SimHost, *args: str, timeout: float = 300
            ) -> tuple[subprocess.CompletedProcess[str], dict | None]:
    res = cli(old, "migrate", "--to", new.name, "--yes", "--json", *args, timeout=timeout)
    try:
        report = json.loads(res.stdout) if res.stdout.strip() else None
    except ValueError:
        report = None
    return res, report


def journal_path(old: SimHost, new: SimHost) -> Path:
    return old.home / ".clawdie-ops" / "migrations" / f"local--to--{new.name}.json"


def sqlite_state(h: SimHost) -> dict:
    rows = sqlite_rows(h.root / "store" / "messages.db")
    # the running agent ticks this one row; everything else must match
    rows["router_state"] = [r for r in rows["router_state"] if r[0] != "agent_tick"]
    return rows


def db_state(h: SimHost) -> dict:
    out = {}
    for key in ("memory", "skills"):
        with h.db_connect(key) as conn:
            out[key] = pg_rows(conn)
    return out


def files_state(h: SimHost, skip_env_keys: tuple[str, ...] = ()) -> dict:
    env = [line for line in (h.root / ".env").read_text().splitlines()
           if line.split("=", 1)[0] not in skip_env_keys]
    allow = h.home / ".config" / "clawdie-cp" / "mount-allowlist.json"
    return {"env": env, "groups": tree_digest(h.root / "groups"),
            "allowlist": allow.read_bytes() if allow.exists() else None}


def dataset_state(h: SimHost, jails: tuple[str, ...] = JAILS) -> dict:
    """Each jail dataset's files (jail.conf, fstab) and its `root` child's, by content;
    PostgreSQL's folder in the db jail aside (a running server rewrites its files: the
    databases are compared by their rows, db_state)."""
    out = {}
    for j in jails:
        out[j] = {k: v for k, v in tree_digest(h.pool.mount_of(h.dataset(j))).items()
                  if not k.startswith("root/var/db/postgres/")}
        out[f"{j}/root"] = {k: v for k, v in tree_digest(h.jail_files(j)).items()
                            if not k.startswith("var/db/postgres/")}
    return out


def snapshots(h: SimHost, jails: tuple[str, ...] = JAILS) -> dict[str, set[str]]:
    out = {}
    for j in jails:
        res = subprocess.run(["/usr/sbin/zfs", "list", "-H", "-o", "name", "-t", "snapshot",
                              "-r", h.dataset(j)], capture_output=True, text=True)
        out[j] = {n.split("@", 1)[1] for n in res.stdout.split() if "@" in n}
    return out


def whole_state(h: SimHost) -> dict:
    return {"sqlite": sqlite_state(h), "db": db_state(h), "files": files_state(h),
            "datasets": dataset_state(h)}


def assert_old_intact(old: SimHost, before: dict, snaps_before: dict[str, set[str]]) -> None:
    """The old host after a failed migration: agent running, nothing changed or deleted."""
    assert old.agent_running(), "the old host's agent must run again"
    after = whole_state(old)
    for part in before:
        assert after[part] == before[part], f"the old host's {part} changed"
    snaps = snapshots(old)
    for j, names in snaps_before.items():
        assert names <= snaps[j], f"snapshots of {j} were deleted on the old host"
    tab = (old.home / "crontab").read_text()
    assert "#clawdie-paused#" not in tab, "the old host's schedule must stay active"
