"""The files a restore replaces wait beside their targets (restore/beside.py), on real files."""
from __future__ import annotations

from pathlib import Path

from clawdie_ops.actions.restore import beside


def test_sibling_is_hidden_in_the_same_folder_and_names_its_target(tmp_path):
    for name in (".env", "messages.db", "groups"):
        side = beside.sibling(tmp_path / name, "20261129-1200")
        assert side.parent == tmp_path and side.name.startswith(".")
        assert beside.original(side) == tmp_path / name


def test_set_aside_then_put_back_is_exact_and_leaves_nothing(tmp_path):
    target = tmp_path / "groups"
    (target / "main").mkdir(parents=True)
    (target / "main" / "a.md").write_text("old\n")
    kept = beside.Kept("S")
    side = kept.set_aside(target, tmp_path / "before" / "groups")
    assert side is not None and not target.exists() and (side / "main" / "a.md").exists()
    target.mkdir()
    (target / "new.md").write_text("restored\n")
    kept.put_back(target, side)
    assert (target / "main" / "a.md").read_text() == "old\n"
    assert not (target / "new.md").exists()
    assert beside.found([tmp_path]) == [] and kept.moves == []


def test_nothing_to_set_aside_means_put_back_only_removes(tmp_path):
    kept = beside.Kept("S")
    target = tmp_path / "mount-allowlist.json"
    assert kept.set_aside(target, tmp_path / "before" / "x") is None
    target.write_text("{}")
    kept.put_back(target, None)
    assert not target.exists()


def test_settle_moves_siblings_into_before_and_names_those_it_cannot(tmp_path):
    kept = beside.Kept("S")
    (tmp_path / "messages.db").write_bytes(b"db")
    (tmp_path / ".env").write_text("K=v\n")
    kept.set_aside(tmp_path / "messages.db", tmp_path / "before" / "store" / "messages.db")
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    kept.set_aside(tmp_path / ".env", blocked / "env")  # its folder cannot be made
    notes = kept.settle()
    assert (tmp_path / "before" / "store" / "messages.db").read_bytes() == b"db"
    assert [p.name for p in beside.found([tmp_path])] == ["..env.clawdie-pre-restore-S"]
    assert len(notes) == 1 and "..env.clawdie-pre-restore-S" in notes[0]
    assert Path(tmp_path / "..env.clawdie-pre-restore-S").read_text() == "K=v\n"
