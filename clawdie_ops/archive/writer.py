"""The backup archive: a tar stream through gzip or zstd, written safely and read back safely.

Layout (the runbook's): one top folder `clawdie-backup-DD.mmm.YYYY-HHMM/` holding the items;
manifest.json is the last member, so an archive cut short has no manifest.
"""
from __future__ import annotations

import errno
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
from typing import IO, Any
from collections.abc import Callable, Iterator

from . import encryption
from ..errors import ArchiveCorrupt, OutputError
from ..lifeline import popen

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


def _encrypted(path: Path) -> bool:
    with open(path, "rb") as fh:
        return encryption.is_encrypted(fh.read(len(encryption.MAGIC)))


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

    def __init__(self, final: Path, top: str, compression: str,
                 encrypt: list[str] | None = None) -> None:
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
        self.proc = popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        # Encryption is one more process in the pipe: compressed bytes go straight into
        # age, and only ciphertext reaches the disk.
        self.enc: subprocess.Popen | None = None
        if encrypt:
            assert self.proc.stdout
            self.enc = popen(encrypt, stdin=self.proc.stdout, stdout=subprocess.PIPE)
            self.proc.stdout.close()
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()
        # 1 MiB blocks and copies instead of tarfile's 10 KiB / 16 KiB: a hundred times
        # fewer pipe writes and hash updates per GB (BENCHMARKS.md).
        self.tar = tarfile.open(fileobj=self.proc.stdin, mode="w|", format=tarfile.PAX_FORMAT,
                                bufsize=CHUNK)
        self.tar.copybufsize = CHUNK  # type: ignore[attr-defined]  # CPython has it, typeshed not
        self.add_dir("")

    def _pump(self) -> None:
        source = self.enc.stdout if self.enc is not None else self.proc.stdout
        assert source
        try:
            while chunk := source.read(CHUNK):
                self.out.write(chunk)
                self.sha.update(chunk)
                self.size += len(chunk)
        except BaseException as exc:  # surfaced by _check; unblock the writer side
            self.error = exc
            self.proc.kill()
            if self.enc is not None:
                self.enc.kill()

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
        enc_code = self.enc.wait() if self.enc is not None else 0
        self.pump.join()
        self._check()
        if code != 0:
            raise OutputError(f"compressor {self.cmd[0]} exited {code}",
                              "is it installed and is there space left?")
        if enc_code != 0:
            raise OutputError(f"age exited {enc_code} while encrypting {self.final.name}",
                              "check clawdie.encryption.recipients (age's message is above)")
        try:
            self.out.flush()
            os.fsync(self.out.fileno())
            self.out.close()
            self.final = publish(self.tmp, self.final)
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
        for proc in (self.proc, self.enc):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        self.pump.join(timeout=5)
        try:
            self.out.close()
        except OSError:
            pass
        self.tmp.unlink(missing_ok=True)


def _numbered(final: Path, n: int) -> Path:
    stem, dot, rest = final.name.partition(".tar.")
    return final.with_name(f"{stem}-{n}{dot}{rest}")


def publish(tmp: Path, final: Path) -> Path:
    """Give `tmp` the name `final`, or `final` numbered -2, -3, ... when that is taken: an
    archive never replaces another. A hard link cannot replace; where the file system has
    none, a rename after checking (the backup folder's lock keeps other backups out)."""
    for n in range(1, 1000):
        dest = final if n == 1 else _numbered(final, n)
        try:
            os.link(tmp, dest)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            if dest.exists() or dest.is_symlink():
                continue
            os.rename(tmp, dest)
            return dest
        os.unlink(tmp)
        return dest
    raise OutputError(f"no free name for {final}", "move older archives away")


# -- reading ---------------------------------------------------------------------------
# Our own extended headers hold a path and a few numbers; tarfile would read whatever
# size a header declares into memory before looking at it.
MAX_EXTENDED_HEADER = 256 << 10
_EXTENDED = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
             tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)


class ExtendedHeaderTooLarge(tarfile.HeaderError):
    """An extended (PAX / GNU long name) header larger than any clawdie-ops writes."""


class CappedTarInfo(tarfile.TarInfo):
    """TarInfo refusing an extended header over MAX_EXTENDED_HEADER before reading it, and
    sparse members (whose maps tarfile would also read whole into memory) outright."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED and self.size > MAX_EXTENDED_HEADER:
            raise ExtendedHeaderTooLarge(
                f"an extended tar header declares {self.size} bytes (at most "
                f"{MAX_EXTENDED_HEADER} are accepted)")
        return super()._proc_member(tarfile_)  # type: ignore[misc]

    def _no_sparse(self, *args: object) -> None:
        raise ExtendedHeaderTooLarge(f"member {self.name!r} is a sparse file "
                                     "(clawdie-ops archives hold none)")

    _proc_sparse = _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _no_sparse


class ArchiveReader:
    """A streaming pass over an archive's members (`with ArchiveReader(p) as r: for m, f in r`).

    `decrypt(path)` gives the command that decrypts an encrypted archive (asked only when
    the archive is one)."""

    def __init__(self, path: Path,
                 decrypt: Callable[[Path], list[str]] | None = None) -> None:
        if not path.is_file():
            raise ArchiveCorrupt(f"archive not found: {path}", "check the path")
        self.path = path
        self.encrypted = _encrypted(path)
        self.dec: subprocess.Popen | None = None
        if self.encrypted:
            if decrypt is None:
                raise ArchiveCorrupt(f"{path} is encrypted (age)",
                                     "set clawdie.encryption.identity to decrypt it")
            cmd = decrypt(path)
            self.kind = encryption.inner_kind(path.name)
        else:
            self.kind = detect(path)
        self.src = open(path, "rb")
        if self.encrypted:
            self.dec = popen(cmd, stdin=self.src, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
            feed: Any = self.dec.stdout
        else:
            feed = self.src
        self.proc = popen(decompressor(self.kind), stdin=feed,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if self.dec is not None and self.dec.stdout is not None:
            self.dec.stdout.close()  # the decompressor holds it now
        # Read the decompressor's pipe 1 MiB at a time, not tarfile's 10 KiB records:
        # verify and extract pass over the archive in about 60% of the time.
        try:  # tarfile reads the first header here already
            self.tar = tarfile.open(fileobj=self.proc.stdout, mode="r|", bufsize=CHUNK,
                                    tarinfo=CappedTarInfo)
        except (tarfile.TarError, EOFError, OSError) as exc:
            try:
                self.check_decrypt()  # a wrong identity: age's own message, not "empty"
                raise ArchiveCorrupt(f"{path} is damaged or not a tar archive at its start: "
                                     f"{exc}", "use another copy of the archive, or an older "
                                     "backup") from None
            finally:
                self.__exit__()

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
        code = self.proc.wait()
        self.check_decrypt()
        if code != 0:
            raise ArchiveCorrupt(f"{self.path}: {self.kind} reports damage: {err}",
                                 "use another copy of the archive, or an older backup")

    def check_decrypt(self, timeout: float = 10) -> None:
        """After the stream ended or broke: did age fail? (wrong identity, damaged file)"""
        if self.dec is None:
            return
        try:
            code = self.dec.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return  # still running: the stream broke on the reading side
        if code != 0:
            assert self.dec.stderr
            err = self.dec.stderr.read().decode(errors="replace").strip()
            wrong = "no identity matched" in err
            said = next((line for line in err.splitlines() if "error" in line),
                        err.splitlines()[0] if err else f"exit {code}")
            raise ArchiveCorrupt(
                f"{self.path}: age cannot decrypt it: {said.removeprefix('age: ')}",
                "the identity in clawdie.encryption.identity is not one of its recipients"
                if wrong else "the archive is damaged; use another copy, or an older backup")

    def __exit__(self, *exc: object) -> None:
        for proc in (self.proc, self.dec):
            if proc is None:
                continue
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self.src.close()


def sha256_stream(fh: IO[bytes]) -> tuple[int, str]:
    sha = hashlib.sha256()
    size = 0
    while chunk := fh.read(CHUNK):
        sha.update(chunk)
        size += len(chunk)
    return size, sha.hexdigest()
