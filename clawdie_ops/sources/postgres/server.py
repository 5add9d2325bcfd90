"""What a PostgreSQL server tells about itself, read-only: identity, tables, the admin's rights.

The migration's preflight reads these on each host (hosts/facts.py) to compare the two.
"""
from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from ...config.settings import DbSpec, Settings
from ...errors import ClawdieError
from . import commands as pg, roles as pgroles


def _error(exc: BaseException) -> str:
    return exc.message if isinstance(exc, ClawdieError) else f"{type(exc).__name__}: {exc}"


def identity(conn: psycopg.Connection, info: pg.ServerInfo) -> str:
    """Which server this is: its system identifier, else its start time and address."""
    if info.system_identifier:
        return info.system_identifier
    started = pg.scalar(conn, "SELECT pg_postmaster_start_time()::text")
    return f"started {started} at {info.address}"


def non_empty_tables(conn: psycopg.Connection) -> int:
    """How many user tables hold a row: EXISTS per table, cheap at any size (unlike count)."""
    return sum(1 for schema, table in pg.user_tables(conn) if pg.scalar(
        conn, sql.SQL("SELECT EXISTS (SELECT 1 FROM {}.{})").format(
            sql.Identifier(schema), sql.Identifier(table))))


def probe_database(db: DbSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"host": db.host, "port": db.port, "database": db.name,
                           "user": db.user, "login": False}
    try:
        with pg.connect(db) as conn:
            info = pg.server_info(conn)
            out.update(login=True, version=info.version, version_num=info.version_num,
                       identity=identity(conn, info), non_empty_tables=non_empty_tables(conn),
                       size=pg.scalar(conn, "SELECT pg_database_size(current_database())"))
    except (ClawdieError, psycopg.Error) as exc:
        out["error"] = _error(exc)
    return out


def probe_admin(s: Settings) -> dict[str, Any]:
    spec = pgroles.admin_spec(s, s.db_host, s.db_port)
    out: dict[str, Any] = {"configured": spec is not None, "login": False}
    if spec is None:
        return out
    try:
        with pg.connect(spec) as conn:
            info = pg.server_info(conn)
            row = conn.execute("SELECT rolsuper OR rolcreaterole, rolsuper OR rolcreatedb "
                               "FROM pg_roles WHERE rolname = current_user").fetchone()
            out.update(login=True, version=info.version, version_num=info.version_num,
                       identity=identity(conn, info), create_role=bool(row and row[0]),
                       create_db=bool(row and row[1]))
    except (ClawdieError, psycopg.Error) as exc:
        out["error"] = _error(exc)
    return out
