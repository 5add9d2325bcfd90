"""The backup archive: a tar stream through gzip or zstd, written safely and read back safely.

Layout (the runbook's): one top folder `clawdie-backup-DD.mmm.YYYY-HHMM/` holding the items;
manifest.json is the last member, so an archive cut short has no manifest.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from collections.abc import Iterator

from ..errors import ArchiveCorrupt, OutputError

CHUNK = 1 << 20
SUFFIX = {"gzip": ".tar.gz", "zstd": ".tar.zst"}
MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}


# Level 2, measured (BENCHMARKS.md): on dumps full of float text it is both faster and
# smaller than -3..-6 and smaller than gzip -6, and its window needs half the memory of -3.
ZSTD_LEVEL = 2


def compressor(kind: str, threads: int | None = None) -> list[str]:
    threads = threads or os.cpu_count() or 1
    if kind == "zstd":
        return ["zstd", "-q", "-c", f"-{ZSTD_LEVEL}", f"-T{threads}"]
    if shutil.which("pigz"):  # same .gz format, all cores
        return ["pigz", "-c", "-6", "-p", str(threads)]
    return ["gzip", "-c", "-6"]


def decompressor(kind: str) -> list[str]:
    return ["zstd", "-q", "-d", "-c"] if kind == "zstd" else ["gzip", "-d", "-c"]


def detect(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(4)
    for magic, kind in MAGIC.items():
        if head.startswith(magic):
            return kind
    raise ArchiveCorrupt(f"{path} is neither gzip nor zstd (first bytes {head.hex()})",
                         "is this a clawdie-backup archive? was it copied completely?")


class _HashingReader:
    """Reads exactly what tarfile asks for, hashing and counting on the way."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data


@dataclass
class Written:
    path: Path
    size: int
    sha256: str


class ArchiveWriter:
    """Streams members into `<dir>/.<name>.partial` (0600); `commit` fsyncs and renames."""

    def __init__(self, final: Path, top: str, compression: str) -> None:
        self.final = final
        self.top = top
        self.tmp = final.with_name(f".{final.name}.partial")
        try:
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise OutputError(f"cannot create {self.tmp}: {exc.strerror}",
                              "check the output directory exists and is writable") from None
        self.out = os.fdopen(fd, "wb")
        self.sha = hashlib.sha256()
        self.size = 0
        self.error: BaseException | None = None
        self.cmd = compressor(compression)
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()
        # 1 MiB blocks and copies instead of tarfile's 10 KiB / 16 KiB: a hundred times
        # fewer pipe writes and hash updates per GB (BENCHMARKS.md).
        self.tar = tarfile.open(fileobj=self.proc.stdin, mode="w|", format=tarfile.PAX_FORMAT,
                                bufsize=CHUNK)
        self.tar.copybufsize = CHUNK  # type: ignore[attr-defined]  # CPython has it, typeshed not
        self.add_dir("")

    def _pump(self) -> None:
        assert self.proc.stdout
        try:
            while chunk := self.proc.stdout.read(CHUNK):
                self.out.write(chunk)
                self.sha.update(chunk)
                self.size += len(chunk)
        except BaseException as exc:  # surfaced by _check; unblock the writer side
            self.error = exc
            self.proc.kill()

    def _check(self) -> None:
        if self.error is not None:
            exc = self.error
            if isinstance(exc, OSError):
                raise OutputError(f"writing {self.tmp} failed: {exc.strerror}",
                                  "free space in the output directory or pick another "
                                  "with --output") from None
            raise exc

    def _info(self, name: str, size: int = 0, mode: int = 0o644, mtime: float = 0,
              kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
        info = tarfile.TarInfo(f"{self.top}/{name}".rstrip("/"))
        info.size, info.mode, info.mtime, info.type = size, mode, int(mtime), kind
        return info

    def add_dir(self, name: str, mode: int = 0o700) -> None:
        info = self._info(name, mode=mode, mtime=time.time(), kind=tarfile.DIRTYPE)
        self._write(lambda: self.tar.addfile(info))

    def add_file(self, name: str, path: Path, mode: int | None = None) -> dict:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            reader = _HashingReader(fh)
            info = self._info(name, st.st_size, mode if mode is not None else st.st_mode & 0o777,
                              st.st_mtime)
            self._write(lambda: self.tar.addfile(info, reader))
        return {"size": reader.size, "sha256": reader.sha.hexdigest()}

    def add_bytes(self, name: str, data: bytes, mode: int = 0o600) -> dict:
        info = self._info(name, len(data), mode, time.time())
        self._write(lambda: self.tar.addfile(info, io.BytesIO(data)))
        return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    def _write(self, action) -> None:
        try:
            action()
        except (BrokenPipeError, OSError):
            self._check()
            raise
        self._check()

    def commit(self) -> Written:
        self._write(self.tar.close)
        assert self.proc.stdin
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        code = self.proc.wait()
        self.pump.join()
        self._check()
        if code != 0:
            raise OutputError(f"compressor {self.cmd[0]} exited {code}",
                              "is it installed and is there space left?")
        try:
            self.out.flush()
            os.fsync(self.out.fileno())
            self.out.close()
            os.replace(self.tmp, self.final)
            dirfd = os.open(self.final.parent, os.O_RDONLY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
        except OSError as exc:
            raise OutputError(f"finishing {self.final} failed: {exc.strerror}",
                              "free space in the output directory and run the backup again"
                              ) from None
        return Written(self.final, self.size, self.sha.hexdigest())

    def abort(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.pump.join(timeout=5)
        try:
            self.out.close()
        except OSError:
            pass
        self.tmp.unlink(missing_ok=True)


# -- reading ---------------------------------------------------------------------------
class ArchiveReader:
    """A streaming pass over an archive's members (`with ArchiveReader(p) as r: for m, f in r`)."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise ArchiveCorrupt(f"archive not found: {path}", "check the path")
        self.path = path
        self.kind = detect(path)
        self.src = open(path, "rb")
        self.proc = subprocess.Popen(decompressor(self.kind), stdin=self.src,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # Read the decompressor's pipe 1 MiB at a time, not tarfile's 10 KiB records:
        # verify and extract pass over the archive in about 60% of the time.
        self.tar = tarfile.open(fileobj=self.proc.stdout, mode="r|", bufsize=CHUNK)

    def __enter__(self) -> ArchiveReader:
        return self

    def __iter__(self) -> Iterator[tuple[tarfile.TarInfo, IO[bytes] | None]]:
        try:
            for member in self.tar:
                yield member, (self.tar.extractfile(member) if member.isfile() else None)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ArchiveCorrupt(f"{self.path} is damaged or cut short: {exc}",
                                 "use another copy of the archive, or an older backup") from None

    def finish(self) -> None:
        """Drain and check the decompressor: a damaged stream fails here at the latest."""
        assert self.proc.stdout and self.proc.stderr
        while self.proc.stdout.read(CHUNK):
            pass
        err = self.proc.stderr.read().decode(errors="replace").strip()
        if self.proc.wait() != 0:
            raise ArchiveCorrupt(f"{self.path}: {self.kind} reports damage: {err}",
                                 "use another copy of the archive, or an older backup")

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.src.close()


def sha256_stream(fh: IO[bytes]) -> tuple[int, str]:
    sha = hashlib.sha256()
    size = 0
    while chunk := fh.read(CHUNK):
        sha.update(chunk)
        size += len(chunk)
    return size, sha.hexdigest()
