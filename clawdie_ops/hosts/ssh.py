"""SSH hosts as the operator's ssh config resolves them (`ssh -G`), and Fabric connections to them.

One resolution feeds both syncoid (plain `ssh` options) and Fabric (paramiko), so a `Host`
alias in a non-default ssh config file (`clawdie.ssh_config`) means the same host, user,
port, key and known-hosts file for each of them.
"""
from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
from fabric import Config, Connection
from invoke import Context

from .. import runner
from ..errors import HostError, InvalidName

# An alias or a host name, optionally user@; never a leading '-' that ssh would read as a flag.
_HOST = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@:-]*$")

# ssh_config keys carried over when the config sets them to something other than ssh's
# default, with their -o spelling. Forwardings and the like are left out on purpose: a
# replication stream needs none of them.
CARRIED: dict[str, str] = {
    "identitiesonly": "IdentitiesOnly",
    "batchmode": "BatchMode",
    "stricthostkeychecking": "StrictHostKeyChecking",
    "userknownhostsfile": "UserKnownHostsFile",
    "globalknownhostsfile": "GlobalKnownHostsFile",
    "hostkeyalias": "HostKeyAlias",
    "proxyjump": "ProxyJump",
    "proxycommand": "ProxyCommand",
    "connecttimeout": "ConnectTimeout",
    "serveraliveinterval": "ServerAliveInterval",
    "serveralivecountmax": "ServerAliveCountMax",
    "identityagent": "IdentityAgent",
    "addressfamily": "AddressFamily",
    "bindaddress": "BindAddress",
    "ciphers": "Ciphers",
}


def check_host(name: str) -> str:
    if not name or not _HOST.match(name) or len(name) > 255:
        raise InvalidName(f"not a valid host or ssh alias: {name!r}",
                          "use the Host alias from your ssh config, or a host name "
                          "(letters, digits, - _ . @ :)")
    return name


@dataclass(frozen=True)
class SshHost:
    """Where `ssh NAME` would really connect, and the options that make it so."""

    name: str  # what the operator typed: an alias or a host name
    hostname: str
    user: str
    port: int
    identity_files: tuple[str, ...] = ()  # set by the config; empty means ssh's defaults
    options: tuple[tuple[str, str], ...] = ()  # (-o Key, value) beyond ssh's defaults
    config_file: str = ""
    known_hosts: tuple[str, ...] = field(default=(), compare=False)
    strict: str = "ask"

    def option(self, key: str) -> str | None:
        return next((v for k, v in self.options if k.lower() == key.lower()), None)


def resolve_cmd(host: str, config_file: str = "") -> list[str]:
    args = ["ssh", "-G"]
    if config_file:
        args += ["-F", config_file]
    return [*args, check_host(host)]


def parse(text: str) -> dict[str, list[str]]:
    """`ssh -G` output: one `key value` per line; some keys (identityfile) repeat."""
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            values.setdefault(key.lower(), []).append(value.strip())
    return values


def from_resolved(name: str, resolved: dict[str, list[str]], defaults: dict[str, list[str]],
                  config_file: str = "") -> SshHost:
    """Keep what the config decided: host, user, port, keys, and options that differ from
    ssh's own defaults for the same host name."""
    def one(d: dict[str, list[str]], key: str) -> str:
        return " ".join(d.get(key, []))

    identities = tuple(resolved.get("identityfile", []))
    if identities == tuple(defaults.get("identityfile", [])):
        identities = ()
    options = tuple((spelled, one(resolved, key)) for key, spelled in CARRIED.items()
                    if key in resolved and one(resolved, key) != one(defaults, key))
    known = tuple(f for f in one(resolved, "userknownhostsfile").split() if f)
    port = one(resolved, "port") or "22"
    return SshHost(name=name, hostname=one(resolved, "hostname") or name,
                   user=one(resolved, "user"), port=int(port) if port.isdigit() else 22,
                   identity_files=identities, options=options, config_file=config_file,
                   known_hosts=known, strict=one(resolved, "stricthostkeychecking") or "ask")


def resolve(c: Context, host: str, config_file: str = "") -> SshHost:
    """Ask ssh itself how it would reach `host` (aliases, Match blocks, includes and all)."""
    if config_file and not os.path.isfile(os.path.expanduser(config_file)):
        raise HostError(f"ssh config file not found: {config_file}",
                        "fix clawdie.ssh_config (empty means ~/.ssh/config)")
    res = runner.run(c, resolve_cmd(host, config_file))
    if res.exited != 0:
        raise HostError(f"ssh cannot resolve host {host}: {runner.tail(res.stderr)}",
                        f"check the Host entry in {config_file or '~/.ssh/config'}")
    resolved = parse(res.stdout)
    hostname = " ".join(resolved.get("hostname", [])) or host
    # ssh's defaults for the same name, so only what the config changed is carried over.
    base = runner.run(c, ["ssh", "-G", "-F", "/dev/null", check_host(hostname)])
    return from_resolved(host, resolved, parse(base.stdout) if base.exited == 0 else {},
                         config_file)


class AcceptNewPolicy(paramiko.MissingHostKeyPolicy):
    """OpenSSH's accept-new: trust a host seen for the first time and record its key."""

    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts
        self.accepted: list[str] = []

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.known_hosts, "a", encoding="ascii") as fh:
            fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        self.accepted.append(f"{hostname} {key.get_name()} {key.fingerprint}")


def connect(h: SshHost, timeout: int | None = None, accept_new: bool = False) -> Connection:
    """A Fabric Connection to `h` with exactly the resolved settings.

    The one host-key policy: the known-hosts files of the ssh config are loaded and an
    unknown key is refused (paramiko's RejectPolicy; Fabric's own default would silently
    accept it), whatever StrictHostKeyChecking says. Only `accept_new` (the operator's
    --accept-new-host-key) trusts a first-seen key, recorded like OpenSSH's accept-new. A key
    that differs from the recorded one is always refused."""
    kwargs: dict = {}
    if h.identity_files:
        kwargs["key_filename"] = [os.path.expanduser(f) for f in h.identity_files
                                  if os.path.exists(os.path.expanduser(f))]
    if (h.option("IdentitiesOnly") or "").lower() in ("yes", "true"):
        kwargs["look_for_keys"] = False
        kwargs["allow_agent"] = False
    gateway = h.option("ProxyCommand")
    jump = h.option("ProxyJump")
    if jump and jump != "none" and not gateway:
        gateway = " ".join(["ssh", *(["-F", shlex.quote(h.config_file)] if h.config_file else []),
                            "-W", "%h:%p", shlex.quote(jump)])
    ct = timeout or (int(h.option("ConnectTimeout") or 0) or None)
    # An explicit empty SSHConfig: everything comes from `ssh -G`, nothing is parsed twice.
    conn = Connection(host=h.hostname, user=h.user or None, port=h.port,
                      config=Config(ssh_config=paramiko.SSHConfig()), connect_kwargs=kwargs,
                      gateway=gateway if gateway and gateway != "none" else None,
                      connect_timeout=ct)
    for path in h.known_hosts:
        full = os.path.expanduser(path)
        if os.path.isfile(full):
            conn.client.load_host_keys(full)
    for path in (h.option("GlobalKnownHostsFile") or "/etc/ssh/ssh_known_hosts").split():
        if os.path.isfile(path):
            conn.client.load_system_host_keys(path)
    files = [Path(os.path.expanduser(f)) for f in h.known_hosts] or \
        [Path(os.path.expanduser("~/.ssh/known_hosts"))]
    policy: paramiko.MissingHostKeyPolicy = (
        AcceptNewPolicy(files[0]) if accept_new else paramiko.RejectPolicy())
    conn.client.set_missing_host_key_policy(policy)
    # On the paramiko client, not the Connection: setting a Context attribute sets config.
    conn.client.clawdie_known_hosts = files
    conn.client.clawdie_policy = policy
    return conn
