"""Settings: the tool's invoke config (section `clawdie`) merged with the installation's .env.

Precedence for each value: a non-empty tool setting (config file, INVOKE_CLAWDIE_* env,
a host's inventory overrides) > the installation's .env > the runbook's default.
"""
from __future__ import annotations

import ipaddress
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
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
    # `npm start` may stay in the foreground: daemon(8) detaches it (or name an rc.d
    # service: `service clawdie start`); the start must return (agent_start_timeout).
    "agent_start": "cd {root} && daemon -f npm start",
    "jail_status": "jls -j {jail_name} jid",
    "jail_start": "bastille start {jail_name}",
    "jail_stop": "bastille stop {jail_name}",
    # The running jail's root directory: it must be the mountpoint of its `root` dataset.
    "jail_path": "jls -j {jail_name} path",
    "skills_regen": "cd {root} && npm run setup -- --step skills-memory",
    # {major}: the PostgreSQL server's major version (18 when none is reached)
    "pg_install_hint": "pkg install postgresql{major}-client",
    # Taking the backup's snapshot; point this at hostd to go through it instead.
    "snapshot": "{zfs} snapshot -r {parent}@{name}",
    # A user's crontab, read and replaced: `schedule` edits only its own marked lines, and
    # migrate's schedule handoff comments them out (and back in) with these. Run as root to
    # reach another user's crontab.
    "crontab_list": "crontab -u {user} -l",
    "crontab_install": "crontab -u {user} -",
    # An offsite host: the sha256 of a file that arrived there, and an archive's manifest
    # read in place (tar reads the whole compressed stream, so damage fails it).
    "sha256": "sha256 -q {path}",
    "archive_manifest": "tar -xOf {path} '*/manifest.json'",
    # The drill's throwaway PostgreSQL cluster runs as this user when clawdie-ops is root.
    "as_postgres": "su -m {user} -c {cmd}",
}

DEFAULTS: dict[str, Any] = {
    "root": "",  # --root, else CLAWDIE_ROOT, else the current directory
    "home": "",  # else $HOME
    "allowlist": "~/.config/clawdie-cp/mount-allowlist.json",
    "jails": ["db", "git", "cms", "management"],
    # bastille's name for a jail, and so its dataset: POOL/PREFIX/jails/NAME, files in NAME/root
    "jail_name": "{jail}",
    "zfs_pool": "",  # else ZFS_POOL in .env, else zroot
    "zfs_prefix": "",  # else ZFS_PREFIX in .env
    "db_host": "",  # else WARDEN_DB_IP in .env, else WARDEN_SUBNET's .3
    "db_port": "",  # else DB_PORT in .env, else 5432
    "db_admin": {"user": "", "password": "", "dbname": "postgres"},  # creates missing roles
    "pg_bin": "",  # directory holding pg_dump/psql/pg_restore; empty: PATH
    # the jail PostgreSQL runs in, and its data directory inside that jail (FreeBSD's
    # postgresql18-server default); empty: PostgreSQL's files are in no jail's dataset
    "pg_jail": "db",
    "pg_data_dir": "/var/db/postgres/data18",
    # maintenance_work_mem of restore's and the drill's replay sessions (PGOPTIONS): pgvector
    # builds an HNSW index far faster when its graph fits (BENCHMARKS.md); it takes only
    # what the index needs. Empty: the server's own setting.
    "restore_maintenance_work_mem": "1GB",
    # parallel workers per index build in those sessions (PGOPTIONS): the planner gives a
    # table whose vectors live in TOAST none, its heap being small; empty: the server's way
    "restore_index_workers": "2",
    "zfs": "zfs",
    "shell": "/bin/sh",  # runs every local command (POSIX: FreeBSD has no /bin/bash)
    "backup_dir": "~",
    # private state (restore staging, locks): outside the agent's checkout, 0700
    "state_dir": "/var/tmp/clawdie-ops",
    "compression": "zstd",  # measured faster and smaller than gzip: BENCHMARKS.md
    "hostd_url": "",
    "commands": dict(DEFAULT_COMMANDS),
    # seconds for agent_start to return and the agent to run (its status command says so)
    "agent_start_timeout": 120,
    "ssh_config": "",  # ssh config file for Fabric and syncoid; empty: ~/.ssh/config
    "syncoid": "syncoid",  # the syncoid program for `replicate`
    # true: the ssh user holds `zfs allow` rights on both ends instead of being root, and
    # syncoid runs zfs without sudo (--no-privilege-elevation; FreeBSD's base has no sudo)
    "zfs_delegation": False,
    "hosts": {},  # migration inventory: name -> {ssh, root, overrides}
    # restore drill: a server for scratch databases (empty host: a throwaway cluster)
    "drill": {"host": "", "port": "", "user": "", "password": "", "dbname": "postgres",
              "pg_bin": "",  # initdb/pg_ctl/psql for the throwaway cluster; empty: found
              "os_user": "postgres"},  # runs the throwaway cluster when clawdie-ops is root
    # doctor: age thresholds (hours) and head room for the next backup
    # Archive signatures (Ed25519): the key backup signs with (created on the first backup,
    # 0600), and the public keys restore, drill, inspect and migrate accept besides its own.
    "signing": {"key": "~/.config/clawdie-ops/signing.key", "trusted_keys": [],
                "trusted_file": "~/.config/clawdie-ops/trusted_keys"},
    # Encryption at rest with age, optional: backup encrypts to every recipient (age1...
    # or ssh-ed25519 public keys); restore, drill and inspect decrypt with the identity file.
    "encryption": {"recipients": [], "identity": "", "age": "age"},
    "doctor": {"snapshot_warn_hours": 2, "snapshot_fail_hours": 26,
               "backup_warn_hours": 192, "backup_fail_hours": 360, "space_factor": 2.0},
    # prune: how many to keep per rule; all empty means the runbook's "keep the last 4"
    "retention": {"last": None, "daily": None, "weekly": None, "monthly": None,
                  "stale_partial_hours": 24},
    # healthchecks.io-style pings and a node_exporter textfile (monitoring.py); ping_url
    # (a URL, or one per job) and textfile have no default here: invoke cannot merge a
    # mapping over a string default
    "monitoring": {"ping_timeout_s": 5, "ping_retries": 3},
    # cron jobs that `schedule install` writes (actions/schedule.py has the defaults)
    "schedule": {},
    # fleet: named lists of inventory hosts (`fleet TASK --group NAME`)
    "groups": {},
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
    require_auth: str = ""  # libpq 16+: refuse a server that asks for anything else

    @property
    def item(self) -> str:
        return f"{self.key}_db.sql"

    def conninfo(self) -> dict[str, Any]:
        info = {"host": self.host, "port": self.port, "dbname": self.name,
                "user": self.user, "password": self.password, "connect_timeout": 10}
        if self.require_auth:
            info["require_auth"] = self.require_auth
        return info


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
    agent_start_timeout: float = 120
    signing: Mapping[str, Any] = field(default_factory=dict)
    encryption: Mapping[str, Any] = field(default_factory=dict)
    state_dir: Path = Path("/var/tmp/clawdie-ops")
    pg_jail: str = "db"
    pg_data_dir: str = "/var/db/postgres/data18"
    restore_maintenance_work_mem: str = "1GB"
    restore_index_workers: int | None = 2

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

    def name_of(self, jail: str) -> str:
        """bastille's name for a jail; its dataset has the same name (one setting, both)."""
        try:
            name = self.jail_name.format(jail=jail)
        except (KeyError, IndexError, ValueError):
            raise ConfigError(f"clawdie.jail_name {self.jail_name!r} is not a template of "
                              "{jail}", "write it as {jail} (bastille's default) or "
                              "clawdie-{jail}") from None
        if not name or "/" in name or not name[0].isalnum():
            raise ConfigError(f"clawdie.jail_name gives {name!r} for jail {jail}: not a jail "
                              "name", "write it as {jail} or prefix-{jail}")
        return name

    def dataset(self, jail: str) -> str:
        """bastille's dataset of a jail: jail.conf and fstab here, its files in `root`."""
        return f"{self.jails_parent}/{self.name_of(jail)}"

    def root_dataset(self, jail: str) -> str:
        return f"{self.dataset(jail)}/root"

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
            base["jail_name"] = self.name_of(values["jail"])
            if self.zfs_prefix:
                base["jail_dataset"] = self.dataset(values["jail"])
                base["root_dataset"] = self.root_dataset(values["jail"])
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


def parse_env(stream: IO[str]) -> dict[str, str]:
    """A .env's values as written: no `${VAR}` expansion (python-dotenv's default expands it
    from this process's environment, so an archived .env could carry a secret of ours to the
    server it names); the agent reads its .env without expansion too."""
    values = dotenv_values(stream=stream, interpolate=False)
    return {k: v for k, v in values.items() if v is not None}


def read_env(path: Path) -> dict[str, str]:
    if not path.exists():
        raise EnvFileError(f".env not found: {path}",
                           "pass --root to the Clawdie checkout, or set CLAWDIE_ROOT")
    try:
        with open(path, encoding="utf-8") as fh:
            return parse_env(fh)
    except (OSError, UnicodeDecodeError) as exc:
        raise EnvFileError(f".env unreadable: {path}: {exc}",
                           "check its owner and mode (the tool's user must read it)") from None


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
        agent_start_timeout=_seconds(cfg, "agent_start_timeout"),
        signing=dict(cfg["signing"]), encryption=dict(cfg["encryption"]),
        state_dir=Path(_home_path(str(cfg.get("state_dir") or DEFAULTS["state_dir"]), home)),
        pg_jail=str(cfg.get("pg_jail") or DEFAULTS["pg_jail"]),
        pg_data_dir=_jail_path(cfg, "pg_data_dir"),
        restore_maintenance_work_mem=_memory_size(cfg, "restore_maintenance_work_mem"),
        restore_index_workers=_workers(cfg, "restore_index_workers"),
    )


_MEMORY = re.compile(r"(\d+)\s*(kB|MB|GB|TB)?")


def _memory_size(cfg: Mapping[str, Any], key: str) -> str:
    """A PostgreSQL memory size (`1GB`, `512MB`, a number of kB) or empty; written without
    spaces, so it is one word of PGOPTIONS."""
    value = str(cfg.get(key) if cfg.get(key) is not None else "").strip()
    m = _MEMORY.fullmatch(value)
    if value and not m:
        raise ConfigError(f"clawdie.{key} {value!r} is not a PostgreSQL memory size",
                          f"write it as PostgreSQL does, e.g. {DEFAULTS[key]} or 512MB (units "
                          "kB, MB, GB, TB), or empty for the server's own setting")
    return f"{m.group(1)}{m.group(2) or ''}" if m else ""


def _workers(cfg: Mapping[str, Any], key: str) -> int | None:
    """A number of parallel workers, 0 to 64, or None (empty) for the server's own way."""
    value = str(cfg.get(key) if cfg.get(key) is not None else "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) > 64:
        raise ConfigError(f"clawdie.{key} {value!r} is not a number of workers",
                          f"write a whole number from 0 to 64 (e.g. {DEFAULTS[key]}; 0: each "
                          "index built by one process), or empty for the server's own way")
    return int(value)


def _jail_path(cfg: Mapping[str, Any], key: str) -> str:
    """An absolute path inside a jail (empty allowed), never climbing out of it."""
    value = str(cfg.get(key) or "")
    if value and (not value.startswith("/") or ".." in Path(value).parts):
        raise ConfigError(f"clawdie.{key} {value!r} is not an absolute path inside the jail",
                          f"write it as the jail sees it, e.g. {DEFAULTS[key]}, or empty")
    return value


def _home_path(value: str, home: Path) -> str:
    return str(home / value[2:]) if value.startswith("~/") else value


def _seconds(cfg: Mapping[str, Any], key: str) -> float:
    try:
        value = float(cfg.get(key) or DEFAULTS[key])
    except (TypeError, ValueError):
        value = -1
    if value <= 0:
        raise ConfigError(f"clawdie.{key} {cfg.get(key)!r} is not a number of seconds",
                          f"set clawdie.{key} to e.g. {DEFAULTS[key]}")
    return value
