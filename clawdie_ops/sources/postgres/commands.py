"""PostgreSQL: the only place that builds pg_dump / psql command lines or opens connections.

Passwords never reach argv: they travel in a 0600 passfile named by PGPASSFILE.
"""
from __future__ import annotations

import os
import re
import secrets
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql

from invoke import Context

from ... import runner
from ...config.settings import DbSpec, Settings
from ...errors import DatabaseError, DatabaseUnreachable, ToolMissing, ToolTooOld


@dataclass(frozen=True)
class ServerInfo:
    version: str  # "15.18"
    version_num: int  # 150018
    system_identifier: str | None
    address: str

    @property
    def major(self) -> int:
        return self.version_num // 10000


def passfile_line(db: DbSpec) -> str:
    """One ~/.pgpass line; ':' and '\\' are escaped with a backslash."""
    def esc(v: object) -> str:
        return str(v).replace("\\", "\\\\").replace(":", "\\:")
    return ":".join(esc(v) for v in (db.host, db.port, db.name, db.user, db.password)) + "\n"


@contextmanager
def passfile(*dbs: DbSpec) -> Iterator[dict[str, str]]:
    """Environment for pg_dump/psql: PGPASSFILE pointing at a private 0600 file."""
    # The pid in the name lets the next run sweep the file of a run killed outright.
    fd, path = tempfile.mkstemp(prefix=f"clawdie-pgpass-{os.getpid()}-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.writelines(passfile_line(db) for db in dbs)
        yield {"PGPASSFILE": path}
    finally:
        os.unlink(path)


def replay_options(s: Settings) -> list[str]:
    """The replaying sessions' settings (PGOPTIONS), each a checked word (settings.py):
    - maintenance_work_mem (clawdie.restore_maintenance_work_mem), so pgvector builds an
      HNSW index in memory instead of row by row on disk;
    - max_parallel_maintenance_workers (clawdie.restore_index_workers), with
      min_parallel_table_scan_size=0: the planner sizes an index build's workers by the
      table's heap, and memories' vectors live in TOAST, so it would give that build none
      (BENCHMARKS.md, restore)."""
    opts = []
    if s.restore_maintenance_work_mem:
        opts.append(f"maintenance_work_mem={s.restore_maintenance_work_mem}")
    if s.restore_index_workers is not None:
        opts.append(f"max_parallel_maintenance_workers={s.restore_index_workers}")
        if s.restore_index_workers:
            opts.append("min_parallel_table_scan_size=0")
    return opts


def replay_env(s: Settings) -> dict[str, str]:
    """Environment for a replaying psql besides PGPASSFILE; none of the server's own."""
    opts = replay_options(s)
    return {"PGOPTIONS": " ".join(f"-c {o}" for o in opts)} if opts else {}


def replay_note(s: Settings) -> str:
    """How the plan shows replay_env()."""
    env = replay_env(s)
    return f"; PGOPTIONS {env['PGOPTIONS']}" if env else ""


def connect(db: DbSpec, **kw: Any) -> psycopg.Connection:
    try:
        return psycopg.connect(**db.conninfo(), **kw)
    except psycopg.OperationalError as exc:
        text = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        where = f"{db.name} at {db.host}:{db.port} as {db.user}"
        if "password authentication failed" in str(exc):
            raise DatabaseUnreachable(
                f"PostgreSQL refused the password for {where}",
                f"check {db.key.upper()}_DB_PASSWORD in .env") from None
        if "does not exist" in str(exc):
            raise DatabaseUnreachable(f"PostgreSQL says: {text} ({where})",
                                      "check the database and user names in .env") from None
        raise DatabaseUnreachable(
            f"cannot reach PostgreSQL for {where}: {text}",
            "is the db jail running (jls) and PostgreSQL up? check WARDEN_DB_IP/DB_PORT") from None


def server_info(conn: psycopg.Connection) -> ServerInfo:
    num = conn.info.server_version
    version = f"{num // 10000}.{num % 10000}"
    ident = None
    try:
        with conn.transaction():
            row = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
            ident = row[0] if row else None
    except psycopg.Error:
        ident = None  # needs a privilege the backup role may lack
    address = f"{conn.info.host}:{conn.info.port}"
    return ServerInfo(version, num, ident, address)


def user_tables(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """(schema, table) of every user table (plain and partitioned), in name order."""
    return conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        " AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2").fetchall()


def scalar(conn: psycopg.Connection, query: sql.Composed | sql.SQL | str,
           params: Sequence[Any] | None = None) -> Any:
    """The first column of the one row a query returns (count, EXISTS, a setting)."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise DatabaseError(f"PostgreSQL returned no row for {query!r}", "")
    return row[0]


def table_counts(conn: psycopg.Connection) -> dict[str, int]:
    """Exact row counts of every user table, in the connection's current transaction."""
    counts = {}
    for schema, table in user_tables(conn):
        q = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema),
                                                        sql.Identifier(table))
        counts[f"{schema}.{table}"] = scalar(conn, q)
    return counts


# -- command lines ---------------------------------------------------------------------
def _conn_args(db: DbSpec) -> list[str]:
    return ["-h", db.host, "-p", str(db.port), "-U", db.user, "--no-password"]


def dbname_arg(name: str) -> str:
    """`--dbname=NAME`, never positional (a name starting with '-' would be an option);
    a name that libpq could read as a connection string goes quoted inside one."""
    if re.fullmatch(r"[A-Za-z0-9_]+", name):
        return f"--dbname={name}"
    return "--dbname=dbname='" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"


def pg_dump_cmd(s: Settings, db: DbSpec, out: Path, snapshot: str | None = None) -> list[str]:
    # --clean --if-exists: the runbook's `psql < dump` replays over an existing database
    # and into an empty one, with ON_ERROR_STOP on.
    args = [s.pg_tool("pg_dump"), "--clean", "--if-exists", *_conn_args(db), "-f", str(out)]
    if snapshot:
        args.append(f"--snapshot={snapshot}")
    return [*args, dbname_arg(db.name)]


def psql_cmd(s: Settings, db: DbSpec, script: Path | list[Path],
             single_transaction: bool = True, first: str = "") -> list[str]:
    """psql running one or more scripts in order (with --single-transaction: all or nothing);
    `first`: one SQL statement run before them (-c), for a caller that must write no file."""
    scripts = script if isinstance(script, list) else [script]
    args = [s.pg_tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", *_conn_args(db),
            dbname_arg(db.name), *(("-c", first) if first else ()),
            *[a for f in scripts for a in ("-f", str(f))]]
    if single_transaction:
        args.insert(3, "--single-transaction")
    return args


def write_restrict(path: Path) -> Path:
    """The 0600 script `\\restrict KEY`, with a fresh random key, that runs before a dump:
    psql then refuses any backslash command in the dump, anywhere on a line, since the dump
    cannot know the key to lift it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"\\restrict {secrets.token_hex(16)}\n")
    return path


_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
CLAWDIE_MAJOR = 18  # a Clawdie host's server: the install hint's version when none is known
# pg_dump writes `\restrict KEY` lines, and psql reads them, from these minor releases on
# (August 2025, CVE-2025-8714); every 18 does. An older psql stops at the first such line.
RESTRICT_SINCE = {13: 22, 14: 19, 15: 14, 16: 10, 17: 6}


def install_hint(s: Settings, major: int | None = None) -> str:
    """How this host installs the PostgreSQL client of a major version (a template)."""
    return s.command("pg_install_hint", major=major or CLAWDIE_MAJOR)


def major_minor(version: str) -> tuple[int, int]:
    """'15.18' -> (15, 18); '18' -> (18, 0)."""
    head, _, tail = str(version).partition(".")
    minor = "".join(ch for ch in tail.split(".")[0] if ch.isdigit())
    return (int(head) if head.isdigit() else 0), (int(minor) if minor else 0)


def knows_restrict(version: str) -> bool:
    """Does pg_dump/psql of this version write/read `\restrict` lines?"""
    major, minor = major_minor(version)
    return major >= 18 or (major in RESTRICT_SINCE and minor >= RESTRICT_SINCE[major])


def check_restrict(s: Settings, what: str, dump_version: str, psql_version: str,
                   where: str) -> None:
    """Refuse a dump whose `\restrict` lines the psql that would replay it cannot read."""
    if not knows_restrict(dump_version) or knows_restrict(psql_version):
        return
    major = major_minor(psql_version)[0]
    fix = (f"psql {major}.{RESTRICT_SINCE[major]} or newer" if major in RESTRICT_SINCE
           else f"psql {CLAWDIE_MAJOR}")
    raise ToolTooOld(
        f"{what} was written by pg_dump {dump_version}, which writes \\restrict lines that "
        f"psql {psql_version} {where} cannot read (psql reads them from the minor releases "
        "of August 2025 on: 13.22, 14.19, 15.14, 16.10, 17.6, every 18)",
        f"install {fix} ({install_hint(s, major)}) or set clawdie.pg_bin to a newer client; "
        "nothing was changed")


def client_version(c: Context, s: Settings, tool: str = "pg_dump",
                   major: int | None = None) -> tuple[int, str]:
    """(major, 'major.minor') of pg_dump/psql on the context's host; `major`: the server's,
    for the install hint when the tool is missing."""
    res = runner.run(c, [s.pg_tool(tool), "--version"])
    if res.exited != 0:
        hint = install_hint(s, major)
        raise ToolMissing(f"{tool} not found ({s.pg_tool(tool)}): {runner.tail(res.stderr)}",
                          f"install the PostgreSQL client: {hint}")
    m = _VERSION.search(res.stdout)
    if not m:
        raise ToolMissing(f"cannot read the version of {tool}: {res.stdout.strip()!r}",
                          "check clawdie.pg_bin")
    return int(m.group(1)), f"{m.group(1)}.{m.group(2) or 0}"


def check_dump_compatible(s: Settings, dump_major: int, dump_version: str,
                          server: ServerInfo) -> None:
    if dump_major < server.major:
        raise ToolTooOld(
            f"pg_dump {dump_version} is older than the PostgreSQL {server.version} server "
            f"at {server.address}: it would refuse to dump it",
            f"install a pg_dump of version {server.major} or newer "
            f"(e.g. {install_hint(s, server.major)}) or set clawdie.pg_bin")


def run_checked(c: Context, cmd: list[str], env: dict[str, str], what: str) -> None:
    runner.run(c, cmd, env=env, check=True, what=what, error=DatabaseError,
               hint="see the PostgreSQL message above; nothing was kept from this step")
