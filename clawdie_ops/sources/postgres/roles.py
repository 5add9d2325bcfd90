"""Roles and databases a restore needs: look them up, create them as admin, drop them again.

Passwords are sent already hashed (SCRAM, computed by libpq on this side), so they appear
neither on a command line nor in the server's statement log.
"""
from __future__ import annotations


import psycopg
from psycopg import sql

from ...config.settings import DbSpec, Settings
from ...errors import DatabaseError


def admin_spec(s: Settings, host: str, port: int) -> DbSpec | None:
    """The admin connection of `clawdie.db_admin` on a server, or None when not configured."""
    a = s.db_admin
    if not a.get("user"):
        return None
    return DbSpec(key="admin", name=str(a.get("dbname") or "postgres"), user=str(a["user"]),
                  password=str(a.get("password") or ""), host=host, port=port)


def existing_roles(conn: psycopg.Connection, names: set[str]) -> set[str]:
    if not names:
        return set()
    rows = conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)",
                        [sorted(names)]).fetchall()
    return {r[0] for r in rows}


def database_exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() \
        is not None


def create_login_role(conn: psycopg.Connection, name: str, password: str) -> None:
    hashed = conn.pgconn.encrypt_password(password.encode(), name.encode(), b"scram-sha-256")
    execute(conn, sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
        sql.Identifier(name), sql.Literal(hashed.decode())), f"create role {name}")


def create_nologin_role(conn: psycopg.Connection, name: str, member: str | None = None) -> None:
    """A role a dump names (as owner or grantee); `member` may then act as it."""
    execute(conn, sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)),
            f"create role {name}")
    if member:
        execute(conn, sql.SQL("GRANT {} TO {}").format(sql.Identifier(name),
                                                       sql.Identifier(member)),
                f"grant {name} to {member}")


def create_database(conn: psycopg.Connection, name: str, owner: str) -> None:
    execute(conn, sql.SQL("CREATE DATABASE {} OWNER {}").format(
        sql.Identifier(name), sql.Identifier(owner)), f"create database {name}")


def drop_database(conn: psycopg.Connection, name: str) -> None:
    force = sql.SQL(" WITH (FORCE)") if conn.info.server_version >= 130000 else sql.SQL("")
    execute(conn, sql.SQL("DROP DATABASE IF EXISTS {}{}").format(sql.Identifier(name), force),
            f"drop database {name}")


def drop_role(conn: psycopg.Connection, name: str) -> None:
    execute(conn, sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)),
            f"drop role {name}")


def execute(conn: psycopg.Connection, stmt: sql.Composable, what: str) -> None:
    try:
        conn.execute(stmt)  # type: ignore[call-overload]  # Composed and SQL alike
    except psycopg.Error as exc:
        where = f"{conn.info.host}:{conn.info.port} as {conn.info.user}"
        raise DatabaseError(f"{what} failed on {where}: {str(exc).strip().splitlines()[0]}",
                            "check that clawdie.db_admin names a role with CREATEROLE and "
                            "CREATEDB (or a superuser)") from None
