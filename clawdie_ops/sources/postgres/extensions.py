"""Extensions a database uses (pgvector): recorded at backup, checked and made before a replay.

A plain dump makes its extensions itself (`CREATE EXTENSION IF NOT EXISTS vector`, `COMMENT
ON EXTENSION`, and with --clean `DROP EXTENSION IF EXISTS`). Replayed as the app user, those
fail: Clawdie's setup creates pgvector as the superuser (so the app user does not own it),
and pgvector is not a trusted extension (only a superuser may create it). So restore and
drill create each missing extension as db_admin before the replay, and the replay skips the
dump's extension statements (dumpfile.Scanner).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from .roles import execute

BUILTIN = {"plpgsql"}  # in every database from its template: never recorded, never made


def in_database(conn: psycopg.Connection) -> list[dict[str, str]]:
    """The extensions installed in the connection's database: name, version, schema."""
    rows = conn.execute(
        "SELECT e.extname, e.extversion, n.nspname FROM pg_extension e"
        " JOIN pg_namespace n ON n.oid = e.extnamespace ORDER BY 1").fetchall()
    return [{"name": name, "version": version, "schema": schema}
            for name, version, schema in rows if name not in BUILTIN]


@dataclass(frozen=True)
class Available:
    """What a server offers of one extension (pg_available_extension_versions)."""

    name: str
    default_version: str
    superuser: bool  # creating its default version needs a superuser ...
    trusted: bool  # ... unless it is trusted (then a database owner with CREATE may)


def available(conn: psycopg.Connection, names: set[str] | None) -> dict[str, Available]:
    """What the server offers of `names` (None: of every extension it has)."""
    if names is not None and not names:
        return {}
    query = ("SELECT a.name, a.default_version, v.superuser, v.trusted"
             " FROM pg_available_extensions a JOIN pg_available_extension_versions v"
             " ON v.name = a.name AND v.version = a.default_version")
    rows = conn.execute(query + (" WHERE a.name = ANY(%s)" if names is not None else ""),
                        [sorted(names)] if names is not None else None).fetchall()
    return {r[0]: Available(r[0], r[1], bool(r[2]), bool(r[3])) for r in rows}


def wanted(entry: dict[str, Any], from_dump: set[str] | None) -> list[dict[str, str]]:
    """What a dump needs: the manifest's record (name, version, schema), plus any extension
    its CREATE EXTENSION lines make that the manifest does not name (an older archive)."""
    out = [dict(e) for e in entry.get("extensions") or [] if e.get("name") not in BUILTIN]
    named = {e["name"] for e in out}
    out += [{"name": n, "version": "", "schema": "public"}
            for n in sorted((from_dump or set()) - named - BUILTIN)]
    return out


def unavailable(need: list[dict[str, str]], offer: dict[str, Available]) -> list[str]:
    """Why the server cannot make what `need` names, one reason per extension."""
    # here: the migration's checks (and rich with them) are not backup's to import
    from ...actions.migrate.checks import version_tuple

    out = []
    for e in need:
        have = offer.get(e["name"])
        if have is None:
            out.append(f"extension {e['name']} is not available there (not in "
                       "pg_available_extensions)")
        elif e.get("version") and version_tuple(have.default_version) < version_tuple(e["version"]):
            out.append(f"extension {e['name']} is {have.default_version} there, older than "
                       f"the archive's {e['version']}")
    return out


def needs_superuser(names: list[str], offer: dict[str, Available]) -> list[str]:
    return [n for n in names if n in offer and offer[n].superuser and not offer[n].trusted]


def describe(e: dict[str, str], offer: dict[str, Available]) -> str:
    """`vector 0.8.1 (the archive's 0.7.0)` for a plan line."""
    have = offer.get(e["name"])
    version = have.default_version if have else "?"
    was = e.get("version")
    return f"{e['name']} {version}" + (f" (the archive's {was})" if was and was != version
                                       else "")


def create(conn: psycopg.Connection, e: dict[str, str]) -> None:
    """CREATE EXTENSION in the connection's database, in the schema it had."""
    execute(conn, sql.SQL("CREATE EXTENSION IF NOT EXISTS {} WITH SCHEMA {}").format(
        sql.Identifier(e["name"]), sql.Identifier(e.get("schema") or "public")),
        f"create extension {e['name']} in {conn.info.dbname}")


def drop(conn: psycopg.Connection, name: str) -> None:
    execute(conn, sql.SQL("DROP EXTENSION IF EXISTS {}").format(sql.Identifier(name)),
            f"drop extension {name} in {conn.info.dbname}")
