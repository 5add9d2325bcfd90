"""PostgreSQL moves with its jail: when both hosts run the same major, the databases travel
inside the db jail's dataset instead of as a dump restored in the downtime window.

The live pre-sync already carries the data directory (a crash-consistent snapshot, which
PostgreSQL recovers from); the window records the old server's row counts, stops the db
jail (PostgreSQL shuts down cleanly), sends only the increment, starts the jail on the new
host and checks the row counts there. Dump and restore stay the path for an upgrade (the
majors differ), when the data directory is not in the jail's dataset, and with --pg-dump.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from invoke import Context

from ...config.settings import Settings
from ...errors import ClawdieError, MigrationFailed
from ...hosts import agent

if TYPE_CHECKING:
    from ...checks import Check
    from ...config.inventory import Host
    from .plan import Options, Step
    from .run import Migration

DATASET, DUMP = "dataset", "dump"
# what the final archive carries when the databases move with the dataset
FILE_ITEMS = ("env", "messages.db", "groups/", "mount-allowlist.json")


# -- on each host (migrate-step) ---------------------------------------------------------------
def data_dir_facts(c: Context, s: Settings) -> dict[str, Any]:
    """Where this host's PostgreSQL keeps its files: pg_data_dir inside the pg_jail's root
    (the running jail's path, else its root dataset's mountpoint), and the major it holds."""
    out: dict[str, Any] = {"jail": s.pg_jail, "data_dir": s.pg_data_dir}
    if not s.pg_data_dir:
        return {**out, "found": False, "why": "clawdie.pg_data_dir is empty"}
    try:
        root = agent.jail_path(c, s, s.pg_jail) if agent.jail_running(c, s, s.pg_jail) else None
        if root is None and s.zfs_prefix:
            from ...zfs import commands as zfs
            root = zfs.mountpoint(c, s, s.root_dataset(s.pg_jail)) or None
    except ClawdieError as exc:
        return {**out, "found": False, "why": exc.message}
    if not root or not root.startswith("/"):
        return {**out, "found": False, "why": f"the path of jail {s.pg_jail} is unknown "
                                               "(not running, and its root dataset not found)"}
    path = Path(root) / s.pg_data_dir.lstrip("/")
    out["path"] = str(path)
    try:
        out["major"] = int((path / "PG_VERSION").read_text().strip().split(".")[0])
    except FileNotFoundError:
        return {**out, "found": False, "why": f"no PG_VERSION in {path}"}
    except (OSError, ValueError) as exc:
        # PostgreSQL's own folder (0700): its existence says enough; the server tells the major
        if not path.is_dir():
            return {**out, "found": False, "why": f"{path}: {exc}"}
        out["major"] = None
    return {**out, "found": True}


def table_counts(s: Settings, wait: float = 0) -> dict[str, dict[str, int]]:
    """Exact row counts per table of each database, as the installation's .env reaches them;
    `wait`: seconds to wait for a server that is starting (a db jail just started)."""
    import psycopg
    from ...sources.postgres import commands as pg

    deadline = time.monotonic() + wait
    out = {}
    for db in s.databases():
        while True:
            try:
                with pg.connect(db) as conn:
                    out[db.key] = pg.table_counts(conn)
                break
            except (ClawdieError, psycopg.OperationalError):
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)
    return out


def db_jail(c: Context, s: Settings, action: str) -> dict[str, Any]:
    """Stop or start the jail PostgreSQL runs in (its rc.d stops the server cleanly)."""
    if action == "stop":
        return {"jail": s.pg_jail, "was_running": agent.jail_stop(c, s, s.pg_jail)}
    started = not agent.jail_running(c, s, s.pg_jail)
    if started:
        agent.jail_start(c, s, s.pg_jail)
    return {"jail": s.pg_jail, "started": started}


# -- deciding (the operator's machine) ---------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    path: str  # DATASET or DUMP
    why: str

    def note(self) -> str:
        how = ("move with the db jail's dataset (pre-sync live, the increment in the window; "
               "no dump or restore of the databases)" if self.path == DATASET else
               "dump and restore in the downtime window")
        return f"PostgreSQL databases: {how}: {self.why}"


def _major(facts: dict[str, Any]) -> int | None:
    from .checks import _server
    srv = _server(facts)
    return srv["version_num"] // 10000 if srv else None


def decide(old: dict[str, Any], new: dict[str, Any], pg_dump: bool) -> Decision:
    """Dataset when both run the same major and the old data directory is in the jail."""
    if pg_dump:
        return Decision(DUMP, "asked for (--pg-dump)")
    files = old.get("pg_files") or {}
    jails = (old.get("settings") or {}).get("jails") or []
    if files.get("jail") not in jails:
        return Decision(DUMP, f"jail {files.get('jail')} (clawdie.pg_jail) is not among the "
                              "jails that travel (clawdie.jails)")
    if not files.get("found"):
        return Decision(DUMP, f"the old host's data directory is not in jail "
                              f"{files.get('jail')}'s dataset ({files.get('why')})")
    old_major, new_major = files.get("major") or _major(old), _major(new)
    if old_major is None or new_major is None:
        return Decision(DUMP, "the PostgreSQL major of "
                        + ("the old" if old_major is None else "the new")
                        + " host could not be read")
    if old_major != new_major:
        kind = "an upgrade" if new_major > old_major else "a downgrade"
        return Decision(DUMP, f"{kind} from PostgreSQL {old_major} to {new_major}: a data "
                              "directory runs only on its own major")
    if not (new.get("pg_files") or {}).get("data_dir"):
        return Decision(DUMP, "the new host's PostgreSQL is in no jail's dataset "
                              "(its clawdie.pg_data_dir is empty)")
    return Decision(DATASET, f"both hosts run PostgreSQL {old_major} and the old host's data "
                             f"directory is in jail {files['jail']} ({files.get('path')})")


# -- the plan --------------------------------------------------------------------------------
def shape(steps: list[Step], opts: Options, old: Host, new: Host) -> list[Step]:
    """The plan's steps for the path the preflight chose: unchanged for a dump; for the
    dataset, row counts and the db jail's stop before the final sync, a final archive
    without the databases, and the row counts checked on the new host."""
    if opts.pg_path != DATASET:
        return steps
    from .plan import StepId, _on

    def step(sid: StepId, where: str, action: str, why: str) -> Step:
        return _on(sid, "downtime", where, old if where == "old" else new,
                   ["migrate-step", action, "--stdin", "--json"], why)

    def with_args(s: Step, h: Host, args: tuple[str, ...], why: str) -> Step:
        return _on(s.id, s.phase, s.where, h, list(args), why, config=s.config)

    out: list[Step] = []
    for s in steps:
        if s.id == StepId.FINAL_SYNC:
            out.append(step(StepId.PG_COUNT_OLD, "old", "pg-counts",
                            "row counts of every table, which the new host must show"))
            out.append(step(StepId.STOP_OLD_DB, "old", "db-jail-stop",
                            "PostgreSQL shuts down cleanly with its jail: the increment "
                            "carries a consistent data directory"))
        if s.id == StepId.FINAL_BACKUP:
            s = with_args(s, old, (*s.args[:-1], "--no-databases", s.args[-1]),
                          "snapshot, messages.db, files: the databases travel in the dataset")
        elif s.id == StepId.RESTORE:
            s = with_args(s, new, (*s.args, "--only", "<items>"),
                          "the files only (.env, messages.db, groups/, allowlist): the "
                          "databases arrived with the db jail's dataset")
        out.append(s)
        if s.id == StepId.POINT_ENV:
            out.append(step(StepId.CHECK_NEW_DB, "new", "pg-counts",
                            "the moved databases on the new host's server (its db jail, "
                            "started from the increment): every table's row count as on the "
                            "old server"))
    return out


# -- running it (the operator's machine) -----------------------------------------------------
def choose(m: Migration) -> Decision:
    """At the preflight's end: the path, noted in the plan and the journal; the steps follow."""
    from .plan import make_steps
    d = decide(m.facts["old"], m.facts["new"], m.opts.pg_dump)
    m.opts.pg_path = d.path
    m.plan.steps = make_steps(m.cfg, m.plan.old, m.plan.new, m.opts)
    m.plan.notes = [n for n in m.plan.notes if not n.startswith("PostgreSQL databases:")]
    m.plan.notes.append(d.note())
    return d


def stopped_by_us(checks: list[Check], window: dict[str, Any], db_stopped: bool) -> list[Check]:
    """A run continuing a window in which this migration stopped the old db jail: the old
    databases cannot answer, and need not (their row counts are in the journal)."""
    if not (db_stopped and window.get("state") == "open"):
        return checks
    from ...checks import Check as C
    return [C(ch.name, "warn", f"{ch.detail} (this migration stopped the db jail there; "
              "its row counts were recorded before)", ch.fix)
            if ch.status == "fail" and ch.name.endswith("_db on old host") else ch
            for ch in checks]


def check_new(m: Migration, step: Step) -> dict[str, Any]:
    """The new server's row counts against the old server's, table by table."""
    want = m.journal.result("pg-count-old").get("databases") or {}
    got = (m.run_plan_step(step, wait=120).get("databases") or {})
    wrong = []
    for key, tables in want.items():
        have = got.get(key) or {}
        for table, n in tables.items():
            if have.get(table) != n:
                wrong.append(f"{key}_db {table}: {have.get(table, 'missing')} on the new "
                             f"host, {n} on the old")
    if not want or wrong:
        raise MigrationFailed(
            "the databases on the new host do not match the old server's: "
            + ("; ".join(wrong[:5]) if wrong else "no row counts were recorded on the old host"),
            "check the new host's db jail (its PostgreSQL log); nothing on the old host was "
            "changed, and the next run sends the increment again")
    return {"databases": {k: sum(v.values()) for k, v in got.items()},
            "tables": sum(len(v) for v in got.values()), "match": True}


def restore_values(m: Migration) -> dict[str, str]:
    """--only for the final archive's restore: the file items it carries."""
    items = m.journal.result("final-backup").get("items") or []
    return {"<items>": ",".join(i for i in FILE_ITEMS if i in items) or ",".join(FILE_ITEMS)}


def undo(m: Migration, failed: Step, undone: list[str], problems: list[str]) -> None:
    """Rollback of a dataset move: the old db jail (PostgreSQL) starts again before the old
    agent does; what the new host received stays there, untouched."""
    if not (m.journal.done("stop-old-db") or failed.id == "stop-old-db"):
        return
    try:
        started = m.step_tool("old", "db-jail-start").get("started")
        undone.append("started the db jail (PostgreSQL) on the old host again" if started
                      else "the db jail on the old host was still running")
    except ClawdieError as err:
        problems.append(f"COULD NOT start the db jail on the old host: {err.message}; start "
                        "it by hand there: clawdie-ops migrate-step db-jail-start")
    if m.journal.done("presync"):
        undone.append("left the datasets the new host received as they are (its db jail may "
                      "run a copy of the old databases; the old host stays the live one, and "
                      "the next run sends only the increment)")
