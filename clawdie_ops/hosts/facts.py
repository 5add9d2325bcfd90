"""What is true on this host for a migration, read-only: versions, space, ZFS, PostgreSQL, data.

Runs on each host (`clawdie-ops migrate-step check`); the operator compares the two reports
(actions/migrate/checks.py). On the target, the database settings are evaluated with the source's
.env values (they arrive on stdin), because that .env is what the restore brings: so the
guard sees which PostgreSQL the new host would really use after the cutover.
"""
from __future__ import annotations

import os
import socket
import sqlite3
from pathlib import Path
from typing import Any
from collections.abc import Mapping


from invoke import Context

from .. import __version__, runner
from . import agent
from ..actions import doctor
from ..zfs import commands as zfs
from ..config.settings import Settings, load
from ..errors import ClawdieError
from ..sources.postgres import commands as pg, server
from .transfer import free_bytes

# The .env keys a target needs to know where the restored installation will point.
MIGRATION_ENV_KEYS = ("AGENT_NAME", "ZFS_POOL", "ZFS_PREFIX", "WARDEN_DB_IP", "WARDEN_SUBNET",
                      "DB_PORT", "MEMORY_DB_NAME", "MEMORY_DB_USER", "MEMORY_DB_PASSWORD",
                      "SKILLS_DB_NAME", "SKILLS_DB_USER", "SKILLS_DB_PASSWORD")


def _sqlite_facts(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"present": False}
    out: dict[str, Any] = {"present": True, "bytes": path.stat().st_size}
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            tables = [r[0] for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
            out["non_empty_tables"] = sum(
                1 for t in tables
                if con.execute(f'SELECT EXISTS (SELECT 1 FROM "{t}")').fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error as exc:
        out["error"] = str(exc)
    return out


def _tree_bytes(top: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(top):
        for name in names:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
    return total


def _zfs_facts(c: Context, s: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {"pool": s.zfs_pool, "datasets": {}}
    try:
        out["pool_exists"] = zfs.exists(c, s, zfs.check_dataset(s.zfs_pool))
        if out["pool_exists"]:
            res = runner.run(c, zfs.cmd(s, "get", "-Hp", "-o", "value", "available",
                                        s.zfs_pool))
            value = res.stdout.strip()
            out["available"] = int(value) if value.isdigit() else None
        for ds in s.datasets:
            info: dict[str, Any] = {"exists": out["pool_exists"] and zfs.exists(c, s, ds)}
            if info["exists"]:
                # `used`: the jail's children (its `root`) and snapshots, all of which a
                # recursive send carries; `referenced` counts the parent's own files only
                info["used"] = zfs.used(c, s, [ds]).get(ds, 0)
                info["snapshots"] = [snap.name for snap in zfs.snapshots(c, s, ds)]
                info["children"] = zfs.descendants(c, s, ds)[1:]
                info["resume_token"] = any(zfs.resume_token(c, s, d)
                                           for d in [ds, *info["children"]])
            out["datasets"][ds] = info
    except ClawdieError as exc:
        out["error"] = exc.message
    return out


def _pg_clients(c: Context, s: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tool in ("pg_dump", "psql"):
        try:
            major, version = pg.client_version(c, s, tool)
            out[tool] = {"major": major, "version": version}
        except ClawdieError as exc:
            out[tool] = {"error": exc.message}
    return out


def gather(c: Context, cfg: Mapping[str, Any], role: str, env: Mapping[str, str] | None = None,
           with_db_env: bool = False) -> dict[str, Any]:
    """This host's facts; `env` (on a target) stands in for the .env the restore brings."""
    config = {"clawdie": dict(cfg)}
    current = load(config, require_env=False)  # what is installed here now
    effective = load(config, env=env) if env is not None else current
    facts: dict[str, Any] = {
        "role": role, "tool_version": __version__, "hostname": socket.gethostname(),
        "root": str(current.root), "root_exists": current.root.is_dir(),
        "env_present": current.env_file.is_file(),
        "backup_dir": str(current.backup_dir), "home": str(current.home),
        "backup_dir_exists": current.backup_dir.is_dir(),
        "settings": {"zfs_pool": effective.zfs_pool, "zfs_prefix": effective.zfs_prefix,
                     "db_host": effective.db_host, "db_port": effective.db_port,
                     "agent_name": effective.agent_name, "jails": list(effective.jails),
                     "jail_name": effective.jail_name, "zfs": effective.zfs,
                     "commands": dict(effective.commands)},
        "space": {"backup_dir": free_bytes(current.backup_dir), "root": free_bytes(current.root)},
        "pg_client": _pg_clients(c, current),
        "zfs": _zfs_facts(c, effective),
        "sqlite": _sqlite_facts(current.sqlite_path),
        "groups_bytes": _tree_bytes(current.groups_dir) if current.groups_dir.is_dir() else 0,
    }
    try:
        facts["jail_paths"] = doctor.check_jail_paths(c, effective).as_dict()
    except ClawdieError as exc:
        facts["jail_paths"] = {"name": "jail paths", "status": "warn", "detail": exc.message,
                               "fix": exc.hint}
    from ..actions.migrate import pgmove
    facts["pg_files"] = pgmove.data_dir_facts(c, effective)
    facts["signing_public"] = _signing_public(current)
    try:
        facts["agent_running"] = agent.running(c, current)
    except ClawdieError as exc:
        facts["agent_running"] = None
        facts["agent_error"] = exc.message
    if effective.db_host:
        facts["databases"] = {db.key: server.probe_database(db) for db in effective.databases()}
        facts["admin"] = server.probe_admin(effective)
    else:
        facts["databases"] = {}
        facts["admin"] = {"configured": False, "login": False}
    if role == "source" and with_db_env:
        # Only over the SSH channel to the operator, who hands it to the target's check on
        # stdin: never printed, never journaled (masked there).
        facts["db_env"] = {k: current.env[k] for k in MIGRATION_ENV_KEYS if k in current.env}
    return facts


def _signing_public(s: Settings) -> str:
    """The public line of the key this host signs its backups with ("" when it has none
    yet): the new host of a migration trusts it, with or without a final archive."""
    from ..archive import signing
    path = signing.key_path(dict(s.signing), s.home)
    if not path.is_file():
        return ""
    try:
        return signing.public_of(signing.load_private(path)).line
    except ClawdieError:
        return ""
