"""Offsite copies: an archive sent to an inventory host's backup_dir.

The trip is migrate's (hosts/transfer.py): SFTP into NAME.partial, resumed after a dropped
connection, renamed only once the destination host itself computed the sha256 (its
`sha256` command template) and it matched. Signed or encrypted archives travel as they are:
the copy never opens them.
"""
from __future__ import annotations

import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import runner
from ..config import inventory, settings as config
from ..errors import ConfigError, HostError
from ..hosts import remote, transfer
from ..hosts.transfer import NETWORK_ERRORS
from ..runner import Shell


@dataclass
class Target:
    host: inventory.Host
    directory: str
    settings: config.Settings  # that host's, for its command templates

    def path(self, archive: Path) -> str:
        return f"{self.directory.rstrip('/')}/{archive.name}"


def target(cfg: Mapping[str, Any], name: str) -> Target:
    """The inventory host `name` and the backup directory copies go to there."""
    if not name:
        raise ConfigError("no destination host", "pass --to NAME (a host of clawdie.hosts)")
    h = inventory.resolve(cfg, name)
    if not h.in_inventory:
        known = ", ".join(sorted(inventory.hosts(cfg))) or "none yet"
        raise ConfigError(f"{name} is not in clawdie.hosts (known: {known})",
                          f"add it: clawdie.hosts.{name}: {{ssh: ALIAS, overrides: "
                          "{backup_dir: /path/there}}")
    if h.local:
        raise ConfigError(f"{name} is this machine: an offsite copy goes to another host",
                          "pick a host whose ssh is not `local`")
    directory = str(h.overrides.get("backup_dir") or "")
    if not directory or directory.startswith("~"):
        raise ConfigError(f"no backup directory for host {name}",
                          f"set clawdie.hosts.{name}.overrides.backup_dir to an absolute "
                          "path on that host")
    s = config.load({"clawdie": inventory.apply(cfg, h.settings_overrides())},
                    require_env=False)
    return Target(h, directory, s)


def describe(archive: Path, t: Target) -> list[str]:
    return [f"copy       {archive} -> {t.host.name}:{t.path(archive)} over SFTP, "
            f"as {t.path(archive)}.partial (resumable)",
            f"verify     {t.settings.command('sha256', path=t.path(archive) + '.partial')}"
            f"  (on {t.host.name}), then rename"]


def run(c, cfg: Mapping[str, Any], archive: Path, to: str, *, sha256: str = "",
        size: int | None = None, retries: int = 5, accept_new_host_key: bool = False,
        on_retry=None) -> dict[str, Any]:
    """Copy `archive` to host `to`; its sha256 is computed here unless the backup gave it."""
    t = target(cfg, to)
    archive = Path(archive)
    if not archive.is_file():
        raise ConfigError(f"archive not found: {archive}", "check the path")
    if not sha256 or size is None:
        sha256, size = transfer.local_sha256(str(archive))
    dest = t.path(archive)

    def connect() -> Any:
        return remote.context_for(c, t.host, cfg, accept_new_host_key=accept_new_host_key)

    files = transfer.SftpFiles(connect, t.host.name)
    try:
        try:
            mode = files.sftp().stat(t.directory).st_mode or 0
        except FileNotFoundError:
            mode = 0
        except NETWORK_ERRORS as exc:
            raise HostError(f"cannot reach {t.host.label}: {exc}",
                            "check the host's ssh alias and that sshd runs there") from None
        if not stat.S_ISDIR(mode):
            raise ConfigError(f"backup directory {t.directory} not found on {t.host.label}",
                              f"create it there (mkdir -m 700 {t.directory}) or fix "
                              f"clawdie.hosts.{t.host.name}.overrides.backup_dir")

        def verify(path: str) -> tuple[str, int]:
            cmd = t.settings.command("sha256", path=path)
            res = runner.run(files.connection(), Shell(cmd), host=t.host.name,
                             what=f"the sha256 of {path}")
            digest = res.stdout.split()[0] if res.exited == 0 and res.stdout.split() else ""
            if not digest:
                raise HostError(f"`{cmd}` failed on {t.host.label}: {res.stderr.strip()}",
                                f"check clawdie.hosts.{t.host.name}.overrides.commands.sha256")
            return digest.lower(), int(files.size(path) or 0)

        result = transfer.copy(transfer.LocalFiles(), str(archive), files, dest, size=size,
                               sha256=sha256, verify=verify, retries=retries,
                               on_retry=on_retry)
    finally:
        files.reset()
    return {**result.as_dict(), "host": t.host.name, "path": dest}
