"""The databases' pre-restore copy as a ZFS snapshot, where PostgreSQL's data directory is in
the db jail's dataset (clawdie.pg_jail, clawdie.pg_data_dir).

A snapshot costs no time whatever the databases' size, where a dump reads them whole. It is
taken with the agent stopped (no write lost), with the row counts of each database then; a
failed restore stops the jail, rolls its datasets back to it, starts the jail and checks
that the server answers with those counts. It is used only when the server the restore
writes to is the one whose files are in the dataset: its system identifier (read from
`global/pg_control` there) must match the server's own.
"""
from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from invoke import Context

from ...config.settings import DbSpec, Settings
from ...errors import ClawdieError, DatabaseError, DatabaseUnreachable
from ...runner import Shell
from ...sources.postgres import commands as pg
from ...zfs import commands as zfs, rollback

BACK_TIMEOUT = 120.0  # seconds for the server to answer after its jail started again


@dataclass
class DbSnapshot:
    jail: str
    dataset: str  # the jail's dataset; `zfs snapshot -r` covers its root child
    name: str
    data_dir: Path  # on this host
    system_identifier: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # db name -> counts

    @property
    def full(self) -> str:
        return f"{self.dataset}@{self.name}"

    def command(self, s: Settings) -> Shell:
        return zfs.snapshot_command(s, self.dataset, self.name)


def system_identifier(data_dir: Path) -> str:
    """The cluster's system identifier: pg_control's first field (a native uint64)."""
    with open(data_dir / "global" / "pg_control", "rb") as fh:
        return str(struct.unpack("=Q", fh.read(8))[0])


def find(c: Context, s: Settings, stamp: str) -> tuple[DbSnapshot | None, str]:
    """The snapshot the restore would take, or (None, why the databases are not in one)."""
    if not s.pg_data_dir:
        return None, "clawdie.pg_data_dir is empty"
    if not s.zfs_prefix:
        return None, "no ZFS prefix is set"
    ds = s.dataset(s.pg_jail)
    if not zfs.exists(c, s, ds):
        return None, f"the dataset {ds} of jail {s.pg_jail} (clawdie.pg_jail) is not found"
    try:
        mnt = zfs.mountpoint(c, s, s.root_dataset(s.pg_jail))
    except ClawdieError as exc:
        return None, exc.message
    data = Path(mnt) / s.pg_data_dir.lstrip("/")
    try:
        ident = system_identifier(data)
    except OSError as exc:
        return None, f"cannot read {data}/global/pg_control: {exc.strerror or exc}"
    return DbSnapshot(s.pg_jail, ds, f"clawdie-pre-restore-{stamp}", data, ident), ""


def take(c: Context, s: Settings, snap: DbSnapshot, dbs: list[DbSpec]) -> None:
    """The snapshot, then the row counts it holds (the agent is stopped: nothing writes)."""
    zfs.run_snapshot(c, snap.command(s), snap.dataset, snap.name)
    for db in dbs:
        try:
            with pg.connect(db) as conn:
                snap.counts[db.name] = pg.table_counts(conn)
        except DatabaseUnreachable:
            pass  # not there yet (the restore creates it): nothing to count back


def roll_back(c: Context, s: Settings, snap: DbSnapshot, dbs: list[DbSpec]) -> None:
    """Stop the jail, roll each of its datasets back to the snapshot, start it, and check
    that the server answers with the row counts it had."""
    rollback.run(c, s, rollback.make_plan(c, s, snap.full, force=True))
    check_back(snap, dbs)


def check_back(snap: DbSnapshot, dbs: list[DbSpec], timeout: float = BACK_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    for db in dbs:
        want = snap.counts.get(db.name)
        if want is None:
            continue
        while True:
            try:
                with pg.connect(db) as conn:
                    counts = pg.table_counts(conn)
                break
            except DatabaseUnreachable as exc:
                if time.monotonic() > deadline:
                    raise DatabaseUnreachable(
                        f"{db.name} does not answer {timeout:g} s after the rollback to "
                        f"{snap.full}: {exc.message}",
                        f"start jail {snap.jail} and check its PostgreSQL log") from None
                time.sleep(0.5)
        if counts != want:
            wrong = sorted(k for k in set(want) | set(counts) if want.get(k) != counts.get(k))
            raise DatabaseError(f"{db.name} is back from {snap.full} but its row counts differ "
                                f"from before the restore: {', '.join(wrong[:5])}",
                                f"check the database; the snapshot {snap.full} is kept")
