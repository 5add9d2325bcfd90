"""Damaged and hostile archives built from a good one, for the restore / drill / inspect tests.

Python's own tarfile writes them (not clawdie-ops), so a test can put anything into a member
name or type. `resign` recomputes the manifest's sizes and checksums and signs the manifest
again, so that a refusal is about what the test built, not about a checksum or a signature:
by default with the kit's key (KIT_KEY), which the rig's hosts trust as they would another
backup host of theirs (tests/rig/hosts.py); an attack test passes a key of its own.
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from clawdie_ops.archive import signing

Member = tuple[tarfile.TarInfo, bytes | None]

# A fixed key (from a fixed seed): the same public key in every run, so the rig's config can
# name it.
KIT_KEY = Ed25519PrivateKey.from_private_bytes(
    hashlib.sha256(b"clawdie-ops test kit signing key").digest())
KIT_PUBLIC = signing.public_of(KIT_KEY, "clawdie-ops-test-kit").line


def attacker_key() -> Ed25519PrivateKey:
    """A key nobody trusts: what an attacker who can write the backups would sign with."""
    return Ed25519PrivateKey.generate()


def read(archive: Path) -> tuple[str, list[Member]]:
    """(top folder, members with their data) of a .tar.gz or .tar.zst."""
    raw = Path(archive).read_bytes()
    if raw[:4] == b"\x28\xb5\x2f\xfd":
        raw = subprocess.run(["zstd", "-d", "-c"], input=raw, capture_output=True,
                             check=True).stdout
        mode = "r:"
    else:
        mode = "r:gz"
    out = []
    with tarfile.open(fileobj=io.BytesIO(raw), mode=mode) as tf:
        for m in tf.getmembers():
            data = tf.extractfile(m).read() if m.isfile() else None
            out.append((copy.copy(m), data))
    return out[0][0].name.split("/")[0], out


def write(dest: Path, members: list[Member]) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            info = copy.copy(info)
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    dest.write_bytes(buf.getvalue())
    return dest


def resign(top: str, members: list[Member], key: Ed25519PrivateKey | None = KIT_KEY
           ) -> list[Member]:
    """Recompute manifest.json's files (size, sha256) from the regular members; keep it last,
    followed by its signature by `key` (none when `key` is None: an unsigned archive)."""
    ours = (f"{top}/manifest.json", f"{top}/{signing.NAME}")
    body = [(i, d) for i, d in members if i.name not in ours]
    old = next(d for i, d in members if i.name == f"{top}/manifest.json")
    doc = json.loads(old)
    files = {}
    for info, data in body:
        if info.isfile() and data is not None and info.name.startswith(f"{top}/"):
            rel = info.name[len(top) + 1:]
            entry = dict(doc["files"].get(rel, {"kind": "file"}))
            entry.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
            files[rel] = entry
    doc["files"] = files
    info = tarfile.TarInfo(f"{top}/manifest.json")
    manifest = json.dumps(doc, indent=2).encode()
    out = body + [(info, manifest)]
    if key is not None:
        out.append((tarfile.TarInfo(f"{top}/{signing.NAME}"), signing.sign(key, manifest)))
    return out


def repack(src: Path, dest: Path, edit: Callable[[str, list[Member]], list[Member]],
           sign: bool = True, key: Ed25519PrivateKey | None = KIT_KEY) -> Path:
    """`src` changed by `edit`; with `sign`, the manifest recomputed and signed by `key`
    (key=None: unsigned); without, the members as edited (the old manifest and signature)."""
    top, members = read(src)
    members = edit(top, members)
    return write(dest, resign(top, members, key) if sign else members)


def edit_member(name: str, change: Callable[[bytes], bytes]):
    """An `edit` for repack that changes one member's bytes."""
    def edit(top: str, members: list[Member]) -> list[Member]:
        out = []
        for info, data in members:
            if info.name == f"{top}/{name}":
                data = change(data)
            out.append((info, data))
        return out
    return edit


def edit_manifest(change: Callable[[dict], None]):
    def edit(top: str, members: list[Member]) -> list[Member]:
        out = []
        for info, data in members:
            if info.name == f"{top}/manifest.json":
                doc = json.loads(data)
                change(doc)
                data = json.dumps(doc).encode()
            out.append((info, data))
        return out
    return edit


def add_members(*extra: Callable[[str], Member], before_manifest: bool = True):
    """An `edit` that adds members (each built from the top folder's name)."""
    def edit(top: str, members: list[Member]) -> list[Member]:
        new = [make(top) for make in extra]
        if not before_manifest:
            return members + new
        at = next(n for n, (i, _) in enumerate(members) if i.name == f"{top}/manifest.json")
        return members[:at] + new + members[at:]
    return edit


def file_member(name: str, data: bytes = b"pwned\n") -> Callable[[str], Member]:
    def make(top: str) -> Member:
        info = tarfile.TarInfo(name.format(top=top))
        info.size = len(data)
        return info, data
    return make


def link_member(name: str, target: str, hard: bool = False) -> Callable[[str], Member]:
    def make(top: str) -> Member:
        info = tarfile.TarInfo(name.format(top=top))
        info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
        info.linkname = target.format(top=top)
        return info, None
    return make


def device_member(name: str) -> Callable[[str], Member]:
    def make(top: str) -> Member:
        info = tarfile.TarInfo(name.format(top=top))
        info.type = tarfile.CHRTYPE
        info.devmajor, info.devminor = 1, 3
        return info, None
    return make


def flip_byte(src: Path, dest: Path, at: float = 0.5) -> Path:
    """One byte of the compressed stream inverted, like a bad sector."""
    raw = bytearray(Path(src).read_bytes())
    raw[int(len(raw) * at)] ^= 0xFF
    dest.write_bytes(bytes(raw))
    return dest


def cut_tail(src: Path, dest: Path, keep: float = 0.6) -> Path:
    """The archive cut short, like an interrupted copy."""
    raw = Path(src).read_bytes()
    dest.write_bytes(raw[: int(len(raw) * keep)])
    return dest


def fail_late(sql: bytes) -> bytes:
    """A dump whose last foreign key points at a missing table: psql fails near the end."""
    marker = b"REFERENCES public."
    at = sql.rfind(marker)
    assert at > 0, "the dump has no foreign key to break"
    end = sql.index(b"(", at)
    return sql[:at] + b"REFERENCES public.no_such_table" + sql[end:]
