"""Settings: the tool's invoke config (section `clawdie`) merged with the installation's .env.

Precedence for each value: a non-empty tool setting (config file, INVOKE_CLAWDIE_* env,
a host's inventory overrides) > the installation's .env > the runbook's default.
"""
from __future__ import annotations

import ipaddress
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Mapping

from dotenv import dotenv_values

from .. import runner
from ..errors import ConfigError, EnvFileError
from .masking import secret_values

# Host-specific commands are templates; `{name}` fields are filled with shell-quoted values.
# FreeBSD defaults (bastille jails, the runbook's npm scripts); the test rig sets Linux ones.
DEFAULT_COMMANDS: dict[str, str] = {
    "agent_status": "test -f {pidfile} && kill -0 \"$(cat {pidfile})\"",
    "agent_stop": "cd {root} && npm stop",
    "agent_start": "cd {root} && npm start",
    "jail_status": "jls -j {jail_name} jid",
    "jail_start": "bastille start {jail_name}",
    "jail_stop": "bastille stop {jail_name}",
    "skills_regen": "cd {root} && npm run setup -- --step skills-memory",
    "pg_install_hint": "pkg install postgresql17-client",
    # Taking the backup's snapshot; point this at hostd to go through it instead.
    "snapshot": "{zfs} snapshot -r {parent}@{name}",
    # Schedule handoff during a migration: the scheduled sanoid/syncoid/backup lines of the
    # user's crontab are commented out with a marker, and later restored. The new host
    # pauses while it receives (a newer snapshot there blocks the next incremental); the
    # old host pauses after the cutover, so the two never both act as the live one.
    "schedule_pause": "crontab -l 2>/dev/null | sed -E "
                      "'s/^([^#].*(sanoid|syncoid|backup).*)$/#clawdie-paused# \\1/' | crontab -",
    "schedule_resume": "crontab -l 2>/dev/null | sed -E 's/^#clawdie-paused# //' | crontab -",
    # The drill's throwaway PostgreSQL cluster runs as this user when clawdie-ops is root.
    "as_postgres": "su -m {user} -c {cmd}",
}

DEFAULTS: dict[str, Any] = {
    "root": "",  # --root, else CLAWDIE_ROOT, else the current directory
    "home": "",  # else $HOME
    "allowlist": "~/.config/clawdie-cp/mount-allowlist.json",
    "jails": ["db", "git", "cms", "management"],
    "jail_name": "clawdie-{jail}",  # bastille's name for a jail
    "zfs_pool": "",  # else ZFS_POOL in .env, else zroot
    "zfs_prefix": "",  # else ZFS_PREFIX in .env
    "db_host": "",  # else WARDEN_DB_IP in .env, else WARDEN_SUBNET's .3
    "db_port": "",  # else DB_PORT in .env, else 5432
    "db_admin": {"user": "", "password": "", "dbname": "postgres"},  # creates missing roles
    "pg_bin": "",  # directory holding pg_dump/psql/pg_restore; empty: PATH
    "zfs": "zfs",
    "shell": "/bin/sh",  # runs every local command (POSIX: FreeBSD has no /bin/bash)
    "backup_dir": "~",
    "compression": "zstd",  # measured faster and smaller than gzip: BENCHMARKS.md
    "hostd_url": "",
    "commands": dict(DEFAULT_COMMANDS),
    "ssh_config": "",  # ssh config file for Fabric and syncoid; empty: ~/.ssh/config
    "syncoid": "syncoid",  # the syncoid program for `replicate`
    "hosts": {},  # migration inventory: name -> {ssh, root, overrides}
    # restore drill: a server for scratch databases (empty host: a throwaway cluster)
    "drill": {"host": "", "port": "", "user": "", "password": "", "dbname": "postgres",
              "pg_bin": "",  # initdb/pg_ctl/psql for the throwaway cluster; empty: found
              "os_user": "postgres"},  # runs the throwaway cluster when clawdie-ops is root
    # doctor: age thresholds (hours) and head room for the next backup
    "doctor": {"snapshot_warn_hours": 2, "snapshot_fail_hours": 26,
               "backup_warn_hours": 192, "backup_fail_hours": 360, "space_factor": 2.0},
}


@dataclass(frozen=True)
class DbSpec:
    """One PostgreSQL database of the installation (memory_db or skills_db)."""

    key: str  # "memory" or "skills"
    name: str
    user: str
    password: str = field(repr=False)
    host: str
    port: int

    @property
    def item(self) -> str:
        return f"{self.key}_db.sql"

    def conninfo(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "dbname": self.name,
                "user": self.user, "password": self.password, "connect_timeout": 10}


@dataclass(frozen=True)
class Settings:
    root: Path
    home: Path
    env: Mapping[str, str] = field(repr=False)
    agent_name: str
    allowlist: Path
    jails: tuple[str, ...]
    jail_name: str
    zfs_pool: str
    zfs_prefix: str
    zfs: str
    db_host: str
    db_port: int
    memory: DbSpec
    skills: DbSpec
    db_admin: Mapping[str, str] = field(repr=False)
    pg_bin: str
    backup_dir: Path
    compression: str
    hostd_url: str
    commands: Mapping[str, str]

    @property
    def env_file(self) -> Path:
        return self.root / ".env"

    @property
    def sqlite_path(self) -> Path:
        return self.root / "store" / "messages.db"

    @property
    def groups_dir(self) -> Path:
        return self.root / "groups"

    @property
    def jails_parent(self) -> str:
        if not self.zfs_prefix:
            raise ConfigError(
                f"ZFS_PREFIX is not set in {self.env_file} nor in the tool's config",
                "add ZFS_PREFIX=... to .env, set clawdie.zfs_prefix, or pass --no-snapshot",
            )
        return f"{self.zfs_pool}/{self.zfs_prefix}/jails"

    def dataset(self, jail: str) -> str:
        return f"{self.jails_parent}/{jail}"

    @property
    def datasets(self) -> list[str]:
        return [self.dataset(j) for j in self.jails]

    def databases(self, skip_skills: bool = False) -> list[DbSpec]:
        return [self.memory] if skip_skills else [self.memory, self.skills]

    def pg_tool(self, name: str) -> str:
        return str(Path(self.pg_bin) / name) if self.pg_bin else name

    def command(self, key: str, **values: Any) -> str:
        """Fill a host-command template; every value is shell-quoted."""
        template = self.commands.get(key, "")
        if not template:
            raise ConfigError(f"no command configured for '{key}'",
                              f"set clawdie.commands.{key} in the tool's config")
        base = {"root": self.root, "home": self.home, "zfs": self.zfs,
                "pidfile": self.root / "store" / "clawdie.pid", "hostd_url": self.hostd_url}
        if "jail" in values:
            base["jail_name"] = self.jail_name.format(jail=values["jail"])
        base.update(values)
        quoted = {k: shlex.quote(str(v)) for k, v in base.items()}
        try:
            return template.format(**quoted)
        except KeyError as exc:
            raise ConfigError(f"command template '{key}' uses unknown field {exc}",
                              f"fields available: {', '.join(sorted(quoted))}") from None


# Settings whose value is a mapping with keys of its own; `commands` takes the template
# names of DEFAULT_COMMANDS, `hosts` is checked by the inventory (inventory.py).
_NESTED = ("db_admin", "drill", "doctor", "commands")


def check_keys(raw: Mapping[str, Any], where: str = "clawdie") -> None:
    """Refuse a setting this tool does not know, naming it (a typo would be ignored)."""
    for key, value in raw.items():
        if key not in DEFAULTS:
            raise ConfigError(f"unknown setting {where}.{key}",
                              f"check the spelling; known settings: {', '.join(sorted(DEFAULTS))}")
        if key in _NESTED and hasattr(value, "keys"):
            unknown = sorted(set(value) - set(DEFAULTS[key]))
            if unknown:
                raise ConfigError(f"unknown setting {where}.{key}.{unknown[0]}",
                                  f"{where}.{key} takes: {', '.join(sorted(DEFAULTS[key]))}")


def section(config: Any) -> dict[str, Any]:
    """The `clawdie` section of an invoke config as a plain dict, defaults filled in;
    unknown settings are refused (ConfigError naming the key)."""
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS.items()}
    raw = config.get("clawdie", {}) if config is not None else {}
    check_keys(dict(raw))
    for key, value in dict(raw).items():
        if isinstance(merged.get(key), dict) and value is not None:
            merged[key] = {**merged[key], **dict(value)}
        else:
            merged[key] = value
    return merged


def read_env(path: Path) -> dict[str, str]:
    if not path.exists():
        raise EnvFileError(f".env not found: {path}",
                           "pass --root to the Clawdie checkout, or set CLAWDIE_ROOT")
    try:
        with open(path, encoding="utf-8") as fh:
            values = dotenv_values(stream=fh)
    except (OSError, UnicodeDecodeError) as exc:
        raise EnvFileError(f".env unreadable: {path}: {exc}",
                           "check its owner and mode (the tool's user must read it)") from None
    return {k: v for k, v in values.items() if v is not None}


def resolve_root(root: str | os.PathLike[str] | None, cfg: Mapping[str, Any]) -> Path:
    chosen = root or cfg.get("root") or os.environ.get("CLAWDIE_ROOT") or os.getcwd()
    return Path(chosen).expanduser().resolve()


def _db_host(cfg: Mapping[str, Any], env: Mapping[str, str], env_file: Path) -> str:
    if cfg.get("db_host"):
        return str(cfg["db_host"])
    if env.get("WARDEN_DB_IP"):
        return env["WARDEN_DB_IP"]
    subnet = env.get("WARDEN_SUBNET")
    if subnet:
        try:
            return str(ipaddress.ip_network(subnet, strict=False).network_address + 3)
        except ValueError:
            raise ConfigError(f"WARDEN_SUBNET={subnet!r} in {env_file} is not a network",
                              "write it as 10.0.0.0/24") from None
    raise ConfigError(f"no database host: neither WARDEN_DB_IP nor WARDEN_SUBNET in {env_file}",
                      "add WARDEN_DB_IP=... to .env or set clawdie.db_host")


def _db(key: str, env: Mapping[str, str], host: str, port: int) -> DbSpec:
    up = key.upper()
    return DbSpec(key=key, name=env.get(f"{up}_DB_NAME", f"{key}_db"),
                  user=env.get(f"{up}_DB_USER", f"{key}_user"),
                  password=env.get(f"{up}_DB_PASSWORD", ""), host=host, port=port)


def load(config: Any, root: str | os.PathLike[str] | None = None,
         require_env: bool = True, env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from an invoke config and the installation found at `root`.

    `env` stands in for the installation's .env (restore: the one an archive brings)."""
    cfg = section(config)
    root_path = resolve_root(root, cfg)
    env_file = root_path / ".env"
    if env is not None:
        env = dict(env)
    else:
        env = read_env(env_file) if require_env or env_file.exists() else {}
    home = Path(cfg.get("home") or os.environ.get("HOME") or Path.home()).expanduser()
    port_raw = str(cfg.get("db_port") or env.get("DB_PORT") or 5432)
    if not port_raw.isdigit():
        raise ConfigError(f"DB_PORT={port_raw!r} is not a port number", f"fix it in {env_file}")
    port = int(port_raw)
    host = _db_host(cfg, env, env_file) if env else str(cfg.get("db_host") or "")
    allowlist = str(cfg["allowlist"])
    if allowlist.startswith("~/"):
        allowlist = str(home / allowlist[2:])
    backup_dir = str(cfg["backup_dir"])
    backup_dir = str(home / backup_dir[2:]) if backup_dir.startswith("~/") else (
        str(home) if backup_dir == "~" else backup_dir)
    compression = str(cfg["compression"])
    if compression not in ("gzip", "zstd"):
        raise ConfigError(f"compression {compression!r} is not known", "use gzip or zstd")
    runner.keep_secret(*secret_values(env, extra=(
        str(cfg["db_admin"].get("password") or ""), str(cfg["drill"].get("password") or ""))))
    return Settings(
        root=root_path, home=home, env=env,
        agent_name=env.get("AGENT_NAME", "clawdie"),
        allowlist=Path(allowlist), jails=tuple(cfg["jails"]), jail_name=str(cfg["jail_name"]),
        zfs_pool=str(cfg.get("zfs_pool") or env.get("ZFS_POOL") or "zroot"),
        zfs_prefix=str(cfg.get("zfs_prefix") or env.get("ZFS_PREFIX") or ""),
        zfs=str(cfg["zfs"]), db_host=host, db_port=port,
        memory=_db("memory", env, host, port), skills=_db("skills", env, host, port),
        db_admin=dict(cfg["db_admin"]), pg_bin=str(cfg.get("pg_bin") or ""),
        backup_dir=Path(backup_dir), compression=compression,
        hostd_url=str(cfg.get("hostd_url") or ""), commands=dict(cfg["commands"]),
    )
