"""`restore`: put an archive back onto an installation in the runbook's order, or not at all.

Three phases. `prepare` verifies the archive while staging it into a private folder (one
pass; a dry run only reads), reads the .env that will be in force after the env step,
probes the target servers and builds the plan as data; the installation does not change.
`execute` keeps the current state (files moved aside, each database renamed aside or
dumped, a ZFS snapshot of the db dataset where there is one), runs the steps, and on any
failure undoes the steps already done, newest first, and says what it rolled back.
"""
from __future__ import annotations

import functools
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

from invoke import Context

from ... import leftovers, locks, runner, statedir
from . import beside, dbsnap, fileattrs
from ...hosts import agent
from ...runner import Shell
from ...config import settings as config
from .. import doctor
from ...sources.postgres import aside as pgaside, extensions, roles as pgroles
from ...zfs import commands as zfs
from ...config.settings import DbSpec, Settings
from ...sources.postgres.dumpfile import quote, rewrite_owners
from ...errors import (ClawdieError, ConfigError, DatabaseError, DatabaseUnreachable, DumpTooNew,
                       InterruptedAfterRestore, OutputError, RestoreFailed, Terminated)
from ...config.masking import mask_text, secret_values
from ...interrupts import deferred, shielded
from ...output import Reporter
from ...sources.postgres import commands as pg
from ...archive.manifest import count_differences, summary
from ...archive.verify import Verified, keys_for, stage, verify
from ...steps import Step, Undo, groups, planned, run_together

# The runbook's order (steps 2 to 5); the agent is stopped after the env step.
ORDER = ("env", "messages.db", "memory_db.sql", "skills_db.sql", "groups/",
         "mount-allowlist.json")
ALIASES = {".env": "env", "messages": "messages.db", "memory_db": "memory_db.sql",
           "memory": "memory_db.sql", "skills_db": "skills_db.sql", "skills": "skills_db.sql",
           "groups": "groups/", "allowlist": "mount-allowlist.json",
           "mount-allowlist": "mount-allowlist.json"}
DB_ITEMS = ("memory_db.sql", "skills_db.sql")


@dataclass
class RestoreOptions:
    only: list[str] = field(default_factory=list)
    dry_run: bool = False
    start_agent: bool | None = None  # None: when it was running, or on a full restore
    allow_unsigned: bool = False  # accept an archive from before signing (loud warning)
    use_archive_server: bool = False  # the operator confirmed the server the archive names


@dataclass
class DbTarget:
    """Where one dump goes, as found on the server before anything runs."""

    item: str
    db: DbSpec
    dump_user: str
    server: pg.ServerInfo
    tables: dict[str, int]
    exists: bool  # the database exists and the .env's user can log in
    create_role: bool = False
    create_db: bool = False
    extra_roles: list[str] = field(default_factory=list)  # created NOLOGIN, granted to db.user
    role_map: dict[str, str] = field(default_factory=dict)  # dump owner -> .env user
    aside_note: str = ""  # why db_admin is set but the copy is a dump
    # The pre-restore copy: the database renamed to `aside` (with db_admin), else a dump.
    aside: str | None = None
    shape: pgaside.DbShape | None = field(default=None, repr=False)
    # The role exists with another password (a host whose install made it): db_admin gives
    # it the one of the .env in force after the restore, so that .env works.
    set_password: bool = False
    # Extensions the dump uses (name, version, schema): all checked on the server; those
    # the database lacks are made as db_admin before the replay, which skips the dump's
    # own extension statements.
    extensions: list[dict[str, str]] = field(default_factory=list)
    make_extensions: list[dict[str, str]] = field(default_factory=list)
    extension_notes: dict[str, str] = field(default_factory=dict)  # name -> plan wording
    # The server's files are in the db jail's dataset: its pre-restore copy is the snapshot
    in_snapshot: bool = False

    def report(self) -> dict[str, Any]:
        return {"database": self.db.name, "user": self.db.user,
                "address": self.server.address, "system_identifier": self.server.system_identifier,
                "version": self.server.version, "created_role": self.create_role,
                "created_database": self.create_db, "created_roles": self.extra_roles,
                "owner_map": self.role_map, "kept_as": self.aside,
                "password_set": self.set_password,
                "extensions": [e["name"] for e in self.extensions],
                "created_extensions": [e["name"] for e in self.make_extensions]}

    def howto(self) -> str:
        """Where the database as it was is kept, and how to get it back."""
        a, n = quote(self.aside or ""), quote(self.db.name)
        return (f"{self.db.name} as it was before the restore is kept as the database "
                f"{self.aside} at {self.server.address}; to go back, as an admin with the "
                f"agent stopped: DROP DATABASE {n} WITH (FORCE); ALTER DATABASE {a} RENAME TO "
                f"{n}; once satisfied: DROP DATABASE {a}")


class Kind(StrEnum):
    """The restore's steps, in the runbook's order."""

    ENV = "env"
    AGENT_STOP = "agent-stop"
    SNAPSHOT = "snapshot"
    MESSAGES = "messages"
    DATABASE = "database"
    REGEN = "regen"
    GROUPS = "groups"
    ALLOWLIST = "allowlist"
    AGENT_START = "agent-start"
    DOCTOR = "doctor"


@dataclass
class RestorePlan:
    verified: Verified
    settings: Settings  # from the .env in force after the env step
    items: list[str]
    work: Path
    snapshot: str | None
    targets: list[DbTarget]
    regen: DbSpec | None  # skills_db regenerated with the runbook's command
    agent_running: bool
    start_agent: bool
    steps: list[Step]
    notes: list[str]
    secrets: list[str] = field(repr=False, default_factory=list)
    regen_exists: bool = False  # skills_db exists already: keep a pre-restore dump of it
    limits: dict[str, Any] = field(default_factory=dict)  # doctor's thresholds
    staged: bool = False  # the items are in `staging` already (verified while written)
    server: str = ""  # where the database server comes from, for the plan
    restrict: bool = False  # psql knows \restrict: each replay runs under a random key
    # The files replaced, kept beside their targets until the restore succeeded (beside.py)
    kept: beside.Kept = field(default_factory=lambda: beside.Kept(""))
    db_snapshot: dbsnap.DbSnapshot | None = None  # the databases' pre-restore copy (dbsnap.py)

    @property
    def before(self) -> Path:
        return self.work / "before"

    @property
    def staging(self) -> Path:
        return self.work / "staging"

    def mask(self, text: str) -> str:
        return mask_text(text, self.secrets)

    def snapshot_command(self) -> Shell | None:
        if not self.snapshot:
            return None
        ds, name = self.snapshot.split("@")
        return zfs.snapshot_command(self.settings, ds, name)

    def commands(self) -> list[list[str]]:
        """Every command the restore runs, masked, by runs of steps (steps.planned)."""
        snap = self.snapshot_command()
        first = [[self.mask(runner.line(snap))]] if snap is not None else []
        return first + [[self.mask(line) for line in group] for group in planned(self.steps)]

    def describe(self) -> list[str]:
        m = self.verified.manifest
        v = self.verified
        signed = (f"signed by {v.signer.fingerprint}" if v.signer else
                  "NOT signed (--allow-unsigned)")
        out = [(f"verify     {self.verified.path}: {len(self.verified.members)} files match the "
                f"manifest (format {m.format}, from {m.host} at {m.timestamp}), {signed}"
                + (", decrypted with age" if v.encrypted else "")),
               (f"staged     {', '.join(self.items)} in {self.staging}/ (0700), in the same "
                "pass" if self.staged else
                f"stage      {', '.join(self.items)} -> {self.staging}/ (0700) while verifying"),
               f"keep       current state in {self.before}/ (kept after the restore)"]
        snap = self.snapshot_command()
        if snap is not None:
            out.append(f"snapshot   {snap}")
        if self.server:
            out.append(f"server     {self.settings.db_host}:{self.settings.db_port} "
                       f"from {self.server}")
        for step in self.steps:
            out.extend(f"{step.kind:<10} {line}" for line in step.lines)
        out.extend(f"note       {n}" for n in self.notes)
        return [self.mask(line) for line in out]


# -- deciding ----------------------------------------------------------------------------
def requested(only: list[str]) -> list[str]:
    """The items --only names, in runbook order (every item without --only)."""
    wanted: list[str] = []
    for raw in only:
        for name in [x.strip() for x in raw.split(",") if x.strip()]:
            item = ALIASES.get(name, ALIASES.get(name.rstrip("/"), name))
            if item not in ORDER:
                raise ConfigError(f"--only {name!r} is not an item of a backup",
                                  f"use one of: {', '.join(ORDER)}")
            if item not in wanted:
                wanted.append(item)
    return [i for i in ORDER if i in wanted] if wanted else list(ORDER)


def member_filter(items: list[str]) -> Callable[[str], bool]:
    """Which archive members belong to `items` ("groups/" is every groups/... file)."""
    wanted = set(items)
    return lambda n: n in wanted or ("groups/" in wanted and n.startswith("groups/"))


def select_items(v: Verified, only: list[str]) -> tuple[list[str], bool, list[str]]:
    """(items to restore in runbook order, whether to regenerate skills, notes)."""
    present = [i for i in ORDER if v.item_members(i)]
    notes = []
    wanted = requested(only) if only else []
    selection = wanted or list(ORDER)
    regen = False
    items = []
    for item in selection:
        if item in present:
            items.append(item)
        elif item == "skills_db.sql":
            regen = True
            why = v.manifest.skipped.get("skills_db.sql", "not in the archive")
            notes.append(f"skills_db.sql is not in the archive ({why}): "
                         "it is regenerated with the setup step instead")
        elif wanted:
            raise ConfigError(f"{v.path.name} holds no {item}",
                              f"it holds: {', '.join(present)}")
        else:
            notes.append(f"{item} is not in the archive: left as it is")
    return items, regen, notes


def secrets_of(*envs: Mapping[str, str] | None, extra: tuple[str, ...] = ()) -> list[str]:
    return secret_values(*envs, extra=extra)


def _probe(c: Context, s: Settings, v: Verified, item: str, stamp: str,
           snap_ident: str | None = None) -> DbTarget:
    """Look at the server a dump goes to; raise before anything changes when it cannot go."""
    # One server's facts decide one target: split, they would travel as a dozen arguments.
    db = s.memory if item == "memory_db.sql" else s.skills
    entry = v.manifest.files[item]
    facts = v.dumps.get(item)
    dump_user = str(entry.get("user") or "")
    role_map = {dump_user: db.user} if dump_user and dump_user != db.user else {}
    needed = set(facts.roles if facts else ()) - set(role_map) - {db.user}
    admin = pgroles.admin_spec(s, db.host, db.port)
    t: DbTarget
    try:
        with pg.connect(db) as conn:
            info = pg.server_info(conn)
            have = pgroles.existing_roles(conn, needed)
        t = DbTarget(item, db, dump_user, info, dict(entry.get("tables", {})), exists=True)
    except DatabaseUnreachable as exc:
        if admin is None:
            raise DatabaseUnreachable(
                exc.message, f"{exc.hint}; or set clawdie.db_admin (user, password) so that "
                "restore creates a missing role and database") from None
        try:
            admin_conn = pg.connect(admin)
        except DatabaseUnreachable as admin_exc:
            raise DatabaseUnreachable(
                f"{exc.message}; the admin connection failed too: {admin_exc.message}",
                "check clawdie.db_admin (user, password, dbname) and that the server is up"
            ) from None
        with admin_conn as conn:
            info = pg.server_info(conn)
            role_ok = bool(pgroles.existing_roles(conn, {db.user}))
            db_ok = pgroles.database_exists(conn, db.name)
            have = pgroles.existing_roles(conn, needed)
        if role_ok and db_ok and "refused the password" not in exc.message:
            raise  # both exist and it is not the password (pg_hba?): nothing to create
        # Both exist with another password: a host whose install made the role (runbook
        # step 1). db_admin gives it the password of the .env the restore puts in place.
        t = DbTarget(item, db, dump_user, info, dict(entry.get("tables", {})),
                     exists=role_ok and db_ok, create_role=not role_ok, create_db=not db_ok,
                     set_password=role_ok and db_ok)
    t.role_map = role_map
    missing = sorted(needed - have)
    if missing and admin is None:
        raise DatabaseError(f"{item} needs role{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(missing)}, which {info.address} lacks",
                            "create them, or set clawdie.db_admin so that restore creates them")
    t.extra_roles = missing
    # The server whose files the snapshot holds (same system identifier): nothing to keep
    t.in_snapshot = bool(snap_ident) and t.server.system_identifier == snap_ident
    if t.exists and admin is not None and not t.in_snapshot:
        _choose_aside(t, admin, stamp)
    dump_version = str(entry.get("pg_dump_version") or (facts.pg_dump_version if facts else "")
                       or "")
    dump_major = int(dump_version.split(".")[0]) if dump_version[:1].isdigit() else None
    if dump_major is not None and dump_major > info.major:
        raise DumpTooNew(
            f"{item} was written by pg_dump {dump_version}, newer than the PostgreSQL "
            f"{info.version} server at {info.address} that should take it",
            f"restore onto PostgreSQL {dump_major} or newer (upgrade the db jail's server); "
            "nothing was changed")
    need = extensions.wanted(entry, facts.extensions if facts else None)
    if need:
        _plan_extensions(t, need, admin)
    return t


def _plan_extensions(t: DbTarget, need: list[dict[str, str]], admin: DbSpec | None) -> None:
    """Check on the target server what the dump's extensions need; raise before anything
    changes when the server lacks one or nobody configured may create it."""
    t.extensions = need
    where = f"{t.db.name} at {t.server.address} (PostgreSQL {t.server.version})"
    looker = admin if admin is not None else t.db
    with pg.connect(looker) as conn:
        offer = extensions.available(conn, {e["name"] for e in need})
        superuser = pgroles.is_superuser(conn) if admin is not None else False
    why = extensions.unavailable(need, offer)
    if why:
        raise DatabaseError(
            f"{t.item} cannot go into {where}: {'; '.join(why)}",
            f"install the extension for PostgreSQL {t.server.major} in the db jail (pgvector: "
            "the package built for that server), then run the restore again; nothing was "
            "changed")
    installed: set[str] = set()
    if t.exists and not t.aside:  # the database stays: what it has stays too
        spec = replace(admin, name=t.db.name) if t.set_password and admin else t.db
        with pg.connect(spec) as conn:
            installed = {e["name"] for e in extensions.in_database(conn)}
    t.make_extensions = [e for e in need if e["name"] not in installed]
    t.extension_notes = {e["name"]: extensions.describe(e, offer) for e in need}
    names = [e["name"] for e in t.make_extensions]
    if names and admin is None:
        raise DatabaseError(
            f"{t.item} needs the extension{'s' * (len(names) > 1)} {', '.join(names)} in "
            f"{where}, which {t.db.user} may not create (the dump's CREATE EXTENSION needs a "
            "superuser)",
            "set clawdie.db_admin to a superuser (restore creates it before the replay), or "
            f"create it in {t.db.name} as one (CREATE EXTENSION {names[0]}); nothing was "
            "changed")
    blocked = extensions.needs_superuser(names, offer) if not superuser else []
    if blocked and admin is not None:
        raise DatabaseError(
            f"clawdie.db_admin ({admin.user}) is not a superuser: it may not create the "
            f"extension {', '.join(blocked)} (not a trusted extension) in {where}",
            "set clawdie.db_admin to a superuser (e.g. postgres), or create it there as one "
            f"(CREATE EXTENSION {blocked[0]}); nothing was changed")


def _choose_aside(t: DbTarget, admin: DbSpec, stamp: str) -> None:
    """Keep the database as it is under another name, when the admin may: no dump to take
    before the restore, none to replay on rollback (BENCHMARKS.md, restore)."""
    try:
        with pg.connect(admin) as conn:
            why = pgaside.why_not_aside(conn, t.db.name)
            name = pgaside.aside_name(t.db.name, stamp)
            if why is None and pgroles.database_exists(conn, name):
                why = f"a database {name} exists already"
            shape = pgaside.database_shape(conn, t.db.name) if why is None else why
    except DatabaseUnreachable as exc:
        shape = f"the admin connection failed: {exc.message}"
    if isinstance(shape, str):
        t.aside_note = (f"{t.db.name}: the pre-restore copy is a pg_dump, not the database "
                        f"renamed aside: {shape}")
        return
    t.aside, t.shape = name, shape


def prepare(c: Context, cfg: Any, archive: Path, root: str | None, opts: RestoreOptions,
            out: Reporter | None = None) -> RestorePlan:
    """Verify and decide everything; the installation does not change. Unless a dry run,
    the archive is staged in the same pass into a private folder in clawdie.state_dir
    (outside the agent's checkout), which is removed again when anything here fails (and
    by `discard`). Call it holding the installation's lock (`installation_lock`): it sweeps
    what a killed restore of this installation left."""
    out = out or Reporter()
    current = config.load(cfg, root, require_env=False)
    if not current.root.is_dir():
        raise ConfigError(f"Clawdie root not found: {current.root}",
                          "clone and install Clawdie first (runbook step 1), or pass --root")
    items = requested(opts.only)
    keys = keys_for(current, opts.allow_unsigned)
    if opts.dry_run:
        work = _work_dir(current, create=False)
        with out.step(f"verify {archive.name}"):
            v = verify(archive, keys)
        return _decide(c, cfg, root, opts, out, v, current, work)
    work = _work_dir(current, create=True)
    swept = leftovers.sweep([x for x in leftovers.restores(work.parent) if x.path != work]
                            + leftovers.passfiles())
    _private_dirs(work)
    try:
        with out.step(f"verify {archive.name} while staging it"):
            v = stage(archive, work / "staging", member_filter(items), keys)
        plan = _decide(c, cfg, root, opts, out, v, current, work)
    except BaseException:
        _remove_work(work)
        raise
    plan.staged = True
    plan.notes[:0] = [f"removed what a killed run left: {line}" for line in swept] + [
        f"a killed restore left {side}, the file it replaced there: rename it back to "
        f"{beside.original(side)} "
        "or remove it" for side in beside.found(
            [current.root, current.sqlite_path.parent, current.allowlist.parent])]
    if os.stat(work).st_dev != os.stat(current.root).st_dev:
        plan.notes.append(f"the staging folder {work} is on another file system than "
                          f"{current.root}: items are copied into place, not renamed (set "
                          "clawdie.state_dir to a private folder on the same file system to "
                          "move them in one step)")
    return plan


def installation_lock(cfg: Any, root: str | None, wait: float = 0) -> Any:
    """The installation's lock (a context manager): a backup or another restore of it
    waits up to `wait` seconds, else is refused naming the holder."""
    s = config.load(cfg, root, require_env=False)
    return locks.hold(locks.installation(s.state_dir, s.root), wait)


def discard(p: RestorePlan) -> None:
    """A prepared plan that will not run: remove what prepare staged."""
    if p.staged:
        _remove_work(p.work)


def _private_dirs(work: Path) -> None:
    """STATE/installs/ROOT-SLUG/restore-STAMP/staging, each 0700 before any secret lands
    there; `pid` says which process works in it (the next run sweeps it once that is gone)."""
    work.mkdir(mode=0o700)
    (work / leftovers.RUNNING).write_text(f"{os.getpid()}\n")
    (work / "staging").mkdir(mode=0o700)


def _remove_work(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)


def _decide(c: Context, cfg: Any, root: str | None, opts: RestoreOptions, out: Reporter,
            v: Verified, current: Settings, work: Path) -> RestorePlan:
    # Long on purpose: every decision before anything changes, in the order the plan shows
    # them (items, server, targets, client versions, agent, steps).
    items, regen, notes = select_items(v, opts.only)
    if v.signer is None:
        notes.insert(0, v.unsigned_warning)
    server = ""
    if "env" in items:
        if v.env is None:
            raise RestoreFailed(f"{v.path}: the archived env could not be read", "")
        s, server = _with_server(cfg, root, current, v, opts)
    else:
        s = config.load(cfg, root)  # the host's own .env must exist then
    stamp = work.name.removeprefix("restore-")
    with out.step("check the target servers"):
        db_snap, no_snap = (dbsnap.find(c, s, stamp) if set(items) & set(DB_ITEMS)
                            else (None, ""))
        ident = db_snap.system_identifier if db_snap is not None else None
        targets = [_probe(c, s, v, item, stamp, ident) for item in items if item in DB_ITEMS]
        db_snap = _snapshot_notes(db_snap, no_snap, targets, s, notes)
        notes.extend(t.aside_note for t in targets if t.aside_note)
        regen_db = s.skills if regen else None
        regen_exists = False
        if regen_db is not None:
            s.command("skills_regen")  # configured? (raises ConfigError)
            try:
                with pg.connect(regen_db):
                    regen_exists = True
            except DatabaseUnreachable:
                regen_exists = False
        newest = max((t.server.major for t in targets), default=None)
        restrict = False
        if targets or regen_exists:
            _, psql_version = pg.client_version(c, s, "psql", newest)
            for t in targets:
                dumped = str(v.manifest.files[t.item].get("pg_dump_version") or "")
                pg.check_restrict(s, t.item, dumped, psql_version, "on this host")
            restrict = pg.knows_restrict(psql_version)
            if targets and not restrict:
                notes.append(f"psql {psql_version} lacks \\restrict (15.14, 16.10, 17.6, 18 "
                             "have it): only the line scan keeps psql meta-commands out of "
                             "the replay; upgrade the PostgreSQL client")
        if any(t.exists and not t.aside and not t.in_snapshot for t in targets) or \
                regen_exists:
            major, version = pg.client_version(c, s, "pg_dump", newest)
            for t in targets:
                pg.check_dump_compatible(s, major, version, t.server)
    running = agent.running(c, s)
    start = opts.start_agent if opts.start_agent is not None else (running or not opts.only)
    snapshot = None
    if (targets or regen) and s.zfs_prefix and db_snap is None:
        ds = s.dataset("db")
        if zfs.exists(c, s, ds):
            snapshot = f"{ds}@clawdie-pre-restore-{work.name.removeprefix('restore-')}"
        else:
            notes.append(f"no ZFS snapshot before the restore: dataset {ds} not found")
    if opts.dry_run:  # a real run checks the space member by member while staging
        need = sum(v.item_size(i) for i in items)
        free = shutil.disk_usage(s.root).free
        if free < need * 1.1:
            raise OutputError(f"not enough space under {s.root}: {free} bytes free, the "
                              f"restore stages {need} bytes", "free space there first")
    notes.extend(_differences(current, s, targets, v, "env" in items))
    if targets and pgroles.admin_spec(s, s.db_host, s.db_port) is not None and \
            pgroles.scram_note():
        notes.append(pgroles.scram_note())
    secrets = secrets_of(v.env, current.env, s.env,
                         extra=(str(s.db_admin.get("password") or ""),))
    plan = RestorePlan(v, s, items, work, snapshot, targets, regen_db, running, start,
                       [], notes, secrets, regen_exists,
                       dict(config.section(cfg)["doctor"]))
    plan.server, plan.restrict = server, restrict
    plan.kept = beside.Kept(stamp)
    plan.db_snapshot = db_snap
    plan.steps = _steps(plan)
    return plan


def _snapshot_notes(snap: dbsnap.DbSnapshot | None, why: str, targets: list[DbTarget],
                    s: Settings, notes: list[str]) -> dbsnap.DbSnapshot | None:
    """The snapshot when at least one database is in it; notes say where it is not used."""
    if snap is None:
        if why and s.pg_data_dir:
            notes.append(f"the pre-restore copy of the databases is not a ZFS snapshot: {why}")
        return None
    for t in targets:
        if not t.in_snapshot:
            notes.append(f"{t.db.name} at {t.server.address} (system identifier "
                         f"{t.server.system_identifier or 'unknown'}) is not the server whose "
                         f"data directory is {snap.data_dir} ({snap.system_identifier}): its "
                         "pre-restore copy is not the snapshot")
    return snap if any(t.in_snapshot for t in targets) else None


def _with_server(cfg: Any, root: str | None, current: Settings, v: Verified,
                 opts: RestoreOptions) -> tuple[Settings, str]:
    """Settings with the archive's .env, but the database server (where passwords go) from
    the operator's config or this installation's .env; the archive's own choice only when
    the operator confirmed it (--use-archive-server) after the plan showed it."""
    sec = config.section(cfg)
    if sec.get("db_host"):
        host, port, source = current.db_host, current.db_port, "clawdie.db_host"
    elif current.env and current.db_host:
        host, port, source = current.db_host, current.db_port, f"this installation's " \
            f"{current.env_file}"
    else:
        archived = config.load(cfg, root, env=v.env)
        if not opts.use_archive_server:
            raise ConfigError(
                f"the database server {archived.db_host}:{archived.db_port} would come from "
                f"the archive's .env alone (neither clawdie.db_host nor a .env in "
                f"{current.root} names one): restore sends no password where an archive "
                "points", "set clawdie.db_host / clawdie.db_port to this host's PostgreSQL, "
                "or, if that address is right, pass --use-archive-server; nothing was changed")
        host, port = archived.db_host, archived.db_port
        source = "the archive's .env (confirmed with --use-archive-server)"
    pinned = {"clawdie": {**sec, "db_host": host, "db_port": str(port)}}
    return config.load(pinned, root, env=v.env), source


def _differences(current: Settings, s: Settings, targets: list[DbTarget], v: Verified,
                 env_restored: bool) -> list[str]:
    """What an operator should know before confirming: where the databases will go."""
    notes = []
    if env_restored and current.env:
        was = (current.db_host, current.db_port, current.memory.name, current.memory.user)
        now = (s.db_host, s.db_port, s.memory.name, s.memory.user)
        if was != now:
            notes.append(f"the archive's .env sends the databases to {s.memory.name} as "
                         f"{s.memory.user} at {s.db_host}:{s.db_port}; this host's .env said "
                         f"{current.memory.name} as {current.memory.user} at "
                         f"{current.db_host}:{current.db_port} (--only without env keeps "
                         "this host's)")
    for t in targets:
        source = v.manifest.files[t.item].get("system_identifier")
        if source and t.server.system_identifier and source != t.server.system_identifier:
            notes.append(f"{t.item} comes from another PostgreSQL server (system identifier "
                         f"{source}) than {t.server.address} ({t.server.system_identifier})")
    return notes


def _work_dir(s: Settings, create: bool) -> Path:
    """A new restore-STAMP folder name in this installation's private state folder."""
    parent = (statedir.installation_dir(s.state_dir, s.root) if create else
              s.state_dir / "installs" / statedir.slug(s.root))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = parent / f"restore-{stamp}"
    n = 1
    while base.exists():
        n += 1
        base = parent / f"restore-{stamp}-{n}"
    return base


def _kept_as(p: RestorePlan, target: Path, name: str) -> str:
    return (f"is renamed to {beside.sibling(target, p.kept.stamp).name} beside it, and moves "
            f"to {p.before}/{name} once the restore succeeded")


def _steps(p: RestorePlan) -> list[Step]:
    """The plan's steps: what each shows, the commands it runs, the work it does."""
    s, st = p.settings, p.staging
    steps = []
    if "env" in p.items:
        steps.append(Step(
            Kind.ENV, "env", [f"{s.env_file} <- {st}/env (0600); the old one "
                              f"{_kept_as(p, s.env_file, 'env')}"],
            # Never readable by others, whatever mode the archive recorded.
            action=_atomic(lambda c, undo: _swap_in(
                p, st / "env", s.env_file, p.before / "env", undo, ".env",
                _fixer(p, "env", s.env_file, cap=0o700, default=0o600))),
            undo=".env", title=f"restore .env -> {s.env_file}"))
    stop = Shell(s.command("agent_stop"))
    steps.append(Step(Kind.AGENT_STOP, "", [str(stop) if p.agent_running else "(not running)"],
                      [stop] if p.agent_running else [],
                      action=lambda c, undo: agent.stop(c, s), title="stop the agent"))
    if p.db_snapshot is not None:
        steps.append(_snapshot_step(p, p.db_snapshot))
    if "messages.db" in p.items:
        steps.append(Step(
            Kind.MESSAGES, "messages.db",
            [(f"{s.sqlite_path} <- {st}/messages.db; the old one (with -wal, -shm) "
              f"{_kept_as(p, s.sqlite_path, 'store/')}")],
            action=_atomic(lambda c, undo: _restore_messages(p, undo)), undo="messages.db",
            title=f"restore messages.db -> {s.sqlite_path}"))
    steps.extend(_database_step(p, t) for t in p.targets)
    if p.regen is not None:
        steps.append(_regen_step(p, p.regen))
    if "groups/" in p.items:
        n = len(p.verified.item_members("groups/"))
        steps.append(Step(
            Kind.GROUPS, "groups/", [(f"{s.groups_dir}/ <- {st}/groups/ ({n} files); the old "
                                      f"one {_kept_as(p, s.groups_dir, 'groups/')}")],
            action=_atomic(lambda c, undo: _swap_in(
                p, st / "groups", s.groups_dir, p.before / "groups", undo, "groups/",
                _fixer(p, "groups/", s.groups_dir))),
            undo="groups/", title=f"restore groups/ -> {s.groups_dir}"))
    if "mount-allowlist.json" in p.items:
        steps.append(Step(
            Kind.ALLOWLIST, "mount-allowlist.json",
            [(f"{s.allowlist} <- {st}/mount-allowlist.json; the old one "
              f"{_kept_as(p, s.allowlist, 'mount-allowlist.json')}")],
            action=_atomic(lambda c, undo: _swap_in(
                p, st / "mount-allowlist.json", s.allowlist, p.before / "mount-allowlist.json",
                undo, "mount-allowlist.json", _fixer(p, "mount-allowlist.json", s.allowlist))),
            undo="mount-allowlist.json", title=f"restore mount-allowlist.json -> {s.allowlist}"))
    start = Shell(s.command("agent_start"))
    if p.start_agent:
        steps.append(Step(Kind.AGENT_START, "", [str(start)], [start],
                          action=_atomic(lambda c, undo: _start_agent(c, s, undo)),
                          undo="agent start",
                          title="start the agent"))
    else:
        steps.append(Step(Kind.AGENT_START, "", ["no: it was not running (--start starts it)"]))
    steps.append(Step(Kind.DOCTOR, "", [
        "agent, databases, pg_dump, datasets, snapshots, backups, free space"],
        action=lambda c, undo: doctor.run_checks(c, s, p.limits), title="doctor"))
    return steps


def _database_step(p: RestorePlan, t: DbTarget) -> Step:
    """One dump into its database; every database step runs at once with the others."""
    s = p.settings
    lines = []
    admin = pgroles.admin_spec(s, t.db.host, t.db.port)
    who = f"as {admin.user}" if admin else ""
    keep = (pg.pg_dump_cmd(s, t.db, p.before / t.item)
            if t.exists and not t.aside and not t.in_snapshot else None)
    restrict = p.staging / f"restrict-{t.db.key}.sql" if p.restrict else None
    replay = pg.psql_cmd(s, t.db, [restrict, p.staging / t.item] if restrict
                         else [p.staging / t.item])
    if t.set_password:  # first: the .env's login is what the steps below use
        lines.append(f"ALTER ROLE {quote(t.db.user)} PASSWORD '***'  ({who}; the password of "
                     "the restored .env: the role has another one now)")
    if t.aside:  # with the agent stopped, so no write is lost on rollback
        lines.append(f"keep ALTER DATABASE {quote(t.db.name)} RENAME TO {quote(t.aside)}, "
                     f"its sessions ended first  ({who})")
        lines.append(f"CREATE DATABASE {quote(t.db.name)} OWNER "
                     f"{quote(t.shape.owner if t.shape else t.db.user)}: empty, with the "
                     f"encoding, locale, privileges and settings it had  ({who})")
    elif keep is not None:  # taken here, with the agent stopped, so no write is lost
        lines.append(f"keep {runner.line(keep)}  (PGPASSFILE, 0600)")
    if t.create_role:
        lines.append(f"CREATE ROLE {quote(t.db.user)} LOGIN PASSWORD '***'  ({who})")
    if t.create_db:
        lines.append(f"CREATE DATABASE {quote(t.db.name)} OWNER {quote(t.db.user)}  ({who})")
    for r in t.extra_roles:
        lines.append(f"CREATE ROLE {quote(r)} NOLOGIN; GRANT {quote(r)} TO "
                     f"{quote(t.db.user)}  ({who})")
    for e in t.make_extensions:
        lines.append(f"CREATE EXTENSION IF NOT EXISTS {quote(e['name'])} WITH SCHEMA "
                     f"{quote(e.get('schema') or 'public')} in {t.db.name}  ({who}; "
                     f"{t.extension_notes.get(e['name'], e['name'])})")
    if t.extensions:
        present = [e["name"] for e in t.extensions if e not in t.make_extensions]
        lines.append("the dump's extension statements are skipped (the app user may not make "
                     "or drop them)" + (f"; {', '.join(present)} present already"
                                        if present else ""))
    lines.append(f"{runner.line(replay)}  (PGPASSFILE, 0600{pg.replay_note(s)}"
                 + ("; the first script holds \\restrict with a random key" if restrict
                    else "") + ")")
    lines.append(f"into {t.db.name} as {t.db.user} at {t.server.address}: PostgreSQL "
                 f"{t.server.version}, system identifier {t.server.system_identifier}")
    for old, new in t.role_map.items():
        lines.append(f"objects owned by {old} in the dump are given to {new} (.env user; "
                     "the staged dump's OWNER TO lines are rewritten first)")
    lines.append(f"check row counts of {len(t.tables)} tables against the manifest")
    undo = (f"{t.db.name} (renamed back from {t.aside})" if t.aside else
            f"{t.db.name} (from its pre-restore dump)" if keep is not None else "")
    if t.in_snapshot and p.db_snapshot is not None:
        lines.insert(0, f"the pre-restore copy is the snapshot {p.db_snapshot.full}")
    return Step(Kind.DATABASE, t.item, lines, [c for c in (keep, replay) if c is not None],
                action=lambda c, u: _restore_database(c, p, t, u, keep, replay, restrict),
                undo=undo,
                title=f"restore {t.item} -> {t.db.name} at {t.server.address}", together=True)


def _snapshot_step(p: RestorePlan, snap: dbsnap.DbSnapshot) -> Step:
    """The databases' pre-restore copy: the db jail's dataset, snapshotted with the agent
    stopped; on failure the jail is stopped, rolled back to it and started again."""
    s = p.settings
    names = " and ".join(t.db.name for t in p.targets if t.in_snapshot)
    cmd = snap.command(s)
    return Step(Kind.SNAPSHOT, "", [
        f"{cmd}  (the pre-restore copy of {names}: PostgreSQL's data directory "
        f"{snap.data_dir} is in it; their row counts are noted)",
        f"on failure: {s.command('jail_stop', jail=snap.jail)}; zfs rollback -r of "
        f"{snap.dataset} and each child to @{snap.name}; "
        f"{s.command('jail_start', jail=snap.jail)}; the row counts checked",
        f"kept after the restore as {snap.full}"], [cmd],
        action=_atomic(lambda c, undo: _snapshot_databases(c, p, snap, undo)),
        undo=f"{names} (ZFS rollback to @{snap.name})", title=f"snapshot {snap.dataset}")


def _snapshot_databases(c: Context, p: RestorePlan, snap: dbsnap.DbSnapshot,
                        undo: Undo) -> None:
    dbs = [t.db for t in p.targets if t.in_snapshot]
    dbsnap.take(c, p.settings, snap, dbs)
    undo.push(f"{' and '.join(db.name for db in dbs)} (ZFS rollback to @{snap.name}: jail "
              f"{snap.jail} restarted, row counts as before)",
              lambda: dbsnap.roll_back(c, p.settings, snap, dbs))


def _regen_step(p: RestorePlan, db: DbSpec) -> Step:
    s = p.settings
    keep = pg.pg_dump_cmd(s, db, p.before / "skills_db.sql") if p.regen_exists else None
    regen = Shell(s.command("skills_regen"))
    lines = [f"keep {runner.line(keep)}  (PGPASSFILE, 0600)"] if keep is not None else []
    return Step(Kind.REGEN, "skills_db.sql", [*lines, str(regen)],
                [c for c in (keep, regen) if c is not None],
                action=lambda c, undo: _regen(c, p, db, undo, keep, regen),
                undo=f"{db.name} (from its pre-restore dump)" if keep is not None else "",
                title="regenerate skills_db")


# -- acting ------------------------------------------------------------------------------
def _atomic(action: Callable[[Context, Undo], Any]) -> Callable[[Context, Undo], Any]:
    """A step and its undo record complete together: a signal waits for both (quick steps:
    file moves, the agent's start)."""
    def run(c: Context, undo: Undo) -> Any:
        with deferred():
            return action(c, undo)
    return run


def _move(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(src), str(dest))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _swap_in(p: RestorePlan, new: Path, target: Path, keep: Path, undo: Undo, what: str,
             fix: Callable[[Path], None] | None = None) -> None:
    """Rename `target` (if it exists) to its hidden sibling and move `new` into its place;
    `fix` gives it its mode and owner. The sibling goes to `keep` once the restore
    succeeded (beside.py): putting it back is a rename, whatever file system `new` is on."""
    side = p.kept.set_aside(target, keep)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        _move(new, target)
        if fix is not None:
            fix(target)
    except BaseException:
        p.kept.put_back(target, side)
        raise
    undo.push(what, lambda: p.kept.put_back(target, side))


def _sqlite_files(path: Path) -> list[Path]:
    return [path.with_name(path.name + sfx) for sfx in ("", "-wal", "-shm", "-journal")]


def _fixer(p: RestorePlan, name: str, target: Path, cap: int = 0o777,
           default: int | None = None) -> Callable[[Path], None]:
    """Mode as recorded in the manifest (else `default`), owner of what is replaced."""
    files = p.verified.manifest.files
    mode = fileattrs.recorded_mode(files, name, cap)
    mode = default if mode is None else mode
    owner = fileattrs.owner_like(target)
    if name.endswith("/"):
        return lambda path: fileattrs.settle_tree(path, name.rstrip("/"), files, owner)
    return lambda path: fileattrs.settle(path, mode, owner)


def _restore_messages(p: RestorePlan, undo: Undo) -> None:
    s = p.settings
    fix = _fixer(p, "messages.db", s.sqlite_path)
    kept = []  # (file, its sibling)
    for f in _sqlite_files(s.sqlite_path):
        side = p.kept.set_aside(f, p.before / "store" / f.name)
        if side is not None:
            kept.append((f, side))
    try:
        s.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        _move(p.staging / "messages.db", s.sqlite_path)
        fix(s.sqlite_path)
    except BaseException:
        _back_messages(p, kept)
        raise
    undo.push("messages.db", lambda: _back_messages(p, kept))


def _back_messages(p: RestorePlan, kept: list[tuple[Path, Path]]) -> None:
    for f in _sqlite_files(p.settings.sqlite_path):
        _remove(f)
    for f, side in kept:
        p.kept.put_back(f, side)


def _safety_dump(c: Context, db: DbSpec, dump: list[str], before: Path) -> None:
    """The pre-restore dump, made ready for its replay now (extension statements as
    comments), so that a rollback writes nothing."""
    with pg.passfile(db) as env:
        pg.run_checked(c, dump, env, f"pre-restore pg_dump of {db.name} at {db.host}:{db.port}")
    rewrite_owners(before / f"{db.key}_db.sql", {}, skip_extensions=True)


def _replay_old(c: Context, s: Settings, db: DbSpec, before: Path) -> None:
    """Back to the pre-restore dump: drop what the restore made, replay, in one transaction.
    The extensions stay in place (the app user may not drop or make them: _safety_dump
    made their statements comments). It writes no file (not even a passfile): a rollback
    must work on a full disk, which is often why the restore failed. The password goes to
    psql in its environment (a local process of this user's, never its command line)."""
    pg.run_checked(c, pg.psql_cmd(s, db, [before / f"{db.key}_db.sql"],
                                  first=f"DROP OWNED BY {quote(db.user)}"),
                   {"PGPASSWORD": db.password, **pg.replay_env(s)},
                   f"rollback of {db.name} from its pre-restore dump")


def _admin_do(s: Settings, db: DbSpec, action: Callable[[Any], None],
              in_db: bool = False) -> None:
    """Run `action` on an admin connection (to the admin's database, or with `in_db` to
    the database `db` itself)."""
    admin = pgroles.admin_spec(s, db.host, db.port)
    assert admin is not None
    with pg.connect(replace(admin, name=db.name) if in_db else admin, autocommit=True) as conn:
        action(conn)


def _set_password(s: Settings, t: DbTarget, undo: Undo) -> None:
    """The .env's password for an existing role; the stored hash goes back on rollback."""
    kept: list[str | None] = []

    def change(conn: Any) -> None:
        kept.append(pgroles.password_hash(conn, t.db.user))
        pgroles.set_password(conn, t.db.user, t.db.password)
    _admin_do(s, t.db, change)
    stored = kept[0] if kept else None
    if stored:
        undo.push(f"password of role {t.db.user}", lambda: _admin_do(
            s, t.db, lambda conn: pgroles.put_back_password(conn, t.db.user, stored)))


def _make_extensions(s: Settings, t: DbTarget, undo: Undo) -> None:
    """The extensions the database lacks, made as db_admin before the replay."""
    for e in t.make_extensions:
        _admin_do(s, t.db, functools.partial(extensions.create, e=e), in_db=True)
        if t.exists and not t.aside:  # else the database it is in goes on rollback
            undo.push(f"extension {e['name']} in {t.db.name} (created)", functools.partial(
                _admin_do, s, t.db, functools.partial(extensions.drop, name=e["name"]),
                in_db=True))


def _create_nologin(conn: Any, role: str, member: str) -> None:
    pgroles.create_nologin_role(conn, role, member)


def _drop_role(conn: Any, role: str) -> None:
    pgroles.drop_role(conn, role)


def _restore_database(c: Context, p: RestorePlan, t: DbTarget, undo: Undo,
                      keep: list[str] | None, replay: list[str], restrict: Path | None) -> None:
    """One database, in its own thread. Each change is recorded in `undo` as soon as it is
    made; an interrupt in the main thread (undo.stopped()) ends it before its next change."""
    s = p.settings

    def check() -> None:
        if undo.stopped():
            raise Terminated
    check()
    if t.set_password:
        _set_password(s, t, undo)
    if t.aside:
        aside, shape = t.aside, t.shape
        assert shape is not None
        _admin_do(s, t.db, lambda conn: pgaside.set_aside(conn, t.db.name, aside, shape))
        # Pushed before the replay: a failed replay leaves an empty or half database now.
        undo.push(f"{t.db.name} (renamed back from {t.aside})",
                  lambda: _admin_do(s, t.db, lambda conn: pgaside.put_back(
                      conn, t.db.name, t.aside)))  # type: ignore[arg-type]
    elif keep is not None:
        _safety_dump(c, t.db, keep, p.before)
    if t.create_role:
        _admin_do(s, t.db, lambda conn: pgroles.create_login_role(conn, t.db.user, t.db.password))
        undo.push(f"role {t.db.user} (created)",
                  lambda: _admin_do(s, t.db, lambda conn: pgroles.drop_role(conn, t.db.user)))
    if t.create_db:
        _admin_do(s, t.db, lambda conn: pgroles.create_database(conn, t.db.name, t.db.user))
        undo.push(f"database {t.db.name} (created)",
                  lambda: _admin_do(s, t.db, lambda conn: pgroles.drop_database(conn, t.db.name)))
    for role in t.extra_roles:
        _admin_do(s, t.db, functools.partial(_create_nologin, role=role, member=t.db.user))
        undo.push(f"role {role} (created)",
                  functools.partial(_admin_do, s, t.db, functools.partial(_drop_role, role=role)))
    _make_extensions(s, t, undo)
    if restrict is not None:
        pg.write_restrict(restrict)  # its key made now, after the dump was staged
    check()
    if keep is not None:
        # Pushed before the replay: a psql ended by an interrupt may have committed just
        # before it went; replaying the pre-restore dump is right either way.
        undo.push(f"{t.db.name} (from its pre-restore dump)",
                  lambda: _replay_old(c, s, t.db, p.before))
    try:
        with pg.passfile(t.db) as env:
            pg.run_checked(c, replay, {**env, **pg.replay_env(s)},
                           f"restore of {t.item} into {t.db.name} at {t.server.address}")
    except ClawdieError:
        if keep is not None and not undo.stopped():
            undo.actions.pop()  # psql failed on its own: its one transaction left nothing
        raise
    with pg.connect(t.db) as conn:
        counts = pg.table_counts(conn)
    wrong = count_differences(t.tables, counts, extra_tables=True)
    if wrong:
        raise DatabaseError(f"{t.item} restored into {t.db.name} but row counts differ: "
                            f"{summary(wrong)}", "the dump and manifest disagree")


def _regen(c: Context, p: RestorePlan, db: DbSpec, undo: Undo, keep: list[str] | None,
           regen: Shell) -> None:
    s = p.settings
    if keep is not None:
        _safety_dump(c, db, keep, p.before)
        undo.push(f"{db.name} (from its pre-restore dump)",
                  lambda: _replay_old(c, s, db, p.before))
    res = runner.run(c, regen)
    if res.exited != 0:
        raise RestoreFailed(f"regenerating skills failed: "
                            f"{runner.tail(res.stderr or res.stdout)} (exit {res.exited})",
                            f"run it by hand: {regen}")


def _start_agent(c: Context, s: Settings, undo: Undo) -> None:
    agent.start(c, s)
    undo.push("agent start", lambda: agent.stop(c, s))


HOWTO = "databases.txt"


def _asides(p: RestorePlan) -> list[DbTarget]:
    return [t for t in p.targets if t.aside]


def _write_howto(p: RestorePlan) -> None:
    """before/ says where the databases set aside are, as it holds the rest."""
    if _asides(p):
        (p.before / HOWTO).write_text("".join(t.howto() + "\n" for t in _asides(p)) + (
            "(Written before the restore began. If a database named there does not exist, "
            "the restore never renamed it, or its rollback renamed it back.)\n"))


def _confirmed_back(p: RestorePlan) -> list[DbTarget]:
    """The databases set aside that are NOT confirmed back under their names (the aside
    name still exists, or the server could not be asked)."""
    stuck = []
    for t in _asides(p):
        try:
            admin = pgroles.admin_spec(p.settings, t.db.host, t.db.port)
            assert admin is not None
            with pg.connect(admin) as conn:
                if pgroles.database_exists(conn, t.aside or ""):
                    stuck.append(t)
        except Exception:  # noqa: BLE001 -- unknown is not confirmed
            stuck.append(t)
    return stuck


def _keep_howto(p: RestorePlan, stuck: list[DbTarget]) -> None:
    """databases.txt names what is still set aside; it goes once every one is back."""
    if stuck:
        (p.before / HOWTO).write_text("".join(t.howto() + "\n" for t in stuck))
    else:
        (p.before / HOWTO).unlink(missing_ok=True)


def _roll_back(c: Context, p: RestorePlan, undo: Undo, agent_stopped: bool, current: str,
               exc: BaseException) -> NoReturn:
    """Undo what execute did, newest first, and raise RestoreFailed saying what was rolled
    back, and what could not be (with where the pre-restore state is). A second interrupt
    does not cut it short; databases.txt stays until each database is confirmed back."""
    s = p.settings
    with shielded() as late:
        done, failed = undo.run()
        restarted = ""
        if agent_stopped:
            try:
                agent.start(c, s)
                restarted = "; the agent was started again"
            except ClawdieError as again:
                failed.append(f"agent start ({again.message})")
        shutil.rmtree(p.staging, ignore_errors=True)
        stuck = _confirmed_back(p) if p.before.is_dir() else []
        if p.before.is_dir():
            _keep_howto(p, stuck)
        (p.work / leftovers.RUNNING).unlink(missing_ok=True)
    why = exc.message if isinstance(exc, ClawdieError) else (
        "interrupted" if isinstance(exc, (KeyboardInterrupt, Terminated)) else repr(exc))
    rolled = f"rolled back: {', '.join(done)}" if done else "nothing needed rolling back"
    held = "; further interrupts were held off until the rollback finished" if late else ""
    msg = f"restore failed at step '{current}': {why}; {rolled}{restarted}{held}"
    if failed or stuck:
        could_not = failed + [f"{t.db.name} is still set aside as {t.aside}" for t in stuck
                              if not any(f.startswith(f"{t.db.name} (renamed back")
                                         for f in failed)]
        raise RestoreFailed(msg + f"; COULD NOT roll back: {', '.join(could_not)}",
                            f"the pre-restore state is in {p.before}"
                            + (f" and ZFS snapshot {p.snapshot}" if p.snapshot else "")
                            + (f"; the databases' state before the restore is the ZFS "
                               f"snapshot {p.db_snapshot.full} (`clawdie-ops rollback "
                               f"{p.db_snapshot.full}` stops the jail and rolls it back)"
                               if p.db_snapshot else "")
                            + ": put those back by hand"
                            + "".join(f"; {t.howto()}" for t in stuck)
                            + f" (also in {p.before / HOWTO})" * bool(stuck)) from None
    raise RestoreFailed(msg, f"the installation is as it was before; the pre-restore copies "
                             f"are kept in {p.before}") from None


def interrupted_after(p: RestorePlan, missing: str) -> InterruptedAfterRestore:
    """What an interrupt after the point of no return says: the restore stands."""
    return InterruptedAfterRestore(
        f"interrupted after the restore completed: the state of {p.verified.path.name} is "
        f"in place in {p.settings.root}; {missing}",
        f"run `clawdie-ops doctor` to check the installation; the pre-restore copies are "
        f"kept in {p.before}")


def execute(c: Context, p: RestorePlan, out: Reporter) -> dict[str, Any]:
    """Run the plan; on failure roll back and raise RestoreFailed naming what was undone.

    An interrupt (Ctrl-C, SIGTERM, SIGHUP) is a failure like any other: each step and its
    undo record complete together (signals wait for them), and the rollback, once begun,
    finishes whatever else arrives."""
    started = time.monotonic()
    s = p.settings
    assert p.staged, "prepare a plan without dry_run to execute it"
    undo = Undo()
    agent_stopped = False
    current = "keep the current state"
    try:
        with deferred():
            p.before.mkdir(mode=0o700)
            _write_howto(p)
        with out.step("keep the current state"):
            snap = p.snapshot_command()
            if snap is not None and p.snapshot:
                ds, name = p.snapshot.split("@")
                zfs.run_snapshot(c, snap, ds, name)
        for t in p.targets:
            if t.role_map or t.extensions:
                current = f"map owners in {t.item}"
                with out.step(f"map owners in {t.item}: {t.role_map}"):
                    rewrite_owners(p.staging / t.item, t.role_map,
                                   skip_extensions=bool(t.extensions))
        *work, last = p.steps  # the doctor's checks come after, outside the rollback
        for group in groups(work):
            current = f"{group[0].kind} {group[0].item}".strip() if len(group) == 1 else \
                f"{group[0].kind} " + ", ".join(step.item for step in group)
            title = group[0].title if len(group) == 1 else "restore " + ", ".join(
                step.title.removeprefix("restore ") for step in group)
            with out.step(title):
                if group[0].kind is Kind.AGENT_STOP:
                    with deferred():  # a stopped agent is known, so the rollback starts it
                        agent_stopped = bool(group[0].run(c, undo))
                    continue
                failed_step = run_together(c, group, undo)
                if failed_step:
                    current = f"{failed_step[0].kind} {failed_step[0].item}"
                    raise failed_step[1]
    except BaseException as exc:  # noqa: BLE001 -- Ctrl-C midway must roll back too
        _roll_back(c, p, undo, agent_stopped, current, exc)
    # From here the restore is complete: an interrupt no longer rolls it back.
    try:
        with deferred():
            shutil.rmtree(p.staging, ignore_errors=True)
            p.notes.extend(p.kept.settle())
            (p.work / leftovers.RUNNING).unlink(missing_ok=True)
        with out.step(last.title):
            checks = last.run(c, undo)
    except (KeyboardInterrupt, Terminated):
        raise interrupted_after(p, "the doctor's checks did not finish") from None
    return {"archive": str(p.verified.path), "root": str(s.root), "items": p.items,
            "regenerated": ["skills_db"] if p.regen is not None else [],
            "connections": {t.item: t.report() for t in p.targets},
            "safety": {"dir": str(p.before), "snapshot": p.snapshot,
                       "db_snapshot": p.db_snapshot.full if p.db_snapshot else None,
                       "databases": {t.item: {"database": t.aside, "address": t.server.address}
                                     for t in _asides(p)}},
            "agent": {"was_running": p.agent_running, "started": p.start_agent},
            "doctor": [ch.as_dict() for ch in checks],
            "notes": p.notes, "steps": out.timings,
            "duration_s": round(time.monotonic() - started, 3)}
