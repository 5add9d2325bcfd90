"""Verify a backup archive in one streaming pass, and extract it without ever leaving its target.

`verify` writes nothing: it checks every member's name and type (refusing absolute paths,
`..`, links, devices, duplicates and members outside the top folder), hashes every file,
checks the manifest's signature (`manifest.sig`, the last member, right after the
manifest) against the trusted keys, then compares sizes and sha256 with the manifest, and
refuses a dump holding a psql meta-command.
`stage` is the same pass writing the wanted members into a private folder on the way
(restore: one read of the archive, and nothing acts on the staged files before the
manifest matched). `extract` reads a verified archive again, repeats every check, and
writes only below its target.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from . import encryption, signing
from .writer import CHUNK, ArchiveReader
from ..config.settings import Settings, parse_env
from ..sources.postgres.dumpfile import DumpFacts, Scanner, blocks
from ..errors import ArchiveCorrupt, ArchiveUnsafe, OutputError
from .manifest import NAME as MANIFEST
from .manifest import Manifest

MAX_MANIFEST = 16 << 20  # a manifest is a few KiB; refuse to hold a huge one in memory
MAX_ENV = 1 << 20
FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)


@dataclass(frozen=True)
class Member:
    name: str  # relative to the top folder: "messages.db", "groups/main/CLAUDE.md"
    size: int
    sha256: str
    mode: int


@dataclass
class Verified:
    """An archive that passed verification, and what it holds."""

    path: Path
    compression: str
    top: str
    manifest: Manifest
    members: dict[str, Member]
    archive_size: int
    env: dict[str, str] | None = field(default=None, repr=False)  # the archived .env, parsed
    dumps: dict[str, DumpFacts] = field(default_factory=dict)
    signer: signing.Signer | None = None  # None: unsigned, let through by --allow-unsigned
    encrypted: bool = False

    @property
    def unsigned_warning(self) -> str:
        """The loud line every action prints for an unsigned archive it was told to accept."""
        return (f"WARNING: {self.path.name} is NOT signed; it was accepted because of "
                "--allow-unsigned: anyone who could write to where it was kept could have "
                "written it") if self.signer is None else ""

    def item_members(self, item: str) -> list[Member]:
        """The members that make up an item ("groups/" is every groups/... file)."""
        if item.endswith("/"):
            return [m for n, m in self.members.items() if n.startswith(item)]
        return [self.members[item]] if item in self.members else []

    def item_size(self, item: str) -> int:
        return sum(m.size for m in self.item_members(item))


def _unsafe(path: Path, name: str, why: str) -> ArchiveUnsafe:
    return ArchiveUnsafe(f"{path}: member {name!r} {why}; nothing was extracted",
                         "refusing this archive: it was not written by clawdie-ops backup or "
                         "has been tampered with; use another copy")


def check_member(path: Path, info: tarfile.TarInfo, top: str | None) -> tuple[str, str]:
    """(top folder, name relative to it) of a member, or ArchiveUnsafe."""
    raw = info.name
    if "\x00" in raw or "\\" in raw:
        raise _unsafe(path, raw, "has a NUL or backslash in its name")
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise _unsafe(path, raw, "has an absolute path")
    parts = raw.rstrip("/").split("/") if info.isdir() else raw.split("/")
    if ".." in parts:
        raise _unsafe(path, raw, "climbs out with '..'")
    if any(p in ("", ".") for p in parts):
        raise _unsafe(path, raw, "has an empty or '.' path component")
    if top is not None and parts[0] != top:
        raise _unsafe(path, raw, f"is outside the archive's top folder {top!r}")
    if info.issym() or info.islnk():
        kind = "symbolic" if info.issym() else "hard"
        target = info.linkname
        outside = target.startswith("/") or ".." in target.split("/")
        raise _unsafe(path, raw, f"is a {kind} link to {target!r}"
                      + (" (outside the archive)" if outside else
                         " (clawdie-ops archives hold no links)"))
    if info.ischr() or info.isblk() or info.isfifo():
        raise _unsafe(path, raw, "is a device or fifo")
    if not (info.isdir() or info.type in FILE_TYPES):
        raise _unsafe(path, raw, f"has an unsupported type {info.type!r}")
    return parts[0], "/".join(parts[1:])


def _chunks(fh: IO[bytes]) -> Iterator[bytes]:
    while chunk := fh.read(CHUNK):
        yield chunk


class _Pass:
    """One streaming pass over an archive with every safety check; yields (rel, member, fh)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.top: str | None = None
        self.seen: set[str] = set()
        self.current = ""
        self.manifest_bytes: bytes | None = None
        self.sig_bytes: bytes | None = None
        self.dirs: list[str] = []

    def members(self, reader: ArchiveReader) -> Iterator[tuple[str, tarfile.TarInfo, IO[bytes]]]:
        tar = reader.tar
        try:
            for info in tar:
                self.current = info.name
                top, rel = check_member(self.path, info, self.top)
                if self.top is None:
                    self.top = top
                if info.name.rstrip("/") in self.seen:
                    raise _unsafe(self.path, info.name, "appears twice")
                self.seen.add(info.name.rstrip("/"))
                if self.sig_bytes is not None or (self.manifest_bytes is not None
                                                  and rel != signing.NAME):
                    raise ArchiveCorrupt(
                        f"{self.path}: member {info.name!r} follows {MANIFEST}, "
                        f"which clawdie-ops writes last (with its {signing.NAME})",
                        "use another copy of the archive")
                if info.isdir():
                    self.dirs.append(rel)
                    continue
                if not rel:
                    raise _unsafe(self.path, info.name, "is a file where the top folder should be")
                fh = tar.extractfile(info)
                assert fh is not None
                if rel == MANIFEST:
                    if info.size > MAX_MANIFEST:
                        raise ArchiveCorrupt(f"{self.path}: {MANIFEST} is {info.size} bytes",
                                             "this is not a clawdie-ops archive")
                    self.manifest_bytes = fh.read()
                    continue
                if rel == signing.NAME:
                    if self.manifest_bytes is None or info.size > signing.MAX_SIG:
                        raise ArchiveCorrupt(f"{self.path}: {signing.NAME} is out of place or "
                                             f"{info.size} bytes", "this is not an archive "
                                             "clawdie-ops wrote; use another copy")
                    self.sig_bytes = fh.read()
                    continue
                yield rel, info, fh
        except (ArchiveCorrupt, ArchiveUnsafe):
            raise
        except (tarfile.TarError, EOFError, OSError) as exc:
            reader.check_decrypt()  # a wrong identity reads as an empty stream
            where = f" in member {self.current!r}" if self.current else " at its start"
            raise ArchiveCorrupt(f"{self.path} is damaged or cut short{where}: {exc}",
                                 "use another copy of the archive, or an older backup") from None

    def finish(self, reader: ArchiveReader) -> Manifest:
        """Decompressor status, then the manifest."""
        reader.finish()
        if self.manifest_bytes is None:
            raise ArchiveCorrupt(f"{self.path} has no {MANIFEST}"
                                 + (f" (last member read: {self.current!r})" if self.current
                                    else ""),
                                 "the archive is cut short or not a clawdie-ops backup; "
                                 "use another copy")
        return Manifest.from_json(self.manifest_bytes, f"{self.path.name}: {MANIFEST}")


class _Staging:
    """Where `stage` writes: below one folder, never filling the disk it is on."""

    def __init__(self, target: Path, want: Callable[[str], bool]) -> None:
        self.target = Path(os.path.abspath(target))
        self.want = want
        self.staged = 0

    def open(self, rel: str, size: int, mode: int) -> IO[bytes]:
        # Room for this member and a tenth of all staged so far, as restore's old upfront
        # check (1.1 x the items) did, but per member: the sizes come with the tar headers.
        free = shutil.disk_usage(self.target).free
        need = size + (self.staged + size) // 10
        if free < need:
            raise OutputError(f"not enough space in {self.target} to stage {rel}: {free} bytes "
                              f"free, {need} needed", "free space there first; nothing was "
                              "changed")
        self.staged += size
        dest = _inside(self.target, rel)
        mode = 0o600 if rel == "env" or rel.endswith(".sql") else (mode & 0o755) or 0o600
        try:
            _mkdirs(self.target, os.path.dirname(rel))
            return _open_new(dest, mode)
        except OSError as exc:
            raise OutputError(f"cannot stage {rel} in {self.target}: {exc.strerror}",
                              "check that folder (free space, permissions); nothing was "
                              "changed") from None


def _hash_member(rel: str, fh: IO[bytes], scanner: Scanner | None,
                 keep: bool, out: IO[bytes] | None = None) -> tuple[int, str, bytes | None]:
    sha = hashlib.sha256()
    size = 0
    kept = io.BytesIO() if keep else None
    source = blocks(fh, CHUNK) if scanner is not None else _chunks(fh)
    for chunk in source:
        sha.update(chunk)
        size += len(chunk)
        written = scanner.feed_block(chunk) if scanner is not None else chunk
        if kept is not None:
            if size > MAX_ENV:
                raise ArchiveCorrupt(f"archived {rel} is larger than {MAX_ENV} bytes",
                                     "this is not a clawdie-ops archive")
            kept.write(chunk)
        if out is not None:
            _write(out, written, rel)
    return size, sha.hexdigest(), kept.getvalue() if kept is not None else None


def _write(out: IO[bytes], chunk: bytes, rel: str) -> None:
    try:
        out.write(chunk)
    except OSError as exc:  # not the archive's fault: say so, not "damaged"
        raise OutputError(f"staging {rel} failed: {exc.strerror}",
                          "free space in the Clawdie root and try again; nothing was changed"
                          ) from None


def compare(path: Path, manifest: Manifest, found: dict[str, Member]) -> list[str]:
    """Every difference between the members and the manifest, each naming the item."""
    problems = []
    for name, entry in manifest.files.items():
        m = found.get(name)
        if m is None:
            problems.append(f"{name}: missing from the archive")
        elif m.size != entry.get("size"):
            problems.append(f"{name}: size {m.size}, manifest says {entry.get('size')}")
        elif m.sha256 != entry.get("sha256"):
            problems.append(f"{name}: sha256 differs from the manifest")
    for name in found:
        if name not in manifest.files:
            problems.append(f"{name}: in the archive but not in the manifest")
    for item in manifest.items:
        if item.endswith("/"):
            if not any(n.startswith(item) for n in manifest.files):
                problems.append(f"{item}: listed in the manifest's items without files")
        elif item not in manifest.files:
            problems.append(f"{item}: listed in the manifest's items without a file entry")
    return problems


@dataclass
class Keys:
    """What opening an archive takes: the signing keys it may be signed by, and the way to
    decrypt it when it is encrypted."""

    trust: signing.Trust
    decrypt: Callable[[Path], list[str]] | None = None


def keys_for(s: Settings, allow_unsigned: bool = False) -> Keys:
    """The trusted keys and the age identity of a host's config (`s.signing`, `s.encryption`)."""
    trust = signing.trust_from(dict(s.signing), s.home, allow_unsigned)
    enc = dict(s.encryption)
    return Keys(trust, lambda path: encryption.decrypt_cmd(enc, s.home, path))


def verify(path: Path, keys: Keys) -> Verified:
    """Check an archive completely; nothing is written anywhere."""
    return _read(Path(path), None, keys)


def stage(path: Path, target: Path, want: Callable[[str], bool], keys: Keys) -> Verified:
    """Check an archive completely, writing the wanted members below `target` (an existing
    empty private folder) in the same pass. Only the returned Verified says that every
    staged file matched the manifest (and that a trusted key signed it); on any error the
    caller removes `target`. Staged dumps have pg_dump's \\restrict lines made comments."""
    return _read(Path(path), _Staging(target, want), keys)


def _read(path: Path, staging: _Staging | None, keys: Keys) -> Verified:
    # One streaming pass over untrusted input: each member's checks sit beside the read that
    # needs them, so nothing is acted on before it is checked (hence its length).
    p = _Pass(path)
    found: dict[str, Member] = {}
    env_bytes: bytes | None = None
    scanners: dict[str, Scanner] = {}
    with ArchiveReader(path, keys.decrypt) as reader:
        for rel, info, fh in p.members(reader):
            scanner = Scanner() if rel.endswith(".sql") else None
            out = (staging.open(rel, info.size, info.mode)
                   if staging is not None and staging.want(rel) else None)
            try:
                with out or contextlib.nullcontext():
                    size, digest, kept = _hash_member(rel, fh, scanner, keep=(rel == "env"),
                                                      out=out)
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise ArchiveCorrupt(f"{path} is damaged or cut short in member {info.name!r}:"
                                     f" {exc}", "use another copy of the archive, or an older "
                                     "backup") from None
            if size != info.size:
                raise ArchiveCorrupt(f"{path}: member {info.name!r} is cut short",
                                     "use another copy of the archive, or an older backup")
            found[rel] = Member(rel, size, digest, info.mode & 0o777)
            if scanner is not None:
                scanners[rel] = scanner
            if kept is not None:
                env_bytes = kept
        try:
            manifest = p.finish(reader)
        except ArchiveCorrupt as exc:
            # The manifest may have been read before the stream broke: name what differs.
            if p.manifest_bytes is not None:
                try:
                    m = Manifest.from_json(p.manifest_bytes)
                    bad = [x.split(":")[0] for x in compare(path, m, found)]
                except ArchiveCorrupt:
                    bad = []
                if bad:
                    raise ArchiveCorrupt(f"{exc.message}; damaged: {', '.join(bad[:5])}",
                                         exc.hint) from None
            raise
    # The signature first: nothing below (nor any caller) acts on an unvouched member.
    assert p.manifest_bytes is not None
    signer = signing.check(path, p.manifest_bytes, p.sig_bytes, keys.trust)
    problems = compare(path, manifest, found)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ArchiveCorrupt(f"{path} fails verification: {'; '.join(problems[:3])}{more}",
                             "the archive is damaged or was changed after the backup; "
                             "use another copy, or an older backup")
    for name, sc in scanners.items():
        if sc.facts.meta:
            line, text = sc.facts.meta[0]
            more = f" (and {len(sc.facts.meta) - 1} more)" if len(sc.facts.meta) > 1 else ""
            raise ArchiveUnsafe(
                f"{path}: {name} line {line} is a psql meta-command outside COPY data: "
                f"{text!r}{more}; nothing was replayed",
                "pg_dump writes none besides its \\restrict/\\unrestrict pair: this dump "
                "was edited after pg_dump wrote it (signed or not, it is refused); use "
                "another backup")
    env = None
    if env_bytes is not None:
        try:
            env = parse_env(io.StringIO(env_bytes.decode("utf-8")))
        except UnicodeDecodeError:
            raise ArchiveCorrupt(f"{path}: the archived env is not UTF-8 text",
                                 "use another copy of the archive") from None
    assert p.top is not None
    return Verified(path=path, compression=reader.kind, top=p.top, manifest=manifest,
                    members=found, archive_size=path.stat().st_size, env=env,
                    dumps={n: s.facts for n, s in scanners.items()}, signer=signer,
                    encrypted=reader.encrypted)


def _inside(target: Path, rel: str) -> Path:
    dest = (target / rel)
    resolved = Path(os.path.abspath(dest))
    if os.path.commonpath([resolved, target]) != str(target) or resolved == target:
        raise ArchiveUnsafe(f"{rel!r} would be written outside {target}",
                            "refusing this archive; use another copy")
    return dest


def _open_new(dest: Path, mode: int) -> IO[bytes]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    return os.fdopen(os.open(dest, flags, mode), "wb", buffering=CHUNK)  # dumps: many lines


def _mkdirs(target: Path, rel_dir: str) -> None:
    """Create folders below target one by one, refusing any that is a link."""
    current = target
    for part in [x for x in rel_dir.split("/") if x]:
        current = current / part
        try:
            os.mkdir(current, 0o755)  # the umask applies; the staging folder itself is 0700
        except FileExistsError:
            if current.is_symlink() or not current.is_dir():
                raise ArchiveUnsafe(f"{current} exists and is not a plain folder",
                                    "use an empty folder") from None
