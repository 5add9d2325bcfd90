"""What a PostgreSQL server tells about itself, read-only: identity, tables, the admin's rights.

The migration's preflight reads these on each host (hosts/facts.py) to compare the two.
"""
from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from ...config.settings import DbSpec, Settings
from ...errors import ClawdieError
from . import commands as pg, extensions, roles as pgroles


def _error(exc: BaseException) -> str:
    return exc.message if isinstance(exc, ClawdieError) else f"{type(exc).__name__}: {exc}"


def identity(conn: psycopg.Connection, info: pg.ServerInfo) -> str:
    """Which server this is: its system identifier and when its postmaster started.

    A cluster moved with its jail's dataset keeps the system identifier, so that alone
    cannot tell the old host's server from the new host's copy; the start time does (a
    server reached twice, under any address, shows the same one). The address is no part
    of it: two hosts' db jails may share one private address, and one server may be
    reached under two."""
    started = pg.scalar(conn, "SELECT pg_postmaster_start_time()::text")
    if info.system_identifier:
        return f"{info.system_identifier} started {started}"
    return f"started {started} at {info.address}"


def non_empty_tables(conn: psycopg.Connection) -> int:
    """How many user tables hold a row: EXISTS per table, cheap at any size (unlike count)."""
    return sum(1 for schema, table in pg.user_tables(conn) if pg.scalar(
        conn, sql.SQL("SELECT EXISTS (SELECT 1 FROM {}.{})").format(
            sql.Identifier(schema), sql.Identifier(table))))


def offered(conn: psycopg.Connection) -> dict[str, dict[str, Any]]:
    """Every extension the server could make: its default version, who may make it."""
    return {n: {"version": a.default_version, "superuser": a.superuser, "trusted": a.trusted}
            for n, a in extensions.available(conn, None).items()}


def probe_database(db: DbSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"host": db.host, "port": db.port, "database": db.name,
                           "user": db.user, "login": False}
    try:
        with pg.connect(db) as conn:
            info = pg.server_info(conn)
            out.update(login=True, version=info.version, version_num=info.version_num,
                       identity=identity(conn, info), non_empty_tables=non_empty_tables(conn),
                       size=pg.scalar(conn, "SELECT pg_database_size(current_database())"),
                       extensions=extensions.in_database(conn), offered=offered(conn))
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
            row = conn.execute("SELECT rolsuper OR rolcreaterole, rolsuper OR rolcreatedb, "
                               "rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
            out.update(login=True, version=info.version, version_num=info.version_num,
                       identity=identity(conn, info), create_role=bool(row and row[0]),
                       create_db=bool(row and row[1]), superuser=bool(row and row[2]),
                       offered=offered(conn))
    except (ClawdieError, psycopg.Error) as exc:
        out["error"] = _error(exc)
    return out
