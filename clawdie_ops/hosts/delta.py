"""The wire format of a migration's delta: what changed in messages.db (pages) and in the
installation's files since the copy the new host already holds, as one bundle file.

A bundle is `MAGIC`, a 4-byte big-endian header length, a JSON header, then the payload:
the pages the header lists (each `page_size` bytes, the last one maybe shorter), then the
files it lists (each `size` bytes). Everything here is plain and side-effect free but for
reading and writing the files named; the host-side steps are in actions/migrate/delta.py.

The bundle comes from the old host: the new host treats it as untrusted input. Names must be
relative, inside the staging folder (`safe_name`), sizes and page numbers must add up to the
bundle's length, and what arrives must hash to what the header says.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any
from collections.abc import Iterable, Iterator

from ..archive.writer import sha256_stream
from ..errors import ArchiveCorrupt

MAGIC = b"CLAWDIE-DELTA-1\n"
HASH_HEX = 32  # blake2b, 16 bytes: a page's identity, not a signature (sha256 checks the whole)
CHUNK = 1 << 20
# The only names a bundle may carry: the three kinds of installation file.
TOPS = ("env", "mount-allowlist.json", "groups/")


class DeltaRefused(ArchiveCorrupt):
    """A bundle or file list that names something outside the staging folder, or lies."""


# -- pages ---------------------------------------------------------------------------------
def page_size(path: Path) -> int:
    """The page size a SQLite file's header records (bytes 16-17; 1 means 65536)."""
    with open(path, "rb") as fh:
        head = fh.read(100)
    if len(head) < 100 or not head.startswith(b"SQLite format 3\x00"):
        raise ArchiveCorrupt(f"{path} is not a SQLite database (no SQLite header)",
                             "check clawdie.sqlite_path / the Clawdie root")
    size = struct.unpack(">H", head[16:18])[0]
    return 65536 if size == 1 else size


def page_hashes(path: Path, size: int) -> list[str]:
    """One short hash per page of the file at `path`, in page order."""
    return scan(path, size)[0]


def scan(path: Path, size: int) -> tuple[list[str], str]:
    """The page hashes and the whole file's sha256, in one read."""
    out = []
    whole = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            page = fh.read(size)
            if not page:
                break
            whole.update(page)
            out.append(hashlib.blake2b(page, digest_size=HASH_HEX // 2).hexdigest())
    return out, whole.hexdigest()


def changed_pages(ours: list[str], theirs: list[str]) -> list[int]:
    """Page numbers (0-based) whose hash in `ours` differs from `theirs` or that `theirs`
    lacks: what the other side needs to turn its copy into ours (plus our length)."""
    return [i for i, h in enumerate(ours) if i >= len(theirs) or theirs[i] != h]


def pack_hashes(hashes: list[str]) -> str:
    return "".join(hashes)


def unpack_hashes(text: str) -> list[str]:
    if len(text) % HASH_HEX or any(ch not in "0123456789abcdef" for ch in text[:HASH_HEX * 4]):
        raise DeltaRefused("a page-hash list is malformed", "run the migration again")
    return [text[i:i + HASH_HEX] for i in range(0, len(text), HASH_HEX)]


# -- files ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileEntry:
    name: str  # "env", "mount-allowlist.json", "groups/main/CLAUDE.md"
    size: int
    mtime_ns: int
    mode: int
    sha256: str

    def same(self, other: FileEntry | None) -> bool:
        return other is not None and (self.size, self.mtime_ns, self.mode, self.sha256) == \
            (other.size, other.mtime_ns, other.mode, other.sha256)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def safe_name(name: Any) -> str:
    """`name` if it is a relative path below one of TOPS, with no `..`; else DeltaRefused."""
    if not isinstance(name, str) or not name or "\x00" in name or "\\" in name:
        raise DeltaRefused(f"file list: {name!r} is not a file name", "run the migration "
                           "again; if it repeats, the old host's clawdie-ops is not this one")
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or name != p.as_posix() or "." in p.parts:
        raise DeltaRefused(f"file list: {name!r} would be written outside the staging folder "
                           "(absolute or with ..): refused, nothing was written",
                           "the old host sent a hostile or damaged file list; check it")
    if name not in TOPS[:2] and not (name.startswith("groups/") and len(p.parts) >= 2):
        raise DeltaRefused(f"file list: {name!r} is not an installation file (env, "
                           "mount-allowlist.json, groups/...): refused",
                           "the old host sent a hostile or damaged file list; check it")
    return name


def file_entry(name: str, path: Path) -> FileEntry:
    st = os.lstat(path)
    return FileEntry(name, st.st_size, st.st_mtime_ns, st.st_mode & 0o777, sha256_of(path))


def entries_from(raw: Iterable[Any]) -> dict[str, FileEntry]:
    """A file list received from the other host, every name checked."""
    out: dict[str, FileEntry] = {}
    for e in raw:
        if not isinstance(e, dict):
            raise DeltaRefused("file list: an entry is not an object", "run it again")
        try:
            entry = FileEntry(safe_name(e.get("name")), int(e["size"]), int(e["mtime_ns"]),
                              int(e["mode"]) & 0o777, str(e["sha256"]))
        except (KeyError, TypeError, ValueError):
            raise DeltaRefused(f"file list: entry {e.get('name')!r} lacks size, mtime, mode "
                               "or sha256", "run the migration again") from None
        if entry.size < 0:
            raise DeltaRefused(f"file list: {entry.name!r} has a negative size", "")
        out[entry.name] = entry
    return out


def file_changes(ours: dict[str, FileEntry], theirs: dict[str, FileEntry]
                 ) -> tuple[list[FileEntry], list[str]]:
    """(files to send: new or changed by size, mtime, mode or sha256; names to delete)."""
    send = [e for n, e in sorted(ours.items()) if not e.same(theirs.get(n))]
    return send, sorted(n for n in theirs if n not in ours)


# -- the bundle ----------------------------------------------------------------------------
@dataclass
class Header:
    db: dict[str, Any] | None  # page_size, length, pages, sha256, tables
    files: list[FileEntry] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def payload_size(self) -> int:
        size = 0
        if self.db:
            ps, length = int(self.db["page_size"]), int(self.db["length"])
            size += sum(min(ps, length - i * ps) for i in self.db["pages"])
        return size + sum(e.size for e in self.files)

    def as_dict(self) -> dict[str, Any]:
        return {"db": self.db, "files": [e.as_dict() for e in self.files],
                "deleted": self.deleted}


def write_bundle(out: IO[bytes], header: Header, db_path: Path | None,
                 files: dict[str, Path]) -> int:
    """Write the bundle: header, the listed pages read from `db_path`, then each listed file
    from `files[name]`; the number of bytes written."""
    head = json.dumps(header.as_dict(), separators=(",", ":")).encode()
    out.write(MAGIC + struct.pack(">I", len(head)) + head)
    written = len(MAGIC) + 4 + len(head)
    if header.db and header.db["pages"]:
        assert db_path is not None
        ps = int(header.db["page_size"])
        with open(db_path, "rb") as fh:
            for i in header.db["pages"]:
                fh.seek(i * ps)
                page = fh.read(ps)
                out.write(page)
                written += len(page)
    for e in header.files:
        with open(files[e.name], "rb") as fh:
            left = e.size
            while left:
                buf = fh.read(min(CHUNK, left))
                if not buf:
                    raise ArchiveCorrupt(f"{files[e.name]} shrank while it was read",
                                         "run the migration again")
                out.write(buf)
                left -= len(buf)
                written += len(buf)
    return written


def read_header(fh: IO[bytes], total: int) -> Header:
    """The header of a bundle of `total` bytes, every field checked against the rest."""
    if fh.read(len(MAGIC)) != MAGIC:
        raise DeltaRefused("the delta bundle does not start with its magic line",
                           "run the migration again")
    (n,) = struct.unpack(">I", fh.read(4))
    if n > total:
        raise DeltaRefused("the delta bundle's header is longer than the bundle", "")
    try:
        raw = json.loads(fh.read(n))
    except ValueError:
        raise DeltaRefused("the delta bundle's header is not JSON", "") from None
    db = raw.get("db")
    if db is not None:
        try:
            ps, length = int(db["page_size"]), int(db["length"])
            pages = [int(i) for i in db["pages"]]
        except (KeyError, TypeError, ValueError):
            raise DeltaRefused("the delta bundle's messages.db part is malformed", "") from None
        if ps not in {2 ** k for k in range(9, 17)} or length < 0 or \
                any(i < 0 or i * ps >= length for i in pages) or pages != sorted(set(pages)):
            raise DeltaRefused("the delta bundle's page list does not fit its length", "")
        db = {**db, "page_size": ps, "length": length, "pages": pages}
    header = Header(db, list(entries_from(raw.get("files") or []).values()),
                    [safe_name(n) for n in raw.get("deleted") or []])
    if len(MAGIC) + 4 + n + header.payload_size() != total:
        raise DeltaRefused("the delta bundle's length is not what its header lists",
                           "it was cut short or padded: run the migration again")
    return header


def pages(fh: IO[bytes], db: dict[str, Any]) -> Iterator[tuple[int, bytes]]:
    """(page number, bytes) of the bundle's pages, read after its header."""
    ps, length = db["page_size"], db["length"]
    for i in db["pages"]:
        yield i, fh.read(min(ps, length - i * ps))


def apply_pages(target: Path, fh: IO[bytes], db: dict[str, Any], hashes: list[str]
                ) -> list[str]:
    """Write the bundle's pages into `target` (created if missing), cut it to the new length;
    the page hashes of the result (from `hashes`, the old ones, and the pages written)."""
    ps, length = db["page_size"], db["length"]
    count = -(-length // ps)
    new = (hashes + [""] * count)[:count]
    fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(fd, "r+b") as out:
        for i, page in pages(fh, db):
            out.seek(i * ps)
            out.write(page)
            new[i] = hashlib.blake2b(page, digest_size=HASH_HEX // 2).hexdigest()
        out.truncate(length)
        out.flush()
        os.fsync(out.fileno())
    return new


def staged_path(top: Path, name: str) -> Path:
    """Where file `name` lives under the staging folder `top`; never outside it."""
    path = top / safe_name(name)
    if os.path.commonpath([os.path.abspath(path), os.path.abspath(top)]) != \
            os.path.abspath(top):
        raise DeltaRefused(f"{name!r} resolves outside {top}: refused", "")
    for parent in path.relative_to(top).parents:  # no link planted to lead elsewhere
        if parent.parts and (top / parent).is_symlink():
            raise DeltaRefused(f"{top / parent} is a symbolic link: refused", "")
    return path


def sha256_of(path: Path) -> str:
    with open(path, "rb") as fh:
        return sha256_stream(fh)[1]
