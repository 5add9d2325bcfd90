"""Copy one file between hosts with resume and checksum: the archive's trip to the new host.

The bytes go over SFTP (a local file on the operator's side); the destination is written as
NAME.partial and renamed only after the destination host itself computed the sha256 and
it matched. A dropped connection is retried on a fresh connection, resuming from the size
the partial file reached; a partial file whose checksum fails is discarded and sent again.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol
from collections.abc import Callable

import paramiko

from ..archive.writer import sha256_stream
from ..errors import ArchiveCorrupt, HostError

CHUNK = 1 << 20
NETWORK_ERRORS = (OSError, EOFError, paramiko.SSHException, HostError)


class Files(Protocol):
    label: str

    def size(self, path: str) -> int | None: ...
    def open_read(self, path: str, offset: int) -> IO[bytes]: ...
    def open_write(self, path: str, offset: int) -> IO[bytes]: ...
    def rename(self, src: str, dst: str) -> None: ...
    def remove(self, path: str) -> None: ...
    def reset(self) -> None: ...


class LocalFiles:
    """Files on the operator's machine."""

    def __init__(self, label: str = "this machine") -> None:
        self.label = label

    def size(self, path: str) -> int | None:
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            return None

    def open_read(self, path: str, offset: int) -> IO[bytes]:
        fh = open(path, "rb")
        fh.seek(offset)
        return fh

    def open_write(self, path: str, offset: int) -> IO[bytes]:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | (0 if offset else os.O_TRUNC), 0o600)
        fh = os.fdopen(fd, "wb")
        fh.seek(offset)
        return fh

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def remove(self, path: str) -> None:
        Path(path).unlink(missing_ok=True)

    def reset(self) -> None:
        pass


class SftpFiles:
    """Files on another host over SFTP; `connect` makes a fresh opened Connection."""

    def __init__(self, connect: Callable[[], Any], label: str) -> None:
        self.connect = connect
        self.label = label
        self._conn: Any = None
        self._sftp: paramiko.SFTPClient | None = None

    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._conn = self.connect()
            self._sftp = self._conn.sftp()
        return self._sftp

    def size(self, path: str) -> int | None:
        try:
            return self.sftp().stat(path).st_size
        except FileNotFoundError:
            return None

    def open_read(self, path: str, offset: int) -> IO[bytes]:
        fh = self.sftp().open(path, "rb")
        fh.seek(offset)
        fh.prefetch()
        return fh

    def open_write(self, path: str, offset: int) -> IO[bytes]:
        fh = self.sftp().open(path, "r+b" if offset else "wb")
        if not offset:
            self.sftp().chmod(path, 0o600)
        fh.seek(offset)
        fh.set_pipelined(True)
        return fh

    def rename(self, src: str, dst: str) -> None:
        self.sftp().posix_rename(src, dst)

    def remove(self, path: str) -> None:
        try:
            self.sftp().remove(path)
        except FileNotFoundError:
            pass

    def reset(self) -> None:
        conn, self._conn, self._sftp = self._conn, None, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a dead connection may fail to close
                pass


@dataclass
class CopyResult:
    source: str
    dest: str
    size: int
    sha256: str
    attempts: int = 0
    resumed_from: list[int] = field(default_factory=list)
    bytes_sent: int = 0
    seconds: float = 0.0
    already_there: bool = False
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def copy(src: Files, src_path: str, dst: Files, dst_path: str, *, size: int, sha256: str,
         verify: Callable[[str], tuple[str, int]], retries: int = 5, backoff_s: float = 1.0,
         discard: tuple[str, ...] = (), on_retry: Callable[[int, str], None] | None = None,
         sleep: Callable[[float], None] = time.sleep) -> CopyResult:
    """Copy, resume on a dropped connection, verify on arrival; raise HostError if it cannot.

    `discard`: stale files on the destination (partial copies of an older archive) removed
    first, inside the retried attempts so a flaky link does not leave them behind."""
    started = time.monotonic()
    partial = dst_path + ".partial"
    result = CopyResult(f"{src.label}:{src_path}", f"{dst.label}:{dst_path}", size, sha256)
    for attempt in range(1, max(1, retries) + 1):
        result.attempts = attempt
        try:
            for stale in discard:
                dst.remove(stale)
            if attempt == 1 and dst.size(dst_path) == size and verify(dst_path) == (sha256, size):
                result.already_there = True  # an earlier run got this far
                break
            have = dst.size(partial) or 0
            if have > size:
                dst.remove(partial)
                have = 0
            if have:
                result.resumed_from.append(have)
            if have < size:
                with src.open_read(src_path, have) as fi, dst.open_write(partial, have) as fo:
                    while True:
                        buf = fi.read(CHUNK)
                        if not buf:
                            break
                        fo.write(buf)
                        result.bytes_sent += len(buf)
            digest, got = verify(partial)
            if (digest, got) != (sha256, size):
                dst.remove(partial)  # a damaged prefix cannot be resumed: send it all again
                raise ArchiveCorrupt(f"sha256 on arrival {digest[:16]}… ({got} bytes) is not "
                                       f"the archive's {sha256[:16]}… ({size} bytes)")
            dst.rename(partial, dst_path)
            break
        except (*NETWORK_ERRORS, ArchiveCorrupt) as exc:
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            result.errors.append(f"attempt {attempt}: {text}")
            dst.reset()
            src.reset()
            if attempt >= retries:
                raise HostError(
                    f"copying {src_path} to {dst.label}:{dst_path} failed after {attempt} "
                    f"attempts: {text}",
                    "check the link between the hosts; running the same command again "
                    f"resumes from what arrived ({partial})") from None
            if on_retry:
                on_retry(attempt, text)
            sleep(backoff_s * 2 ** (attempt - 1))
    result.seconds = round(time.monotonic() - started, 3)
    return result


def local_sha256(path: str) -> tuple[str, int]:
    with open(path, "rb") as fh:
        size, digest = sha256_stream(fh)
    return digest, size


def free_bytes(path: Path) -> int:
    """Free space where `path` would be written (its nearest existing parent)."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free
