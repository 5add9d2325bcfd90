"""The delta's wire format: page diffs that rebuild the file byte for byte, file lists
whose names stay inside the staging folder, bundles that lie about their length refused."""
from __future__ import annotations

import io
import os
import sqlite3
from pathlib import Path

import pytest

from clawdie_ops.hosts import delta as wire


def _db(path: Path, rows: int, start: int = 0) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, body TEXT)")
    con.executemany("INSERT INTO messages VALUES (?, ?)",
                    [(i, f"message {i} " + "x" * 200) for i in range(start, start + rows)])
    con.commit()
    con.close()


def _bundle(src: Path, have: list[str], files: dict[str, Path] | None = None,
            theirs: dict[str, wire.FileEntry] | None = None) -> tuple[bytes, wire.Header]:
    ps = wire.page_size(src)
    ours = wire.page_hashes(src, ps)
    db = {"page_size": ps, "length": src.stat().st_size,
          "pages": wire.changed_pages(ours, have), "sha256": wire.sha256_of(src)}
    mine = {n: wire.file_entry(n, p) for n, p in (files or {}).items()}
    send, deleted = wire.file_changes(mine, theirs or {})
    header = wire.Header(db, send, deleted)
    buf = io.BytesIO()
    wire.write_bundle(buf, header, src, files or {})
    return buf.getvalue(), header


def test_changed_pages_rebuild_the_file_byte_for_byte_and_send_few_pages(tmp_path):
    src, copy = tmp_path / "old.db", tmp_path / "copy.db"
    _db(src, 2000)
    copy.write_bytes(src.read_bytes())
    ps = wire.page_size(src)
    before = wire.page_hashes(copy, ps)
    _db(src, 20, start=5000)  # a few new rows: a few pages change or are added
    data, header = _bundle(src, before)
    assert 0 < len(header.db["pages"]) < len(wire.page_hashes(src, ps)) // 10
    assert len(data) < src.stat().st_size // 10
    fh = io.BytesIO(data)
    got = wire.read_header(fh, len(data))
    hashes = wire.apply_pages(copy, fh, got.db, before)
    assert copy.read_bytes() == src.read_bytes()
    assert hashes == wire.page_hashes(src, ps)


def test_a_shorter_file_is_cut_to_the_new_length(tmp_path):
    src, copy = tmp_path / "old.db", tmp_path / "copy.db"
    _db(src, 3000)
    copy.write_bytes(src.read_bytes())
    before = wire.page_hashes(copy, wire.page_size(src))
    con = sqlite3.connect(src)
    con.execute("DELETE FROM messages WHERE id > 100")
    con.commit()
    con.execute("VACUUM")
    con.close()
    data, header = _bundle(src, before)
    assert header.db["length"] < copy.stat().st_size
    fh = io.BytesIO(data)
    wire.apply_pages(copy, fh, wire.read_header(fh, len(data)).db, before)
    assert copy.read_bytes() == src.read_bytes()


def test_no_copy_on_the_other_side_means_every_page():
    assert wire.changed_pages(["a", "b", "c"], []) == [0, 1, 2]
    assert wire.changed_pages(["a", "b", "c"], ["a", "x"]) == [1, 2]
    assert wire.changed_pages(["a"], ["a", "b", "c"]) == []  # shorter: the length says so


@pytest.mark.parametrize("name", ["/etc/passwd", "../.ssh/authorized_keys", "groups/../../x",
                                  "groups/a/../../../etc/cron.d/x", "", "groups", "groups/",
                                  "groups//a", "groups/./a", "store/messages.db", "env/x",
                                  "groups\\..\\x", "groups/a\x00b", 7, None])
def test_hostile_file_names_are_refused(name):
    with pytest.raises(wire.DeltaRefused):
        wire.safe_name(name)


@pytest.mark.parametrize("name", ["env", "mount-allowlist.json", "groups/main/CLAUDE.md",
                                  "groups/a/b/c.txt", "groups/..hidden"])
def test_installation_file_names_pass(name):
    assert wire.safe_name(name) == name


def test_a_file_list_with_a_hostile_entry_is_refused_whole():
    good = {"name": "env", "size": 1, "mtime_ns": 1, "mode": 0o600, "sha256": "0" * 64}
    with pytest.raises(wire.DeltaRefused, match="outside the staging folder"):
        wire.entries_from([good, {**good, "name": "../../root/.ssh/authorized_keys"}])
    with pytest.raises(wire.DeltaRefused, match="outside the staging folder"):
        wire.entries_from([{**good, "name": "/etc/shadow"}])
    with pytest.raises(wire.DeltaRefused, match="lacks"):
        wire.entries_from([{"name": "env"}])


def test_files_changed_by_size_mtime_mode_or_content_new_and_deleted(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("same")
    b.write_text("same")
    os.utime(b, ns=(a.stat().st_mtime_ns, a.stat().st_mtime_ns))
    ea, eb = wire.file_entry("groups/x", a), wire.file_entry("groups/x", b)
    assert ea.same(eb)
    os.chmod(b, 0o600)
    chmodded = wire.file_entry("groups/x", b)
    assert not ea.same(chmodded)
    send, deleted = wire.file_changes({"groups/x": ea, "env": wire.file_entry("env", a)},
                                      {"groups/x": chmodded, "groups/gone": eb})
    assert [e.name for e in send] == ["env", "groups/x"] and deleted == ["groups/gone"]


def test_a_bundle_cut_short_or_padded_is_refused(tmp_path):
    src = tmp_path / "old.db"
    _db(src, 50)
    f = tmp_path / "f"
    f.write_text("hello")
    data, _ = _bundle(src, [], {"groups/g/f": f})
    for bad in (data[:-1], data + b"\0"):
        with pytest.raises(wire.DeltaRefused, match="length"):
            wire.read_header(io.BytesIO(bad), len(bad))
    with pytest.raises(wire.DeltaRefused, match="magic"):
        wire.read_header(io.BytesIO(b"junk" + data), len(data) + 4)


def test_a_bundle_naming_a_path_outside_staging_is_refused(tmp_path):
    f = tmp_path / "f"
    f.write_text("owned")
    entry = wire.file_entry("env", f)
    hostile = wire.FileEntry("../../../tmp/owned", entry.size, entry.mtime_ns, entry.mode,
                             entry.sha256)
    buf = io.BytesIO()
    wire.write_bundle(buf, wire.Header(None, [hostile], ["/etc/passwd"]), None,
                      {hostile.name: f})
    data = buf.getvalue()
    with pytest.raises(wire.DeltaRefused, match="outside the staging folder"):
        wire.read_header(io.BytesIO(data), len(data))


def test_page_numbers_beyond_the_length_are_refused(tmp_path):
    import json
    import struct
    head = json.dumps({"db": {"page_size": 4096, "length": 4096, "pages": [5]},
                       "files": [], "deleted": []}).encode()
    data = wire.MAGIC + struct.pack(">I", len(head)) + head
    with pytest.raises(wire.DeltaRefused, match="page list"):
        wire.read_header(io.BytesIO(data), len(data))


def test_staged_path_refuses_a_planted_symlink(tmp_path):
    top = tmp_path / "staging"
    (top / "groups").mkdir(parents=True)
    (top / "groups" / "evil").symlink_to(tmp_path)
    with pytest.raises(wire.DeltaRefused, match="symbolic link"):
        wire.staged_path(top, "groups/evil/x")


def test_the_plan_moves_messages_db_and_the_files_in_steps_of_their_own():
    from clawdie_ops.actions.migrate import plan as migrate
    from tests.unit.test_migrate_plan import plan

    p = plan()
    ids = [s.id for s in p.steps]
    assert ids.index("presync") < ids.index("presync-files") < ids.index("stop-old-agent") \
        < ids.index("final-files") < ids.index("final-backup") < ids.index("restore") \
        < ids.index("install-files") < ids.index("point-env")
    assert next(s for s in p.steps if s.id == "presync-files").phase == "presync"
    assert {"final-files", "install-files"} <= set(migrate.DOWNTIME)
    restore = next(s for s in p.steps if s.id == "restore")
    assert restore.args[-2:] == ("--only", "env,memory_db,skills_db")
    assert restore.command.endswith("--only env,memory_db,skills_db")
    text = "\n".join(p.describe())
    for sid in ("presync-files", "final-files", "install-files"):
        assert f"[{sid}]" in text
    assert "migrate-delta install --stdin --json" in text and "wal_checkpoint(TRUNCATE)" in text


def test_no_delta_keeps_the_plan_of_before():
    from clawdie_ops.actions.migrate import plan as migrate
    from tests.unit.test_migrate_plan import plan

    ids = [s.id for s in plan(migrate.Options(to="newbox", delta=False)).steps]
    assert not {"presync-files", "final-files", "install-files"} & set(ids)
    restore = next(s for s in plan(migrate.Options(to="newbox", delta=False)).steps
                   if s.id == "restore")
    assert "--only" not in restore.args


def test_one_read_gives_the_page_hashes_and_the_sha256(tmp_path):
    src = tmp_path / "old.db"
    _db(src, 300)
    ps = wire.page_size(src)
    assert wire.scan(src, ps) == (wire.page_hashes(src, ps), wire.sha256_of(src))
