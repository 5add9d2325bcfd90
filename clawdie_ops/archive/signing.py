"""Archive signatures: Ed25519 over manifest.json, made by backup, checked before any member.

The manifest lists every member's size and sha256, so a valid signature over it vouches for
the whole archive. The signature travels inside the archive as `manifest.sig`, the member
right after the manifest (one file per backup). Keys are OpenSSH-format public keys
(`ssh-ed25519 AAAA... comment`), with `ssh-keygen -l`-style fingerprints, so an operator
can compare them by eye. The primitive is `cryptography`'s Ed25519: nothing home-made.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import ArchiveUntrusted, ConfigError

NAME = "manifest.sig"
MAX_SIG = 64 << 10
FORMAT = 1
# Domain separation: a signature over a manifest is never valid for anything else.
CONTEXT = b"clawdie-ops archive manifest v1\n"
DEFAULT_KEY = "~/.config/clawdie-ops/signing.key"
DEFAULT_TRUSTED_FILE = "~/.config/clawdie-ops/trusted_keys"


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key as an OpenSSH line."""

    key: Ed25519PublicKey = field(repr=False, compare=False)
    blob: bytes  # the OpenSSH wire form that the fingerprint hashes
    comment: str = ""

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.blob).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    @property
    def line(self) -> str:
        text = "ssh-ed25519 " + base64.b64encode(self.blob).decode()
        return f"{text} {self.comment}" if self.comment else text

    def label(self) -> str:
        return f"{self.fingerprint} ({self.comment})" if self.comment else self.fingerprint

    @classmethod
    def of(cls, key: Ed25519PublicKey, comment: str = "") -> PublicKey:
        openssh = key.public_bytes(serialization.Encoding.OpenSSH,
                                   serialization.PublicFormat.OpenSSH)
        return cls(key, base64.b64decode(openssh.split()[1]), comment)


def parse_public(text: str, origin: str = "") -> PublicKey:
    """An `ssh-ed25519 AAAA... [comment]` line; ConfigError naming `origin` otherwise."""
    parts = text.strip().split(None, 2)
    where = f" in {origin}" if origin else ""
    if len(parts) < 2 or parts[0] != "ssh-ed25519":
        raise ConfigError(f"not an Ed25519 public key{where}: {text.strip()[:60]!r}",
                          "use the line `clawdie-ops keys` prints on the host that signs "
                          "(ssh-ed25519 AAAA... comment)")
    try:
        key = serialization.load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
    except (ValueError, binascii.Error, TypeError):
        raise ConfigError(f"unreadable Ed25519 public key{where}: {parts[1][:24]}...",
                          "copy the whole line `clawdie-ops keys` prints") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"not an Ed25519 public key{where}", "use an ssh-ed25519 key")
    return PublicKey.of(key, parts[2].strip() if len(parts) > 2 else "")


# -- the private key ------------------------------------------------------------------------
def load_private(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the signing key {path}: {exc.strerror}",
                          "check its owner and mode (0600, the user that runs backups), or "
                          "set clawdie.signing.key") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{path} is not an unencrypted PEM private key",
                          "point clawdie.signing.key at the file clawdie-ops created") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 key", "clawdie-ops signs with Ed25519")
    return key


def create_private(path: Path) -> Ed25519PrivateKey:
    """A new key at `path`: folder 0700, file 0600, never replacing an existing one."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise ConfigError(f"cannot create the signing key {path}: {exc.strerror}",
                          "make its folder writable, or set clawdie.signing.key") from None
    return key


def public_of(key: Ed25519PrivateKey, comment: str = "") -> PublicKey:
    return PublicKey.of(key.public_key(), comment)


def check_key_outside(key_path: Path, backup_dir: Path) -> None:
    """The private key must not travel with the backups it vouches for."""
    key_abs, out_abs = os.path.realpath(key_path), os.path.realpath(backup_dir)
    if os.path.commonpath([key_abs, out_abs]) == out_abs:
        raise ConfigError(f"the signing key {key_path} is inside the backup directory "
                          f"{backup_dir}", "whoever can write the backups could sign them: "
                          "move the key out (clawdie.signing.key) or pick another --output")


# -- signing and checking -------------------------------------------------------------------
def sign(key: Ed25519PrivateKey, manifest: bytes, comment: str = "") -> bytes:
    """The manifest.sig member for `manifest`."""
    pub = public_of(key, comment)
    doc = {"format": FORMAT, "algorithm": "ed25519", "public_key": pub.line,
           "fingerprint": pub.fingerprint,
           "signature": base64.b64encode(key.sign(CONTEXT + manifest)).decode()}
    return json.dumps(doc, indent=2).encode() + b"\n"


@dataclass
class Trust:
    """The public keys an archive may be signed by, and whether unsigned ones pass."""

    keys: dict[str, PublicKey] = field(default_factory=dict)  # fingerprint -> key
    sources: list[str] = field(default_factory=list)  # where keys came from, for messages
    allow_unsigned: bool = False

    def add(self, key: PublicKey) -> None:
        self.keys.setdefault(key.fingerprint, key)


@dataclass(frozen=True)
class Signer:
    fingerprint: str
    comment: str
    public_key: str

    def as_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "comment": self.comment,
                "public": self.public_key}


def check(path: Path, manifest: bytes, sig: bytes | None, trust: Trust) -> Signer | None:
    """The signer of `manifest` when the signature is valid and trusted; None for an unsigned
    archive that `trust` lets through; ArchiveUntrusted otherwise."""
    if sig is None:
        if trust.allow_unsigned:
            return None
        raise ArchiveUntrusted(
            f"{path} is not signed (it has no {NAME}): refusing to use it",
            "if it was made by a clawdie-ops from before archives were signed and you know "
            "where it has been, pass --allow-unsigned (every other check still applies); "
            "otherwise use a signed backup")
    try:
        doc = json.loads(sig)
        if not isinstance(doc, dict) or doc.get("algorithm") != "ed25519":
            raise ValueError("not an ed25519 signature document")
        pub = parse_public(str(doc["public_key"]))
        signature = base64.b64decode(str(doc["signature"]), validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error, ConfigError) as exc:
        why = exc.message if isinstance(exc, ConfigError) else str(exc)
        raise ArchiveUntrusted(f"{path}: {NAME} is unreadable ({why})",
                               "the archive is damaged or was tampered with; use another "
                               "copy") from None
    known = trust.keys.get(pub.fingerprint)
    if known is None:
        where = f" from {', '.join(trust.sources)}" if trust.sources else ""
        raise ArchiveUntrusted(
            f"{path} is signed by key {pub.label()}, which is not trusted here "
            f"(this host trusts {len(trust.keys)} key(s){where})",
            "if that is your backup host's key (compare with the fingerprint `clawdie-ops "
            f"keys` prints there), trust it: clawdie-ops keys --trust '{pub.line}' (or add "
            "it to clawdie.signing.trusted_keys); otherwise do not use this archive")
    try:
        known.key.verify(signature, CONTEXT + manifest)
    except InvalidSignature:
        raise ArchiveUntrusted(
            f"{path}: the signature by {known.label()} does not match its manifest: the "
            "archive was changed after the backup was made",
            "do not use it; use another copy, or an older backup") from None
    return Signer(known.fingerprint, known.comment or pub.comment, known.line)


# -- where the keys live -------------------------------------------------------------------
def _expand(path: str, home: Path) -> Path:
    if path == "~":
        return home
    return home / path[2:] if path.startswith("~/") else Path(path)


def key_path(cfg: dict[str, Any], home: Path) -> Path:
    return _expand(str(cfg.get("key") or DEFAULT_KEY), home)


def trusted_file(cfg: dict[str, Any], home: Path) -> Path:
    return _expand(str(cfg.get("trusted_file") or DEFAULT_TRUSTED_FILE), home)


def read_trusted_file(path: Path) -> list[PublicKey]:
    """One public key per line; blank lines and `#` comments are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the trusted keys file {path}: {exc}",
                          "check its owner and mode, or set clawdie.signing.trusted_file"
                          ) from None
    return [parse_public(line, f"{path} line {n}") for n, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]


def trust_from(cfg: dict[str, Any], home: Path, allow_unsigned: bool = False) -> Trust:
    """Trusted: clawdie.signing.trusted_keys, the lines of the trusted keys file, and this
    host's own signing key (when it has one: it signs the backups made here)."""
    trust = Trust(allow_unsigned=allow_unsigned)
    listed = cfg.get("trusted_keys") or []
    if isinstance(listed, str):
        listed = [listed]
    for n, line in enumerate(listed):
        trust.add(parse_public(str(line), f"clawdie.signing.trusted_keys[{n}]"))
    if listed:
        trust.sources.append("clawdie.signing.trusted_keys")
    tfile = trusted_file(cfg, home)
    from_file = read_trusted_file(tfile)
    for key in from_file:
        trust.add(key)
    if from_file:
        trust.sources.append(str(tfile))
    own = key_path(cfg, home)
    if own.is_file():
        trust.add(public_of(load_private(own)))
        trust.sources.append(f"this host's signing key {own}")
    return trust


def add_trusted(path: Path, key: PublicKey) -> bool:
    """Append `key` to the trusted keys file (folder 0700); False when it is there already."""
    if any(k.fingerprint == key.fingerprint for k in read_trusted_file(path)):
        return False
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        ends_open = path.exists() and path.stat().st_size > 0 and \
            not path.read_bytes().endswith(b"\n")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write(("\n" if ends_open else "") + key.line + "\n")
    except OSError as exc:
        raise ConfigError(f"cannot write the trusted keys file {path}: {exc.strerror}",
                          "check its folder, or set clawdie.signing.trusted_file") from None
    return True
