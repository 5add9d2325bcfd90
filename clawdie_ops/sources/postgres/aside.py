"""A database set aside under another name: restore's pre-restore copy without a dump.

With clawdie.db_admin, restore renames each live database aside and creates an empty twin
with everything pg_dump (without --create) leaves out: owner, encoding, locale,
tablespace, connection limit, privileges, settings and comment. A rollback drops the twin
and renames the original back.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from .roles import drop_database, execute

# Settings whose stored value is already a quoted list (pg_dumpall's GUC_LIST_QUOTE set).
LIST_SETTINGS = {"search_path", "temp_tablespaces", "session_preload_libraries",
                 "shared_preload_libraries", "local_preload_libraries",
                 "unix_socket_directories"}
_SETTING = re.compile(r"^[A-Za-z_][A-Za-z0-9_.$]*$")
NAME_MAX = 63  # PostgreSQL's identifier limit (NAMEDATALEN - 1), in bytes


@dataclass
class DbShape:
    """What an empty twin of a database needs to match it: everything but its content."""

    owner: str
    encoding: str
    collate: str
    ctype: str
    tablespace: str
    conn_limit: int
    icu_locale: str | None = None
    acl: list[tuple[str | None, str, bool]] | None = None  # (grantee or PUBLIC, privilege, ...)
    settings: list[tuple[str | None, str]] = field(default_factory=list)  # (role, "name=value")
    comment: str | None = None


def aside_name(name: str, stamp: str) -> str:
    """`memory_db_pre_restore_20261125-132005`, shortened to fit PostgreSQL's 63 bytes."""
    suffix = f"_pre_restore_{stamp}"
    head = name.encode()[:NAME_MAX - len(suffix.encode())].decode(errors="ignore")
    return head + suffix


def why_not_aside(conn: psycopg.Connection, name: str) -> str | None:
    """None when this connection may rename `name` aside and create its twin; else why not."""
    if conn.info.dbname == name:
        return f"clawdie.db_admin connects to {name} itself (set its dbname to postgres)"
    row = conn.execute(
        "SELECT r.rolsuper, r.rolcreatedb, pg_has_role(current_user, d.datdba, 'MEMBER'),"
        " pg_has_role(current_user, 'pg_signal_backend', 'MEMBER')"
        " FROM pg_roles r, pg_database d WHERE r.rolname = current_user AND d.datname = %s",
        [name]).fetchone()
    if row is None:
        return f"database {name} not found"
    superuser, createdb, owner_member, signal = row
    if not superuser and not (createdb and owner_member and signal):
        return (f"{conn.info.user} is neither a superuser nor CREATEDB, a member of {name}'s "
                "owner and of pg_signal_backend")
    return None


def database_shape(conn: psycopg.Connection, name: str) -> DbShape | str:
    """The shape of database `name`, or why an empty twin could not match it."""
    row = conn.execute(
        "SELECT d.oid, pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding),"
        " d.datcollate, d.datctype, t.spcname, d.datconnlimit, d.datacl IS NULL,"
        " shobj_description(d.oid, 'pg_database')"
        " FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace"
        " WHERE d.datname = %s", [name]).fetchone()
    if row is None:
        return f"database {name} not found"
    oid, owner, enc, collate, ctype, space, limit, default_acl, comment = row
    shape = DbShape(owner, enc, collate, ctype, space, limit, comment=comment)
    version = conn.info.server_version
    if version >= 150000:
        column = "datlocale" if version >= 170000 else "daticulocale"
        found = conn.execute(
            sql.SQL("SELECT datlocprovider::text, {} FROM pg_database WHERE oid = %s").format(
                sql.Identifier(column)), [oid]).fetchone()
        provider, locale = found if found is not None else ("", None)
        if provider == "i":
            shape.icu_locale = locale
        elif provider != "c":
            return f"its locale provider {provider!r} is not one restore recreates"
    if not default_acl:
        shape.acl = [(grantee, priv, grantable) for grantee, priv, grantable in conn.execute(
            "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END,"
            " a.privilege_type, a.is_grantable FROM pg_database d, aclexplode(d.datacl) a"
            " WHERE d.oid = %s", [oid])]
    shape.settings = [(role, item) for role, item in conn.execute(
        "SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END,"
        " unnest(s.setconfig) FROM pg_db_role_setting s WHERE s.setdatabase = %s", [oid])]
    for _, item in shape.settings:
        if not _SETTING.match(item.split("=", 1)[0]):
            return f"its setting {item.split('=', 1)[0]!r} has an unusual name"
    return shape


def create_twin(conn: psycopg.Connection, name: str, shape: DbShape) -> None:
    """An empty database `name` with the owner, encoding, locale, tablespace, connection
    limit, privileges, settings and comment of `shape` (what pg_dump without --create
    leaves out, so the dump replayed into it gives the database as it was)."""
    opts = [sql.SQL("OWNER {}").format(sql.Identifier(shape.owner)),
            sql.SQL("TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
                sql.Literal(shape.encoding), sql.Literal(shape.collate),
                sql.Literal(shape.ctype)),
            sql.SQL("TABLESPACE {} CONNECTION LIMIT {}").format(
                sql.Identifier(shape.tablespace), sql.Literal(shape.conn_limit))]
    if shape.icu_locale:
        opts.append(sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(
            sql.Literal(shape.icu_locale)))
    db = sql.Identifier(name)
    execute(conn, sql.SQL("CREATE DATABASE {} {}").format(db, sql.SQL(" ").join(opts)),
            f"create database {name}")
    statements: list[sql.Composable] = []
    if shape.acl is not None:
        statements.append(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC, {}").format(
            db, sql.Identifier(shape.owner)))
        for grantee, priv, grantable in shape.acl:
            statements.append(sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                sql.SQL(priv), db, sql.Identifier(grantee) if grantee else sql.SQL("PUBLIC"),
                sql.SQL(" WITH GRANT OPTION" if grantable else "")))
    for role, item in shape.settings:
        key, value = item.split("=", 1)
        val = sql.SQL(value) if key in LIST_SETTINGS else sql.Literal(value)
        target = (sql.SQL("ROLE {} IN DATABASE {}").format(sql.Identifier(role), db) if role
                  else sql.SQL("DATABASE {}").format(db))
        statements.append(sql.SQL("ALTER {} SET {} = {}").format(target, sql.SQL(key), val))
    if shape.comment is not None:
        statements.append(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            db, sql.Literal(shape.comment)))
    for stmt in statements:
        execute(conn, stmt, f"give database {name} the privileges and settings it had")


def rename_database(conn: psycopg.Connection, name: str, new: str, wait: float = 10) -> None:
    """Rename a database, ending its sessions first. Another may connect in between: try
    again until `wait` seconds have passed."""
    stmt = sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(name),
                                                             sql.Identifier(new))
    deadline = time.monotonic() + wait
    while True:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                     " WHERE datname = %s AND pid <> pg_backend_pid()", [name])
        try:
            conn.execute(stmt)
            return
        except psycopg.errors.ObjectInUse:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)  # a terminated backend takes a moment to exit
        except psycopg.Error:
            break
    execute(conn, stmt, f"rename database {name} to {new}")  # raises with the server's words


def set_aside(conn: psycopg.Connection, name: str, aside: str, shape: DbShape) -> None:
    """Rename `name` to `aside` and create an empty twin as `name`; all or nothing."""
    rename_database(conn, name, aside)
    try:
        create_twin(conn, name, shape)
    except BaseException:
        drop_database(conn, name)
        rename_database(conn, aside, name)
        raise


def put_back(conn: psycopg.Connection, name: str, aside: str) -> None:
    """Undo set_aside: drop what is now `name` and rename `aside` back to it."""
    drop_database(conn, name)
    rename_database(conn, aside, name)
