"""The migration inventory: hosts by name, with ssh alias, Clawdie root and setting overrides.

It lives in the tool's config, section `clawdie.hosts`:

    clawdie:
      ssh_config: ~/.ssh/config
      hosts:
        oldbox: {ssh: local}                     # this machine
        newbox:
          ssh: newbox                            # ssh alias, or user@host[:port]
          root: /home/clawdie/clawdie-ai         # its Clawdie checkout
          peer_ssh: newbox.lan                   # how the other host reaches it (syncoid)
          tool: clawdie-ops                      # clawdie-ops on that host
          install: {python: python3.11}          # how migrate installs it if missing
          overrides: {zfs_pool: tank, db_host: 10.0.0.3}

A host's overrides reach its own clawdie-ops as configuration (JSON on stdin, or a 0600
temporary file passed with `-f`), never as command-line arguments: they may hold
db_admin's password.
"""
from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Mapping

from .settings import DEFAULTS
from ..errors import ConfigError

LOCAL = "local"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:\[\]-]*$")
ENTRY_KEYS = {"ssh", "root", "peer_ssh", "tool", "install", "overrides"}
# How migrate installs clawdie-ops on a host that lacks it (hosts/install.py).
INSTALL_KEYS = {"python": str, "dir": str, "pip_args": str, "system_site_packages": bool}
# Settings that a host may not take from the inventory: they describe the operator's machine.
NOT_PER_HOST = {"hosts"}


@dataclass(frozen=True)
class Host:
    name: str
    ssh: str  # "local" for this machine
    root: str = ""
    peer_ssh: str = ""
    tool: str = "clawdie-ops"
    overrides: Mapping[str, Any] = field(default_factory=dict, repr=False)
    in_inventory: bool = True
    install: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def local(self) -> bool:
        return self.ssh == LOCAL

    @property
    def label(self) -> str:
        return f"{self.name} (this machine)" if self.local else f"{self.name} ({self.ssh})"

    @property
    def reach_from_peer(self) -> str:
        """The ssh destination the other host uses for this one (syncoid's target)."""
        return self.peer_ssh or self.ssh

    def tool_argv(self) -> list[str]:
        # This machine runs the very clawdie-ops the operator runs: same version, same venv.
        if self.local and self.tool == "clawdie-ops":
            return [sys.executable, "-m", "clawdie_ops"]
        return shlex.split(self.tool)

    def settings_overrides(self) -> dict[str, Any]:
        """The clawdie settings this host's runs get on top of its own config."""
        out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in self.overrides.items()}
        if self.root:
            out["root"] = self.root
        return out


def _check_name(what: str, value: str, where: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ConfigError(f"{where}: {what} {value!r} is not a valid host name or ssh alias",
                          "use letters, digits and . _ - @ : only (no spaces, no leading -)")
    return value


def _install(entry: Mapping[str, Any], where: str) -> dict[str, Any]:
    raw = entry.get("install") or {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}.install must be a mapping",
                          f"known keys: {', '.join(sorted(INSTALL_KEYS))}")
    for key, value in raw.items():
        if key not in INSTALL_KEYS:
            raise ConfigError(f"{where}.install has an unknown key: {key}",
                              f"known keys: {', '.join(sorted(INSTALL_KEYS))}")
        if not isinstance(value, INSTALL_KEYS[key]):
            raise ConfigError(f"{where}.install.{key} must be a "
                              f"{'true/false' if INSTALL_KEYS[key] is bool else 'string'}, "
                              f"not {value!r}", "see the README's 'Migration to new hardware'")
    return dict(raw)


def hosts(cfg: Mapping[str, Any]) -> dict[str, Host]:
    """Every host of `clawdie.hosts`, validated; errors name the key."""
    raw = cfg.get("hosts") or {}
    if not isinstance(raw, Mapping):
        raise ConfigError("clawdie.hosts must be a mapping of host name to its settings",
                          "see the README's 'Migration to new hardware' section")
    out = {}
    for name, entry in raw.items():
        where = f"clawdie.hosts.{name}"
        _check_name("name", str(name), "clawdie.hosts")
        if entry is None:
            entry = {}
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where} must be a mapping (ssh, root, overrides, ...)",
                              f"write it as {name}: {{ssh: {name}}}")
        unknown = set(entry) - ENTRY_KEYS
        if unknown:
            raise ConfigError(f"{where} has unknown key(s): {', '.join(sorted(unknown))}",
                              f"known keys: {', '.join(sorted(ENTRY_KEYS))}; settings go "
                              f"under {where}.overrides")
        overrides = dict(entry.get("overrides") or {})
        bad = [k for k in overrides if k not in DEFAULTS or k in NOT_PER_HOST]
        if bad:
            raise ConfigError(f"{where}.overrides has unknown setting(s): {', '.join(bad)}",
                              "overrides take the tool's setting names: "
                              + ", ".join(sorted(k for k in DEFAULTS if k not in NOT_PER_HOST)))
        ssh = str(entry.get("ssh") or name)
        out[str(name)] = Host(
            name=str(name), ssh=ssh if ssh == LOCAL else _check_name("ssh", ssh, where),
            root=str(entry.get("root") or ""),
            peer_ssh=_check_name("peer_ssh", str(entry["peer_ssh"]), where)
            if entry.get("peer_ssh") else "",
            tool=str(entry.get("tool") or "clawdie-ops"), overrides=overrides,
            install=_install(entry, where))
    return out


def resolve(cfg: Mapping[str, Any], name: str | None) -> Host:
    """The host called `name`: an inventory entry, else an ssh alias with no overrides.

    No name means this machine: the inventory's `ssh: local` entry when there is one."""
    known = hosts(cfg)
    if not name or name == LOCAL:
        local = [h for h in known.values() if h.local]
        return local[0] if local else Host(name=LOCAL, ssh=LOCAL, in_inventory=False)
    if name in known:
        return known[name]
    return Host(name=name, ssh=_check_name("host", name, "--to/--from"), in_inventory=False)


def apply(section: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A clawdie settings section with a host's overrides on top (mappings merged by key)."""
    merged = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in section.items()}
    for key, value in overrides.items():
        if isinstance(merged.get(key), dict) and isinstance(value, Mapping):
            merged[key] = {**merged[key], **dict(value)}
        else:
            merged[key] = value
    return merged
