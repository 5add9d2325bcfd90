"""Preflight of a migration, decided from the two hosts' facts (hosts/facts.py), before any change.

Plain functions over plain data: every rule is unit-tested without a host. A failing check
stops the migration before anything changes; a warning is reported and the run goes on.
"""
from __future__ import annotations

from typing import Any

from ...checks import Check
from ...output import human_size

# Room to spare on the new host beyond the data itself (the archive plus what it restores).
SPACE_MARGIN = 1.2


def version_tuple(text: str | None) -> tuple[int, ...]:
    """'0.1.0' -> (0, 1, 0); anything unreadable counts as 0."""
    parts = []
    for piece in str(text).split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def tool_versions(old: dict[str, Any], new: dict[str, Any]) -> Check:
    o, n = old.get("tool_version", "?"), new.get("tool_version", "?")
    if version_tuple(n)[:2] < version_tuple(o)[:2]:
        return Check("clawdie-ops versions", "fail",
                     f"new host has clawdie-ops {n}, older than the old host's {o}: its restore "
                     "may not read the archive",
                     f"install clawdie-ops {o} or newer on the new host")
    if n != o:
        return Check("clawdie-ops versions", "warn", f"old host {o}, new host {n}",
                     "the same version on both hosts is safest")
    return Check("clawdie-ops versions", "ok", f"{o} on both hosts")


def _server(facts: dict[str, Any]) -> dict[str, Any] | None:
    """What we know of a host's PostgreSQL server, from the app login or the admin login."""
    for db in facts.get("databases", {}).values():
        if db.get("login"):
            return db
    admin = facts.get("admin") or {}
    return admin if admin.get("login") else None


def postgres_versions(old: dict[str, Any], new: dict[str, Any]) -> list[Check]:
    checks = []
    dump = (old.get("pg_client") or {}).get("pg_dump") or {}
    old_srv, new_srv = _server(old), _server(new)
    if "major" not in dump:
        checks.append(Check("pg_dump on old host", "fail",
                            dump.get("error", "pg_dump not found on the old host"),
                            "install the PostgreSQL client there"))
    elif old_srv and dump["major"] < old_srv["version_num"] // 10000:
        checks.append(Check("pg_dump on old host", "fail",
                            f"pg_dump {dump['version']} is older than the old host's server "
                            f"{old_srv['version']}: it refuses to dump it",
                            "install a pg_dump of the server's major version or newer"))
    if "major" in dump and new_srv:
        new_major = new_srv["version_num"] // 10000
        if dump["major"] > new_major:
            checks.append(Check(
                "PostgreSQL versions", "fail",
                f"the old host's pg_dump {dump['version']} writes dumps that the new host's "
                f"PostgreSQL {new_srv['version']} cannot replay (newer settings such as "
                "SET transaction_timeout fail there)",
                f"run PostgreSQL {dump['major']} or newer on the new host, or set "
                f"clawdie.pg_bin on the old host to a pg_dump {new_major}"))
        elif old_srv and old_srv["version_num"] // 10000 > new_major:
            checks.append(Check("PostgreSQL versions", "warn",
                                f"old server {old_srv['version']}, new server "
                                f"{new_srv['version']}: moving to an older major version",
                                "a newer PostgreSQL on the new host is safer"))
        else:
            checks.append(Check("PostgreSQL versions", "ok",
                                f"pg_dump {dump['version']} on old, server {new_srv['version']} "
                                "on new"))
    psql = (new.get("pg_client") or {}).get("psql") or {}
    if "major" not in psql:
        checks.append(Check("psql on new host", "fail",
                            psql.get("error", "psql not found on the new host"),
                            "install the PostgreSQL client there"))
    return checks


def databases_on_new(new: dict[str, Any], new_name: str) -> list[Check]:
    """PostgreSQL reachable on the new host, with the roles present or creatable."""
    checks = []
    admin = new.get("admin") or {}
    dbs = new.get("databases") or {}
    if not dbs:
        return [Check("PostgreSQL on new host", "fail",
                      "no database host: the old .env has neither WARDEN_DB_IP nor "
                      "WARDEN_SUBNET and no db_host is set for the new host",
                      f"set clawdie.hosts.{new_name}.overrides.db_host")]
    for key, db in dbs.items():
        where = f"{db['database']} as {db['user']} at {db['host']}:{db['port']}"
        if db.get("login"):
            checks.append(Check(f"{key}_db on new host", "ok", f"{where} logs in"))
        elif admin.get("login") and admin.get("create_role"):
            checks.append(Check(f"{key}_db on new host", "ok",
                                f"{where} cannot log in yet ({db.get('error', '?')}); the "
                                "admin connection can create the role"))
        else:
            why = admin.get("error") or ("db_admin is not configured" if not
                                         admin.get("configured") else "it may not create roles")
            checks.append(Check(
                f"{key}_db on new host", "fail",
                f"{where}: {db.get('error', 'cannot log in')}; and no admin can create the "
                f"role ({why})",
                "check that PostgreSQL runs on the new host (its db jail), create the roles, "
                f"or set clawdie.hosts.{new_name}.overrides.db_admin"))
    return checks


def identity_guard(old: dict[str, Any], new: dict[str, Any], new_name: str) -> Check:
    """The classic silent failure: the new host's settings pointing at the OLD database."""
    old_ids = {db.get("identity") for db in (old.get("databases") or {}).values()
               if db.get("identity")}
    new_dbs = {k: db for k, db in (new.get("databases") or {}).items() if db.get("identity")}
    admin = new.get("admin") or {}
    new_ids = {db["identity"] for db in new_dbs.values()}
    if admin.get("identity"):
        new_ids.add(admin["identity"])
    if not old_ids or not new_ids:
        return Check("database identity", "warn",
                     "could not read both servers' system identifiers",
                     "check PostgreSQL on both hosts")
    same = old_ids & new_ids
    if same:
        where = next((f"{db['host']}:{db['port']}" for db in new_dbs.values()), "?")
        return Check(
            "database identity", "fail",
            f"the new host's database settings ({where}, after the old .env is restored "
            f"there) reach the OLD host's PostgreSQL (system identifier {same.pop()}): the "
            "restore would overwrite the live data",
            f"set clawdie.hosts.{new_name}.overrides.db_host (and db_port) to the new host's "
            "own PostgreSQL (its db jail address)")
    return Check("database identity", "ok",
                 f"new server {sorted(new_ids)[0]} is not the old server {sorted(old_ids)[0]}")


def zfs_ready(old: dict[str, Any], new: dict[str, Any], new_name: str) -> list[Check]:
    checks = []
    oz, nz = old.get("zfs") or {}, new.get("zfs") or {}
    if oz.get("error") or not oz.get("pool_exists"):
        checks.append(Check("ZFS on old host", "fail",
                            oz.get("error") or f"pool {oz.get('pool')} not found",
                            "check ZFS_POOL / ZFS_PREFIX in the old host's .env"))
    else:
        missing = [d for d, i in oz["datasets"].items() if not i.get("exists")]
        if missing:
            checks.append(Check("ZFS on old host", "fail",
                                f"datasets not found: {', '.join(missing)}",
                                "check clawdie.jails and ZFS_PREFIX"))
    if nz.get("error") or not nz.get("pool_exists"):
        checks.append(Check("ZFS on new host", "fail",
                            nz.get("error") or f"pool {nz.get('pool')} not found on the new host",
                            f"create it, or set clawdie.hosts.{new_name}.overrides.zfs_pool"))
    else:
        checks.append(Check("ZFS on new host", "ok", f"pool {nz['pool']} present"))
    return checks


def space(old: dict[str, Any], new: dict[str, Any]) -> list[Check]:
    """Free space on the new host for the archive, the restored files and the datasets."""
    dbs = sum(db.get("size", 0) for db in (old.get("databases") or {}).values())
    files = (old.get("sqlite") or {}).get("bytes", 0) + old.get("groups_bytes", 0)
    archive = int((dbs + files) * SPACE_MARGIN)
    checks = []
    free = (new.get("space") or {}).get("backup_dir", 0)
    if free < archive:
        checks.append(Check("space for the archive", "fail",
                            f"{human_size(free)} free in {new.get('backup_dir')}, the archive "
                            f"may need up to {human_size(archive)}",
                            "free space there or set backup_dir for the new host"))
    root_free = (new.get("space") or {}).get("root", 0)
    if root_free < int(files * SPACE_MARGIN):
        checks.append(Check("space for the installation", "fail",
                            f"{human_size(root_free)} free at {new.get('root')}, the restored "
                            f"files need {human_size(files)}", "free space there"))
    new_ds = (new.get("zfs") or {}).get("datasets") or {}
    need = sum(i.get("referenced", 0) for d, i in ((old.get("zfs") or {}).get("datasets")
                                                    or {}).items()
               if not new_ds.get(_mapped(d, old, new), {}).get("exists"))
    avail = (new.get("zfs") or {}).get("available")
    if avail is not None and avail < int(need * SPACE_MARGIN):
        checks.append(Check("space in the new pool", "fail",
                            f"{human_size(avail)} available in pool "
                            f"{(new.get('zfs') or {}).get('pool')}, the datasets hold "
                            f"{human_size(need)}", "grow the pool or pick another"))
    if not checks:
        checks.append(Check("disk space", "ok",
                            f"archive up to {human_size(archive)} fits in "
                            f"{human_size(free)}; datasets {human_size(need)} fit in "
                            f"{human_size(avail or 0)}"))
    return checks


def _mapped(dataset: str, old: dict[str, Any], new: dict[str, Any]) -> str:
    """The name `dataset` of the old pool gets in the new pool."""
    op = (old.get("zfs") or {}).get("pool", "")
    np_ = (new.get("zfs") or {}).get("pool", "")
    return np_ + dataset[len(op):] if op and dataset.startswith(op + "/") else dataset


def new_host_data(old: dict[str, Any], new: dict[str, Any], *, force: bool,
                  ours: bool) -> Check:
    """Refuse to overwrite a new host that already runs an agent or holds data."""
    found = []
    if new.get("agent_running"):
        found.append("an agent is running")
    sq = new.get("sqlite") or {}
    if sq.get("non_empty_tables"):
        found.append(f"messages.db has data ({sq['non_empty_tables']} non-empty tables)")
    for db in (new.get("databases") or {}).values():
        if db.get("non_empty_tables"):
            found.append(f"{db['database']} has data ({db['non_empty_tables']} non-empty tables)")
    new_ds = (new.get("zfs") or {}).get("datasets") or {}
    old_ds = (old.get("zfs") or {}).get("datasets") or {}
    for ds, info in old_ds.items():
        target = new_ds.get(_mapped(ds, old, new)) or {}
        if target.get("exists") and not set(target.get("snapshots", [])) & \
                set(info.get("snapshots", [])):
            found.append(f"dataset {_mapped(ds, old, new)} exists with no snapshot in common")
    if not found:
        return Check("new host is empty", "ok", "no agent running, no data to overwrite")
    detail = "; ".join(found)
    if ours:
        return Check("new host is empty", "warn",
                     f"{detail} (left by an earlier run of this migration)")
    if force:
        return Check("new host is empty", "warn", f"{detail}: overwriting (--force)")
    return Check("new host is empty", "fail", f"the new host is not empty: {detail}",
                 "pick another host, empty it, or pass --force to overwrite it")


def old_host(old: dict[str, Any]) -> list[Check]:
    checks = []
    if not old.get("env_present"):
        checks.append(Check(".env on old host", "fail", f"no .env under {old.get('root')}",
                            "set root for the old host in clawdie.hosts or CLAWDIE_ROOT"))
    if not (old.get("sqlite") or {}).get("present"):
        checks.append(Check("messages.db on old host", "fail",
                            f"no store/messages.db under {old.get('root')}",
                            "is root the Clawdie checkout?"))
    for key, db in (old.get("databases") or {}).items():
        if not db.get("login"):
            checks.append(Check(f"{key}_db on old host", "fail", db.get("error", "no login"),
                                "the final backup needs it: check the old host's db jail"))
    if old.get("agent_running") is False:
        checks.append(Check("agent on old host", "warn", "the agent is not running on the "
                            "old host", "it will not be started there again on failure"))
    elif old.get("agent_running") is None:
        checks.append(Check("agent on old host", "fail",
                            old.get("agent_error", "its status command failed"),
                            "check clawdie.commands.agent_status on the old host"))
    return checks


def directories(old: dict[str, Any], new: dict[str, Any], new_name: str) -> list[Check]:
    checks = []
    if not new.get("root_exists"):
        checks.append(Check("Clawdie checkout on new host", "fail",
                            f"{new.get('root')} does not exist on the new host",
                            "clone and install Clawdie there first (runbook step 1), or set "
                            f"root for {new_name} in clawdie.hosts"))
    for role, facts in (("old", old), ("new", new)):
        if not facts.get("backup_dir_exists"):
            checks.append(Check(f"backup directory on {role} host", "fail",
                                f"{facts.get('backup_dir')} does not exist on the {role} host",
                                f"create it there (mkdir -p {facts.get('backup_dir')}) or set "
                                "clawdie.backup_dir for that host"))
    return checks


def evaluate(old: dict[str, Any], new: dict[str, Any], *, new_name: str, force: bool = False,
             ours: bool = False) -> list[Check]:
    """Every preflight check, in the order an operator would read them."""
    checks = old_host(old) + directories(old, new, new_name)
    checks.append(tool_versions(old, new))
    checks += postgres_versions(old, new)
    checks += databases_on_new(new, new_name)
    checks.append(identity_guard(old, new, new_name))
    checks += zfs_ready(old, new, new_name)
    checks += space(old, new)
    checks.append(new_host_data(old, new, force=force, ours=ours))
    return checks


def failures(checks: list[Check]) -> list[Check]:
    return [ch for ch in checks if ch.status == "fail"]
