"""PostgreSQL: the only place that builds pg_dump / psql command lines or opens connections.

Passwords never reach argv: they travel in a 0600 passfile named by PGPASSFILE.
"""
from __future__ import annotations

import os
import re
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
    fd, path = tempfile.mkstemp(prefix="clawdie-pgpass-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.writelines(passfile_line(db) for db in dbs)
        yield {"PGPASSFILE": path}
    finally:
        os.unlink(path)


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


def pg_dump_cmd(s: Settings, db: DbSpec, out: Path, snapshot: str | None = None) -> list[str]:
    # --clean --if-exists: the runbook's `psql < dump` replays over an existing database
    # and into an empty one, with ON_ERROR_STOP on.
    args = [s.pg_tool("pg_dump"), "--clean", "--if-exists", *_conn_args(db), "-f", str(out)]
    if snapshot:
        args.append(f"--snapshot={snapshot}")
    return [*args, db.name]


def psql_cmd(s: Settings, db: DbSpec, script: Path | list[Path],
             single_transaction: bool = True, first: str = "") -> list[str]:
    """psql running one or more scripts in order (with --single-transaction: all or nothing);
    `first`: one SQL statement run before them (-c), for a caller that must write no file."""
    scripts = script if isinstance(script, list) else [script]
    args = [s.pg_tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", *_conn_args(db),
            "-d", db.name, *(("-c", first) if first else ()),
            *[a for f in scripts for a in ("-f", str(f))]]
    if single_transaction:
        args.insert(3, "--single-transaction")
    return args


_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


def client_version(c: Context, s: Settings, tool: str = "pg_dump") -> tuple[int, str]:
    """(major, 'major.minor') of pg_dump/psql on the context's host."""
    res = runner.run(c, [s.pg_tool(tool), "--version"])
    if res.exited != 0:
        hint = s.command("pg_install_hint")
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
            f"(e.g. {s.command('pg_install_hint')}) or set clawdie.pg_bin")


def run_checked(c: Context, cmd: list[str], env: dict[str, str], what: str) -> None:
    runner.run(c, cmd, env=env, check=True, what=what, error=DatabaseError,
               hint="see the PostgreSQL message above; nothing was kept from this step")
