"""A throwaway PostgreSQL cluster for the restore drill: initdb and pg_ctl in a sandbox folder,
reachable only through a Unix socket there, run as the postgres user when the tool is root."""
from __future__ import annotations

import os
import pwd
import shlex
from pathlib import Path

from invoke import Context

from ... import runner
from ...config.settings import DbSpec, Settings
from ...errors import ConfigError, DatabaseError, ToolMissing
from ...runner import Shell

BOOTSTRAP_USER = "clawdie_drill"


def find_server_bin(c: Context, s: Settings, explicit: str) -> Path:
    """initdb, pg_ctl and psql of one version: the given folder, PATH, or the newest known."""
    if explicit:
        path = Path(explicit)
    else:
        res = runner.run(c, Shell("command -v initdb"))
        if res.exited == 0 and res.stdout.strip():
            path = Path(res.stdout.strip()).resolve().parent  # a symlink to the real bin folder
        else:
            # Debian keeps server binaries off PATH, one folder per major version.
            known = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                           key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
            known += [p for p in (Path("/usr/local/bin/initdb"),) if p.exists()]
            if not known:
                raise ToolMissing("initdb not found (PATH, /usr/lib/postgresql/*/bin, "
                                  "/usr/local/bin)",
                                  "install the PostgreSQL server package, set "
                                  "clawdie.drill.pg_bin, or give a server with --pg-host")
            path = known[-1].parent
    for tool in ("initdb", "pg_ctl", "psql"):
        if not (path / tool).exists():
            raise ToolMissing(f"{tool} not found in {path}",
                              "point --pg-bin / clawdie.drill.pg_bin at a PostgreSQL bin folder")
    return path


def reachable(path: Path, uid: int, gid: int) -> bool:
    """Can the user (uid, gid) walk down to `path`? (root can; the postgres user may not)."""
    for d in [path, *path.parents]:
        st = d.stat()
        bit = 0o100 if st.st_uid == uid else (0o010 if st.st_gid == gid else 0o001)
        if not st.st_mode & bit:
            return False
    return True


class Throwaway:
    """A PostgreSQL cluster in the sandbox: a Unix socket only, trust for its owner, no TCP."""

    def __init__(self, c: Context, s: Settings, bindir: Path, base: Path, os_user: str) -> None:
        self.c, self.s, self.bindir, self.base = c, s, bindir, base
        self.data = base / "data"
        self.sock = base / "sock"
        self.port = 5432  # only names the socket file in our own folder
        self.as_root = os.geteuid() == 0
        self.os_user = os_user
        self.started = False

    def _run(self, *args: str) -> None:
        inner = f"cd {shlex.quote(str(self.base))} && {runner.line(args)}"
        cmd = self.s.command("as_postgres", user=self.os_user, cmd=inner) if self.as_root \
            else inner
        res = runner.run(self.c, Shell(cmd))
        if res.exited != 0:
            log = self.base / "server.log"
            server_log = log.read_text(errors="replace") if log.exists() else ""
            raise runner.failure(res, Path(args[0]).name, "check clawdie.drill.pg_bin and "
                                 "clawdie.drill.os_user", error=DatabaseError,
                                 detail=f"{res.stderr or res.stdout}\n{server_log}")

    def start(self) -> DbSpec:
        self.base.mkdir(mode=0o700)
        self.sock.mkdir(mode=0o700)
        if self.as_root:
            pw = self.user()
            if not reachable(self.base.parent, pw.pw_uid, pw.pw_gid):
                raise ConfigError(f"the {self.os_user} user cannot reach {self.base.parent}",
                                  "set TMPDIR to a folder it can reach (e.g. /tmp)")
            for d in (self.base, self.sock):
                os.chown(d, pw.pw_uid, pw.pw_gid)
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", BOOTSTRAP_USER,
                  "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
        opts = (f"-c listen_addresses='' -c port={self.port} "
                f"-c unix_socket_directories={shlex.quote(str(self.sock))} -c fsync=off "
                "-c full_page_writes=off -c synchronous_commit=off")
        self.started = True
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                  str(self.base / "server.log"), "-o", opts, "-w", "-t", "60", "start")
        return DbSpec(key="drill", name="postgres", user=BOOTSTRAP_USER, password="",
                      host=str(self.sock), port=self.port)

    def user(self) -> pwd.struct_passwd:
        return self.user_of(self.os_user)

    @staticmethod
    def user_of(name: str) -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            raise ConfigError(f"user {name!r} does not exist to run the drill's "
                              "PostgreSQL", "set clawdie.drill.os_user") from None

    def stop(self) -> None:
        if self.started and (self.data / "postmaster.pid").exists():
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                      "-w", "stop")
        self.started = False
