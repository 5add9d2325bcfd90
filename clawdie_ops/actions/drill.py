"""`drill`: restore an archive into a scratch sandbox and prove it whole, away from production.

The sandbox is a temporary Clawdie root and scratch databases, on a PostgreSQL server given
by flags or config, or on a throwaway cluster the drill starts itself (initdb / pg_ctl, as the
postgres user when run as root, in a folder of its own beside the 0700 sandbox, reachable only
through its socket). Every check
is timed; the sandbox, the scratch databases and any role the drill created are removed at
the end, and the drill checks that nothing is left behind.
"""
from __future__ import annotations

import functools
import os
import secrets
import shutil
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg

from invoke import Context

from .. import leftovers
from ..sources.postgres import extensions, roles as pgroles
from ..sources.postgres.cluster import Throwaway, find_server_bin, reachable
from ..archive.writer import sha256_stream
from ..config.settings import DbSpec, Settings
from ..sources.postgres.dumpfile import rewrite_owners
from ..errors import (ArchiveUntrusted, ClawdieError, ConfigError, DatabaseError,
                      DrillFailed)
from ..archive import catalog
from ..archive.manifest import count_differences, summary
from ..checks import Check
from ..output import Reporter
from ..sources.postgres import commands as pg
from ..sources import sqlite
from ..archive.verify import Verified, keys_for, stage

# Where an installation keeps each item, relative to the sandbox.
LAYOUT = {"env": "root/.env", "messages.db": "root/store/messages.db",
          "mount-allowlist.json": "home/.config/clawdie-cp/mount-allowlist.json"}
STAGED = "staged"  # below the sandbox: the verifying pass writes here


def _layout(name: str) -> str:
    """Where a member goes below the sandbox, as in an installation."""
    if name in LAYOUT:
        return LAYOUT[name]
    return f"root/{name}" if name.startswith("groups/") else f"dumps/{name}"


@dataclass
class DrillOptions:
    archive: Path | None = None
    latest: Path | None = None
    pg_host: str = ""
    pg_port: str = ""
    pg_user: str = ""
    pg_bin: str = ""
    allow_unsigned: bool = False


# -- choosing the archive -----------------------------------------------------------------
def newest_archive(directory: Path, decrypt: Callable[[Path], list[str]] | None = None
                   ) -> Path:
    """The newest clawdie-backup-* archive in a directory by the time its manifest says
    (archive/catalog.py's rule, reading every candidate's manifest)."""
    if not directory.is_dir():
        raise ConfigError(f"backup directory not found: {directory}", "check --latest")
    found = catalog.newest(directory, read_manifests=True, decrypt=decrypt)
    if found is None:
        raise ConfigError(f"no clawdie-backup-* archive in {directory}",
                          "run clawdie-ops backup --output there, or check --latest")
    return found


# -- the scratch server -------------------------------------------------------------------
def given_server(cfg: Mapping[str, Any], opts: DrillOptions) -> DbSpec | None:
    host = opts.pg_host or str(cfg.get("host") or "")
    if not host:
        return None
    port = str(opts.pg_port or cfg.get("port") or 5432)
    if not port.isdigit():
        raise ConfigError(f"drill server port {port!r} is not a number", "check --pg-port")
    user = opts.pg_user or str(cfg.get("user") or "") or os.environ.get("PGUSER", "postgres")
    return DbSpec(key="drill", name=str(cfg.get("dbname") or "postgres"), user=user,
                  password=str(cfg.get("password") or ""), host=host, port=int(port))


# -- the drill ----------------------------------------------------------------------------
@dataclass
class Drill:
    c: Any
    s: Settings
    cfg: Mapping[str, Any]
    opts: DrillOptions
    out: Reporter
    checks: list[Check] = field(default_factory=list)
    token: str = field(default_factory=lambda: secrets.token_hex(4))
    sandbox: Path | None = None
    admin: DbSpec | None = None
    cluster: Throwaway | None = None
    cluster_parent: Path | None = None  # run as root: the postgres user's folder for it
    server: pg.ServerInfo | None = None
    created_dbs: list[str] = field(default_factory=list)
    created_roles: list[str] = field(default_factory=list)

    def step(self, name: str, item: str, fn: Callable[[], Any]) -> Any:
        """Run one timed check; a ClawdieError is a failure naming it, not a crash."""
        start = time.monotonic()
        status, detail, value = "pass", "", None
        try:
            with self.out.step(name):
                value = fn()
            if isinstance(value, str):
                detail = value
        except ArchiveUntrusted as exc:  # the fix (which key to trust, the flag) belongs here
            status, detail = "fail", f"{exc.message} -> {exc.hint}"
        except ClawdieError as exc:
            status, detail = "fail", exc.message
        except psycopg.Error as exc:
            status, detail = "fail", f"{item}: {str(exc).strip().splitlines()[0]}"
        except OSError as exc:
            status, detail = "fail", f"{item or name}: {exc}"
        self.checks.append(Check(name, status, detail, item=item,
                                 seconds=round(time.monotonic() - start, 3)))
        return value if status == "pass" else None

    @property
    def failed(self) -> bool:
        return any(ch.status == "fail" for ch in self.checks)

    def skip(self, name: str, item: str, why: str) -> None:
        self.checks.append(Check(name, "skip", why, item=item))

    # individual checks
    def start_server(self, v: Verified) -> str:
        given = given_server(self.cfg, self.opts)
        if given is not None:
            self.admin = given
            try:
                with pg.connect(given) as conn:
                    self.server = pg.server_info(conn)
            except ClawdieError as exc:
                raise DatabaseError(f"drill server: {exc.message}",
                                    "check --pg-host / --pg-port / --pg-user and "
                                    "clawdie.drill.password (or PGPASSWORD)") from None
            kind = "given"
        else:
            bindir = find_server_bin(self.c, self.s, self.opts.pg_bin or
                                     str(self.cfg.get("pg_bin") or ""))
            self.s = replace(self.s, pg_bin=str(bindir))
            assert self.sandbox is not None
            os_user = str(self.cfg.get("os_user") or "postgres")
            base = self.sandbox / "pg"
            if os.geteuid() == 0:
                # The sandbox stays 0700. The postgres user gets a folder of its own beside
                # it (0711: it may pass, nobody may list), holding only the cluster's data
                # and socket; psql, run as this user, reads the dumps from the sandbox.
                pw = Throwaway.user_of(os_user)
                parent = Path(tempfile.gettempdir())
                if not reachable(parent, pw.pw_uid, pw.pw_gid):
                    parent = Path("/tmp")  # a private TMPDIR (a CI runner's 0700 one)
                self.cluster_parent = Path(tempfile.mkdtemp(prefix="clawdie-drill-pg-",
                                                            dir=parent))
                os.chmod(self.cluster_parent, 0o711)
                leftovers.mark_running(self.cluster_parent)
                base = self.cluster_parent / "pg"
            self.cluster = Throwaway(self.c, self.s, bindir, base, os_user)
            self.admin = self.cluster.start()
            with pg.connect(self.admin) as conn:
                self.server = pg.server_info(conn)
            kind = f"throwaway cluster ({bindir})"
        majors = {n: int(str(v.manifest.files[n].get("pg_dump_version") or "0").split(".")[0])
                  for n in v.dumps}
        too_new = {n: m for n, m in majors.items() if m > self.server.major}
        if too_new:
            names = ", ".join(f"{n} (pg_dump {v.manifest.files[n].get('pg_dump_version')})"
                              for n in too_new)
            raise DatabaseError(f"{names} newer than the drill's PostgreSQL "
                                f"{self.server.version}", "give a newer server (--pg-host or "
                                "--pg-bin)")
        _, psql_version = pg.client_version(self.c, self.s, "psql", self.server.major)
        for n in v.dumps:
            pg.check_restrict(self.s, n, str(v.manifest.files[n].get("pg_dump_version") or ""),
                              psql_version, f"({self.s.pg_tool('psql')}) of the drill")
        return f"PostgreSQL {self.server.version} at {self.server.address}, {kind}"

    def verify_and_stage(self, archive: Path) -> Verified:
        """One pass: every member checked against the manifest and written to the sandbox."""
        keys = keys_for(self.s, self.opts.allow_unsigned)  # before anything is created
        # mkdtemp: private (0700), and it stays so: the drilled messages.db and .env are
        # the installation's own.
        self.sandbox = Path(tempfile.mkdtemp(prefix="clawdie-drill-"))
        leftovers.mark_running(self.sandbox)  # a killed drill's folder: the next one sweeps it
        staged = self.sandbox / STAGED
        staged.mkdir(mode=0o700)
        return stage(archive, staged, lambda name: True, keys)

    def extract_all(self, v: Verified) -> str:
        """Move the staged members to where an installation keeps them."""
        assert self.sandbox is not None and self.admin is not None
        staged = self.sandbox / STAGED
        for name in v.members:
            dest = self.sandbox / _layout(name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged / name, dest)
        shutil.rmtree(staged)
        return f"{len(v.members)} files into {self.sandbox} (staged while verifying)"

    def check_sqlite(self, v: Verified) -> str:
        assert self.sandbox is not None
        path = self.sandbox / LAYOUT["messages.db"]
        result = sqlite.integrity(path)
        if result != "ok":
            raise DrillFailed(f"messages.db: integrity_check failed: {result}")
        expected = v.manifest.files["messages.db"].get("tables", {})
        got = sqlite.table_counts(path)
        _compare_counts("messages.db", expected, got)
        return f"integrity ok, {len(got)} tables, {sum(got.values())} rows match"

    def check_files(self, v: Verified) -> str:
        assert self.sandbox is not None
        n = 0
        for name, entry in v.manifest.files.items():
            if entry.get("kind") != "file":
                continue
            rel = LAYOUT.get(name, f"root/{name}")
            path = self.sandbox / rel
            if not path.is_file():
                raise DrillFailed(f"{name}: not restored to {rel}")
            with open(path, "rb") as fh:
                size, digest = sha256_stream(fh)
            if size != entry.get("size") or digest != entry.get("sha256"):
                raise DrillFailed(f"{name}: restored file differs from the manifest")
            n += 1
        return f"{n} files match their size and sha256"

    def replay(self, v: Verified, name: str) -> str:
        """Replay a dump as a restore on a fresh host would: as the archive's app user (a
        login role, no superuser) owning the database, the roles the dump names made NOLOGIN
        and granted to it, its extensions made by the admin first. So the drill fails
        exactly where such a restore would."""
        assert self.admin is not None and self.sandbox is not None
        key = name.removesuffix("_db.sql")
        scratch = f"clawdie_drill_{self.token}_{key}"
        facts = v.dumps.get(name)
        entry = v.manifest.files[name]
        dump_user = str(entry.get("user") or "")
        # The throwaway cluster is ours: the archive's own role name. A given server may
        # hold that role already (its production one): a scratch name, owners mapped to it.
        user = dump_user if self.cluster is not None and dump_user else f"{scratch}_user"
        db = replace(self.admin, key=key, name=scratch, user=user,
                     password=secrets.token_urlsafe(18))
        need = extensions.wanted(entry, facts.extensions if facts else None)
        with pg.connect(self.admin, autocommit=True) as conn:
            why = extensions.unavailable(need, extensions.available(
                conn, {e["name"] for e in need}))
            if why:
                raise DrillFailed(f"{name}: {'; '.join(why)} on the drill's PostgreSQL "
                                  f"{self.server.version if self.server else ''}".strip(),
                                  "a restore onto such a server would fail the same way")
            pgroles.create_login_role(conn, user, db.password)
            self.created_roles.append(user)
            pgroles.create_database(conn, scratch, user)
            self.created_dbs.append(scratch)
            wanted = set(facts.roles if facts else ()) - {dump_user, user}
            for role in sorted(wanted - pgroles.existing_roles(conn, wanted)):
                pgroles.create_nologin_role(conn, role, user)
                self.created_roles.append(role)
        if need:
            with pg.connect(replace(self.admin, name=scratch), autocommit=True) as conn:
                for e in need:
                    extensions.create(conn, e)
        dump = self.sandbox / "dumps" / name
        role_map = {dump_user: user} if dump_user and dump_user != user else {}
        if role_map or need:
            rewrite_owners(dump, role_map, skip_extensions=bool(need))
        _, version = pg.client_version(self.c, self.s, "psql")
        script = pg.write_restrict(dump.with_name(f"restrict-{key}.sql")) \
            if pg.knows_restrict(version) else None
        cmd = pg.psql_cmd(self.s, db, [script, dump] if script else [dump])
        with pg.passfile(db) as env:
            pg.run_checked(self.c, cmd, {**env, **pg.replay_env(self.s)}, f"{name}: replay")
        with pg.connect(db) as conn:
            got = pg.table_counts(conn)
        expected = v.manifest.files[name].get("tables", {})
        _compare_counts(name, expected, got)
        return (f"replayed into {scratch}: {len(got)} tables, {sum(got.values())} rows match"
                + ("" if script else f" (psql {version} lacks \\restrict: only the line "
                   "scan kept meta-commands out)"))

    def cleanup(self) -> str:
        problems = []
        if self.admin is not None and (self.created_dbs or self.created_roles):
            try:
                with pg.connect(self.admin, autocommit=True) as conn:
                    for name in self.created_dbs:
                        pgroles.drop_database(conn, name)
                    for role in self.created_roles:
                        pgroles.drop_role(conn, role)
                    left = [r[0] for r in conn.execute(
                        "SELECT datname FROM pg_database WHERE datname LIKE %s",
                        [f"clawdie_drill_{self.token}_%"])]
                    if left:
                        problems.append(f"databases {', '.join(left)}")
            except (ClawdieError, psycopg.Error) as exc:
                problems.append(f"scratch databases ({getattr(exc, 'message', exc)})")
        if self.cluster is not None:
            try:
                self.cluster.stop()
            except ClawdieError as exc:
                problems.append(f"throwaway cluster ({exc.message})")
        for folder in (self.sandbox, self.cluster_parent):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
                if folder.exists():
                    problems.append(f"folder {folder}")
        if problems:
            raise DrillFailed(f"cleanup: left behind {'; '.join(problems)}",
                              "remove them by hand")
        return (f"dropped {len(self.created_dbs)} scratch database(s)"
                + (f" and role(s) {', '.join(self.created_roles)}" if self.created_roles else "")
                + (", stopped the throwaway cluster" if self.cluster else "")
                + ", removed the sandbox")


def _compare_counts(item: str, expected: Mapping[str, int], got: Mapping[str, int]) -> None:
    wrong = count_differences(expected, got)
    if wrong:
        raise DrillFailed(f"{item}: {summary(wrong)}")


def run(c: Context, s: Settings, cfg: Mapping[str, Any], opts: DrillOptions, out: Reporter) -> dict:
    started = time.monotonic()
    archive = opts.archive if opts.archive else newest_archive(
        Path(opts.latest or "."), keys_for(s).decrypt)
    d = Drill(c, s, cfg, opts, out)
    # what killed drills left: their folders, and a throwaway PostgreSQL still running
    swept = leftovers.sweep(leftovers.drills())
    for line in swept:
        out.warn(f"removed what a killed run left: {line}")
    planned = ["postgres server", "extract", "messages.db", "files"]
    try:
        v = d.step("verify archive", archive.name, lambda: d.verify_and_stage(archive))
        if v is None:
            for name in planned:
                d.skip(name, "", "the archive failed verification")
        else:
            d.checks[-1].detail = (f"{len(v.members)} files match the manifest "
                                   f"(format {v.manifest.format}, {v.compression}"
                                   + (", age" if v.encrypted else "") + "), "
                                   + (f"signed by {v.signer.fingerprint}" if v.signer
                                      else v.unsigned_warning))
            if v.dumps:
                d.step("postgres server", "", lambda: d.start_server(v))
            else:
                d.skip("postgres server", "", "the archive holds no database dump")
            if not d.failed:
                d.step("extract", "", lambda: d.extract_all(v))
            if not d.failed:
                d.step("messages.db", "messages.db", lambda: d.check_sqlite(v))
                d.step("files", "env, groups/, mount-allowlist.json", lambda: d.check_files(v))
                for name in sorted(v.dumps):
                    d.step(f"replay {name}", name, functools.partial(d.replay, v, name))
            else:
                done = {ch.name for ch in d.checks}
                for name in [*planned, *[f"replay {n}" for n in sorted(v.dumps)]]:
                    if name not in done:
                        d.skip(name, "", "an earlier step failed")
    finally:
        d.step("cleanup", "", d.cleanup)
    ok = not d.failed
    return {"archive": str(archive), "ok": ok, "checks": [asdict(ch) for ch in d.checks],
            "swept": swept,
            "server": ({"address": d.server.address, "version": d.server.version,
                        "throwaway": d.cluster is not None} if d.server else None),
            "duration_s": round(time.monotonic() - started, 3)}


def failed_before_start(archive: str, why: str) -> dict:
    """The report of a drill that could not run at all (no archive found, a bad flag)."""
    return {"archive": archive, "ok": False, "server": None, "duration_s": 0.0,
            "checks": [Check("drill", "fail", why).as_dict()]}


def junit_xml(result: dict) -> bytes:
    """A JUnit report: one testcase per check, a <failure> naming the mismatch."""
    checks = result["checks"]
    suite = ET.Element("testsuite", name="clawdie-ops restore drill",
                       tests=str(len(checks)),
                       failures=str(sum(ch["status"] == "fail" for ch in checks)),
                       skipped=str(sum(ch["status"] == "skip" for ch in checks)),
                       errors="0", time=f"{result['duration_s']:.3f}")
    ET.SubElement(ET.SubElement(suite, "properties"), "property", name="archive",
                  value=result["archive"])
    for ch in checks:
        case = ET.SubElement(suite, "testcase", classname="drill." + Path(result["archive"]).name,
                             name=ch["name"], time=f"{ch['seconds']:.3f}")
        if ch["status"] == "fail":
            ET.SubElement(case, "failure", message=ch["detail"]).text = ch["detail"]
        elif ch["status"] == "skip":
            ET.SubElement(case, "skipped", message=ch["detail"])
        elif ch["detail"]:
            ET.SubElement(case, "system-out").text = ch["detail"]
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"
