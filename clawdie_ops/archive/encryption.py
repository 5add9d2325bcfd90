"""Encryption at rest, optional: the compressed tar stream goes through `age` on its way to disk.

The `age` program (FreeBSD: pkg install age; Debian: apt install age) is one more process in
the pipe, as zstd is: the archive is encrypted as it is written, with no plaintext copy beside
it, and decrypted as it is read. Recipients are public (age1... or ssh-ed25519 keys) and may
sit in any config; the identity (the secret key) stays with whoever restores.
An encrypted archive is named `...tar.zst.age`: the suffix before `.age` says how the
decrypted stream is compressed.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any
from collections.abc import Mapping

from ..errors import ConfigError, ToolMissing

MAGIC = b"age-encryption.org/v1\n"
ARMOR = b"-----BEGIN AGE ENCRYPTED FILE-----"
SUFFIX = ".age"
_RECIPIENT = re.compile(r"^(age1[0-9a-z]{58}|ssh-ed25519 [A-Za-z0-9+/=]+|ssh-rsa [A-Za-z0-9+/=]+)"
                        r"( .*)?$")


def is_encrypted(head: bytes) -> bool:
    return head.startswith(MAGIC[:8]) or head.startswith(ARMOR[:8])


def recipients(cfg: Mapping[str, Any]) -> list[str]:
    """The configured recipients, checked (a typo must not make an unreadable backup)."""
    listed = cfg.get("recipients") or []
    if isinstance(listed, str):
        listed = [listed]
    out = []
    for n, raw in enumerate(listed):
        text = str(raw).strip()
        if not _RECIPIENT.match(text):
            raise ConfigError(f"clawdie.encryption.recipients[{n}] is not an age recipient: "
                              f"{text[:40]!r}", "use an age1... public key (age-keygen -y "
                              "IDENTITY prints it) or an ssh-ed25519 public key")
        out.append(" ".join(text.split()[:2]))  # no comment: age takes the key alone
    return out


def tool(cfg: Mapping[str, Any]) -> str:
    name = str(cfg.get("age") or "age")
    found = shutil.which(name)
    if not found:
        raise ToolMissing(f"age not found ({name})", "install it (FreeBSD: pkg install age; "
                          "Debian: apt install age) or set clawdie.encryption.age")
    return found


def encrypt_cmd(cfg: Mapping[str, Any], to: list[str]) -> list[str]:
    return [tool(cfg), "--encrypt", *[a for r in to for a in ("--recipient", r)]]


def identity_path(cfg: Mapping[str, Any], home: Path) -> Path | None:
    raw = str(cfg.get("identity") or "")
    if not raw:
        return None
    return home / raw[2:] if raw.startswith("~/") else Path(raw)


def decrypt_cmd(cfg: Mapping[str, Any], home: Path, archive: Path) -> list[str]:
    """age reading the archive with the configured identity; ConfigError naming the fix."""
    ident = identity_path(cfg, home)
    if ident is None:
        raise ConfigError(f"{archive} is encrypted (age) and no identity is configured",
                          "set clawdie.encryption.identity to the age identity file that "
                          "holds the secret key of one of its recipients")
    if not ident.is_file():
        raise ConfigError(f"the age identity file {ident} does not exist",
                          "fix clawdie.encryption.identity")
    return [tool(cfg), "--decrypt", "--identity", str(ident)]


def inner_kind(name: str) -> str:
    """`x.tar.zst.age` -> zstd: how the decrypted stream is compressed (a wrong name fails
    at the decompressor, as damage)."""
    return "zstd" if name.endswith(".tar.zst" + SUFFIX) else "gzip"
