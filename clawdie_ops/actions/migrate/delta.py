"""messages.db and the files move by what changed: the pre-sync sends a consistent copy to the
new host's staging folder, the downtime window only the pages and files changed since, and
`install-files` puts them in place with the new host's previous files kept aside.

Host side (`clawdie-ops migrate-delta ACTION`, run on each host through its Context):
  state    (new) the page hashes and file list of what its staging folder holds
  make     (old) a bundle of what differs from that state (hosts/delta.py's format)
  apply    (new) the bundle into staging; sha256, integrity_check and row counts checked
  install  (new) staging into place, the previous files into before-STAMP/
  undo     (new) install taken back (a failed window)
Operator side: `sync` (state -> make -> copy the bundle -> apply), `install`, `undo`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from invoke import Context

from ... import statedir
from ...config.settings import Settings
from ...errors import AgentError, ArchiveCorrupt, ClawdieError, MigrationFailed, SourceError
from ...hosts import agent, delta as wire
from ...sources import files as file_source, sqlite
from ..restore import fileattrs

if TYPE_CHECKING:
    from .run import Migration

DB, FILES, INCOMING = "messages.db", "files", "incoming"
PAGES, FILE_LIST, INSTALLED = "messages.db.pages.json", "files.json", "installed.json"


# -- where things are ------------------------------------------------------------------------
def staging(s: Settings) -> Path:
    """The new host's private staging folder for the migration (0700, in state_dir)."""
    return statedir.ensure_private(statedir.installation_dir(s.state_dir, s.root) /
                                   "migrate-delta")


def outbox(s: Settings) -> Path:
    """The old host's private folder for the consistent copy and the bundle."""
    return statedir.ensure_private(statedir.installation_dir(s.state_dir, s.root) /
                                   "migrate-delta-out")


def live_files(s: Settings) -> dict[str, Path]:
    """Installation file name -> its live path (what files.items would archive)."""
    found, _ = file_source.items(s)
    return {item.name: item.source for item in found if item.source.is_file()}


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return default


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


# -- host side: the new host ---------------------------------------------------------------
def state(s: Settings, fresh: bool = False) -> dict[str, Any]:
    """What the new host's staging holds, as recorded when it was written (no re-reading of
    the copy: a copy damaged since is caught by apply's checks, not silently resent).

    `fresh` (a pre-sync): what an earlier, completed migration installed from here is no
    longer staging's; its record goes with the files it kept aside (before-STAMP/)."""
    top = staging(s)
    record = _read_json(top / INSTALLED, None)
    if fresh and record:
        os.replace(top / INSTALLED, Path(record["before"]) / INSTALLED)
        for name in (PAGES, FILE_LIST):
            (top / name).unlink(missing_ok=True)
        shutil.rmtree(top / FILES, ignore_errors=True)
    (top / INCOMING).mkdir(mode=0o700, exist_ok=True)
    pages = _read_json(top / PAGES, None)
    db = pages if pages and (top / DB).is_file() else None
    return {"db": db, "files": _read_json(top / FILE_LIST, []),
            "incoming": str(top / INCOMING), "installed": (top / INSTALLED).exists()}


def apply(s: Settings, bundle: Path) -> dict[str, Any]:
    """The bundle into staging, then every check; a copy that fails them is dropped (the next
    run sends it whole) and the failure names what did not match."""
    top = staging(s)
    incoming = (top / INCOMING).resolve()
    if bundle.resolve().parent != incoming or not bundle.is_file():
        raise wire.DeltaRefused(f"{bundle} is not a bundle in {incoming}: refused", "")
    started = time.monotonic()
    with open(bundle, "rb") as fh:
        header = wire.read_header(fh, bundle.stat().st_size)
        result: dict[str, Any] = {"files_written": len(header.files),
                                  "deleted": len(header.deleted)}
        if header.db is not None:
            result.update(_apply_db(top, fh, header.db))
        files_top = top / FILES
        files_top.mkdir(mode=0o700, exist_ok=True)
        listed = dict(wire.entries_from(_read_json(top / FILE_LIST, [])))
        _write_json(top / FILE_LIST, [])  # half-applied: the next run sends every file
        for e in header.files:
            _write_staged(files_top, e, fh)
            listed[e.name] = e
        for name in header.deleted:
            path = wire.staged_path(files_top, name)
            if path.is_file() or path.is_symlink():
                path.unlink()
            listed.pop(name, None)
        _write_json(top / FILE_LIST, [e.as_dict() for e in listed.values()])
    bundle.unlink()
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def _apply_db(top: Path, fh: Any, db: dict[str, Any]) -> dict[str, Any]:
    target = top / DB
    recorded = _read_json(top / PAGES, None) or {}
    old = wire.unpack_hashes(recorded.get("hashes", "")) \
        if recorded.get("page_size") == db["page_size"] and target.is_file() else []
    if not old:
        target.unlink(missing_ok=True)  # no usable record: the bundle holds every page
    (top / PAGES).unlink(missing_ok=True)  # until the pages are written and checked
    hashes = wire.apply_pages(target, fh, db, old)
    problems = []
    digest = wire.sha256_of(target)
    if digest != db.get("sha256"):
        problems.append(f"sha256 {digest[:12]}… is not the old host's "
                        f"{str(db.get('sha256'))[:12]}…")
    check = sqlite.integrity(target)
    if check != "ok":
        problems.append(f"integrity_check: {check}")
    counts: dict[str, Any]
    try:
        counts = dict(sqlite.table_counts(target))
    except sqlite3.DatabaseError as exc:
        counts = {"error": str(exc)}
    if counts != db.get("tables"):
        diff = sorted(k for k in set(counts) | set(db.get("tables") or {})
                      if counts.get(k) != (db.get("tables") or {}).get(k))
        problems.append(f"row counts differ from the old host's in {', '.join(diff)}")
    if problems:
        target.unlink(missing_ok=True)
        raise ArchiveCorrupt(
            f"the copy of messages.db in {top} does not match the old host's: "
            + "; ".join(problems) + " (the staged copy was damaged or cut short since the "
            "pre-sync); it was removed", "run the same migrate command again: the next run "
            "sends messages.db whole")
    _write_json(top / PAGES, {"page_size": db["page_size"], "length": db["length"],
                              "hashes": wire.pack_hashes(hashes), "mode": db.get("mode"),
                              "sha256": digest})
    return {"pages_written": len(db["pages"]), "pages_total": len(hashes),
            "length": db["length"], "integrity": check, "tables": counts, "sha256": digest}


def _write_staged(top: Path, e: wire.FileEntry, fh: Any) -> None:
    """One file of the bundle into staging: written aside, hashed, then renamed in."""
    path = wire.staged_path(top, e.name)
    path.parent.mkdir(parents=True, exist_ok=True)  # plain folders (staging's top is 0700)
    wire.staged_path(top, e.name)  # checked again now that its folders exist
    tmp = path.with_name(f".{path.name}.partial")
    digest = hashlib.sha256()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        left = e.size
        while left:
            buf = fh.read(min(wire.CHUNK, left))
            if not buf:
                break
            out.write(buf)
            digest.update(buf)
            left -= len(buf)
    if digest.hexdigest() != e.sha256:
        tmp.unlink()
        raise ArchiveCorrupt(f"{e.name}: what arrived does not hash to the old host's sha256",
                             "run the same migrate command again")
    os.chmod(tmp, e.mode)
    os.utime(tmp, ns=(e.mtime_ns, e.mtime_ns))
    os.replace(tmp, path)


def install(c: Context, s: Settings) -> dict[str, Any]:
    """Staging into place: messages.db, .env, the allowlist, groups/. Each live one moves to
    before-STAMP/ first; any failure takes back what this call moved."""
    if agent.running(c, s):
        raise AgentError("the agent runs on this host: its files are not replaced under it",
                         "stop it (clawdie-ops migrate-step agent-stop) and try again")
    top = staging(s)
    if (top / INSTALLED).exists():
        return {"installed": _read_json(top / INSTALLED, {}).get("moves", []), "again": True}
    recorded = _read_json(top / PAGES, None)
    if not recorded or not (top / DB).is_file():
        raise SourceError(f"no checked copy of messages.db in {top}",
                          "run the same migrate command again (the window sends it)")
    before = top / f"before-{datetime.now():%Y%m%d-%H%M%S}"
    before.mkdir(mode=0o700)
    listed = {e["name"] for e in _read_json(top / FILE_LIST, [])}
    env_mode = next((e["mode"] for e in _read_json(top / FILE_LIST, [])
                     if e["name"] == "env"), 0o600) & 0o700  # never readable by others
    moves: list[dict[str, Any]] = []
    pairs = [(top / DB, s.sqlite_path, "store/messages.db", recorded.get("mode")),
             (top / FILES / "env", s.env_file, "env", env_mode),
             (top / FILES / "mount-allowlist.json", s.allowlist, "mount-allowlist.json", None),
             (top / FILES / "groups", s.groups_dir, "groups", None)]
    try:
        for sfx in ("-wal", "-shm", "-journal"):  # the replaced database's own WAL goes too
            side = s.sqlite_path.with_name(s.sqlite_path.name + sfx)
            if side.exists():
                _move(side, before / "store" / side.name)
                moves.append({"staged": None, "live": str(side),
                              "kept": str(before / "store" / side.name)})
        for staged, live, name, mode in pairs:
            if name == "groups" and not any(n.startswith("groups/") for n in listed) \
                    and not staged.exists():
                staged.mkdir(mode=0o700)  # the old host had no groups/: nor does this one
            owner = fileattrs.owner_like(live)
            kept = before / name
            had = live.exists() or live.is_symlink()
            if had:
                _move(live, kept)
            moves.append({"staged": str(staged), "live": str(live),
                          "kept": str(kept) if had else None})
            if staged.exists():
                _move(staged, live)
                if name == "groups":
                    fileattrs.settle_tree(live, "groups", {}, owner)
                else:
                    fileattrs.settle(live, mode, owner)
    except BaseException:
        _undo_moves(moves)
        raise
    _write_json(top / INSTALLED, {"moves": moves, "before": str(before)})
    return {"installed": moves, "kept_aside": str(before)}


def undo(s: Settings) -> dict[str, Any]:
    """Take back `install`: the installed files return to staging, the kept ones to their
    places. Nothing to do when install did not run."""
    top = staging(s)
    record = _read_json(top / INSTALLED, None)
    if not record:
        return {"undone": []}
    _undo_moves(record["moves"])
    (top / INSTALLED).unlink()
    return {"undone": [m["live"] for m in record["moves"]]}


def _undo_moves(moves: list[dict[str, Any]]) -> None:
    for m in reversed(moves):
        live = Path(m["live"])
        if m.get("staged") and (live.exists() or live.is_symlink()):
            _move(live, Path(m["staged"]))
        elif live.exists() and not m.get("staged"):
            live.unlink()
        if m.get("kept") and Path(m["kept"]).exists():
            _move(Path(m["kept"]), live)


def _move(src: Path, dest: Path) -> None:
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.move(str(src), str(dest))


# -- host side: the old host ---------------------------------------------------------------
def make(c: Context, s: Settings, have: dict[str, Any], final: bool) -> dict[str, Any]:
    """A bundle of what differs between this host and `have` (the new host's state).

    Pre-sync (agent running): messages.db through SQLite's backup API, the files copied
    first. Window (`final`): the agent must be stopped; the WAL is checkpointed (TRUNCATE)
    into the live file, which is then read as it is."""
    started = time.monotonic()
    theirs_files = wire.entries_from(have.get("files") or [])  # checked before any work
    out = outbox(s)
    copy = out / DB
    copy.unlink(missing_ok=True)
    try:
        return _make(c, s, have, theirs_files, final, out, started)
    finally:
        copy.unlink(missing_ok=True)
        shutil.rmtree(out / FILES, ignore_errors=True)


def _make(c: Context, s: Settings, have: dict[str, Any], theirs_files: dict[str, Any],
          final: bool, out: Path, started: float) -> dict[str, Any]:
    copy = out / DB
    if final:
        if agent.running(c, s):
            raise AgentError("the agent still runs on the old host: its database would change "
                             "under the final sync", "stop it (migrate-step agent-stop)")
        source = s.sqlite_path
        _checkpoint(source)
        files = live_files(s)
    else:
        sqlite.backup(s.sqlite_path, copy)
        source = copy
        files = _copy_files(live_files(s), out / FILES)
    ps = wire.page_size(source)
    hashes, digest = wire.scan(source, ps)
    theirs_db = have.get("db") or {}
    theirs = wire.unpack_hashes(theirs_db.get("hashes", "")) \
        if theirs_db.get("page_size") == ps else []
    pages = wire.changed_pages(hashes, theirs)
    length = source.stat().st_size
    db = {"page_size": ps, "length": length, "pages": pages, "sha256": digest,
          "tables": sqlite.table_counts(source), "mode": s.sqlite_path.stat().st_mode & 0o777}
    ours = {name: wire.file_entry(name, path) for name, path in files.items()}
    send, deleted = wire.file_changes(ours, theirs_files)
    header = wire.Header(db, send, deleted)
    for old in out.glob("*.delta"):
        old.unlink()
    bundle = out / f"{'final' if final else 'presync'}-{os.getpid()}.delta"
    fd = os.open(bundle, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        size = wire.write_bundle(fh, header, source, files)
    digest = wire.sha256_of(bundle)
    return {"bundle": str(bundle), "size": size, "sha256": digest,
            "pages_sent": len(pages), "pages_total": len(hashes), "db_bytes": length,
            "files_sent": len(send), "deleted": len(deleted), "tables": db["tables"],
            "seconds": round(time.monotonic() - started, 3)}


def _checkpoint(path: Path) -> None:
    """Everything in the WAL into the main file, the WAL emptied: the file alone is whole."""
    con = sqlite3.connect(path, timeout=30)
    try:
        busy, _, _ = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        con.close()
    if busy:
        raise SourceError(f"{path}: the WAL checkpoint was blocked by another connection",
                          "something still has messages.db open on the old host: stop it")


def _copy_files(live: dict[str, Path], top: Path) -> dict[str, Path]:
    """The files as they are now (the agent may change them while the bundle is written)."""
    shutil.rmtree(top, ignore_errors=True)
    out = {}
    for name, path in live.items():
        dest = top / name
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            shutil.copy2(path, dest)
        except FileNotFoundError:
            continue  # deleted meanwhile: the window's pass sees it gone
        out[name] = dest
    return out


def remove_bundle(s: Settings, path: str) -> dict[str, Any]:
    p = Path(path)
    if p.parent.resolve() == outbox(s).resolve() and p.suffix == ".delta":
        p.unlink(missing_ok=True)
    return {"removed": str(p)}


# -- operator side ---------------------------------------------------------------------------
def _tool(m: Migration, where: str, action: str, *args: str, **extra: Any) -> dict[str, Any]:
    h = m.plan.host(where)
    return m.tool(where, "migrate-delta", action, *args, "--stdin", "--json",
                  stdin={"config": h.settings_overrides(), **extra})


def sync(m: Migration, final: bool) -> dict[str, Any]:
    """New host's state -> the old host's bundle of the difference -> copied over (checksum
    verified on arrival) -> applied and checked on the new host. Timed part by part."""
    from ...hosts import transfer  # the operator's side only: paramiko's sftp
    t0 = time.monotonic()
    have = _tool(m, "new", "state", fresh=not final)
    t1 = time.monotonic()
    made = _tool(m, "old", "make", have=have, final=final)
    t2 = time.monotonic()
    dest = str(Path(have["incoming"]) / Path(made["bundle"]).name)

    new_files = m._files("new")

    def arrived(path: str) -> tuple[str, int]:
        # The size only, on arrival: `apply` checks the content end to end (the bundle's
        # length against its header, each file's sha256, the whole database's sha256), so
        # a second full read of the bundle there would only cost window time.
        return str(made["sha256"]), int(new_files.size(path) or 0)

    copied = transfer.copy(m._files("old"), made["bundle"], new_files, dest,
                           size=int(made["size"]), sha256=str(made["sha256"]), verify=arrived,
                           retries=m.opts.retries)
    t3 = time.monotonic()
    try:
        applied = _tool(m, "new", "apply", "--path", dest)
    except ClawdieError as exc:
        raise MigrationFailed(f"the {'window' if final else 'pre-sync'} copy of messages.db "
                              f"and the files on {m.plan.new.label} failed its checks: "
                              f"{exc.message}", exc.hint or "run the same migrate command "
                              "again") from None
    _tool(m, "old", "remove-bundle", "--path", made["bundle"])
    t4 = time.monotonic()
    return {"bytes_sent": copied.bytes_sent, "bundle_bytes": made["size"],
            "attempts": copied.attempts, "resumed_from": copied.resumed_from,
            "db_bytes": made["db_bytes"], "pages_sent": made["pages_sent"],
            "pages_total": made["pages_total"], "files_sent": made["files_sent"],
            "deleted": made["deleted"], "tables": applied.get("tables"),
            "integrity": applied.get("integrity"),
            "seconds": {"state": round(t1 - t0, 3), "make": round(t2 - t1, 3),
                        "copy": round(t3 - t2, 3), "apply": round(t4 - t3, 3)}}


def install_on_new(m: Migration) -> dict[str, Any]:
    return _tool(m, "new", "install")


def undo_on_new(m: Migration) -> dict[str, Any]:
    return _tool(m, "new", "undo")


def actions(m: Migration) -> dict[Any, Any]:
    """The migration's step id -> what runs it, for the three steps of this module."""
    from .plan import StepId

    def presync(step: Any) -> dict[str, Any]:
        m.journal.set("touched_new", True)
        return sync(m, final=False)

    return {StepId.PRESYNC_FILES: presync,
            StepId.FINAL_FILES: lambda step: sync(m, final=True),
            StepId.INSTALL_FILES: lambda step: install_on_new(m)}
