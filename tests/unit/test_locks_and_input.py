"""Locks between real processes, the no-replace archive name, the manifest's shape check
and the private state folder: fast, no services needed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clawdie_ops import locks, statedir
from clawdie_ops.archive.manifest import Manifest
from clawdie_ops.archive.writer import publish
from clawdie_ops.errors import ArchiveCorrupt, ConfigError, LockHeld

HOLDER = """
import sys, time
from pathlib import Path
from clawdie_ops import locks
state, what, seconds = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
lock = locks.host(state, what[5:]) if what.startswith("host:") else \
    locks.installation(state, Path(what))
with locks.hold(lock):
    print("held", flush=True)
    time.sleep(seconds)
"""


def holder(state: Path, what: Path | str, seconds: float) -> subprocess.Popen:
    """Another process holding a lock: an installation's (a path) or a host's ("host:NAME")."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(state), str(what), str(seconds)],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_held_lock_is_refused_naming_its_holder(tmp_path):
    p = holder(tmp_path / "state", tmp_path / "root", 30)
    try:
        with pytest.raises(LockHeld) as err:
            with locks.hold(locks.installation(tmp_path / "state", tmp_path / "root")):
                pass
        msg = err.value.message
        assert f"the installation at {tmp_path / 'root'} is busy" in msg
        assert f"pid {p.pid} (" in msg and "since" in msg and "--wait" in err.value.hint
        assert err.value.exit_code == 75
    finally:
        p.kill()
        p.wait()


def test_wait_gets_the_lock_once_the_holder_ends(tmp_path):
    p = holder(tmp_path / "state", tmp_path / "root", 1.0)
    started = time.monotonic()
    with locks.hold(locks.installation(tmp_path / "state", tmp_path / "root"), wait=30):
        waited = time.monotonic() - started
    p.wait()
    assert 0.3 < waited < 30


def test_a_killed_holder_leaves_no_lock(tmp_path):
    p = holder(tmp_path / "state", tmp_path / "root", 30)
    p.kill()
    p.wait()
    with locks.hold(locks.installation(tmp_path / "state", tmp_path / "root")):
        path, _ = locks.installation(tmp_path / "state", tmp_path / "root")
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_publish_never_replaces_an_archive(tmp_path):
    final = tmp_path / "clawdie-backup-29.nov.2026-1030.tar.zst"
    final.write_bytes(b"first")
    tmp = tmp_path / ".x.partial"
    tmp.write_bytes(b"second")
    got = publish(tmp, final)
    assert got.name == "clawdie-backup-29.nov.2026-1030-2.tar.zst"
    assert final.read_bytes() == b"first" and got.read_bytes() == b"second"
    assert not tmp.exists()


GOOD = {"format": 1, "agent_name": "a", "timestamp": "t", "items": ["env"],
        "files": {"env": {"kind": "file", "size": 1, "sha256": "x", "mode": 0o600}}}


@pytest.mark.parametrize("change, expected", [
    (lambda d: d.__setitem__("files", []), "'files' is a list"),
    (lambda d: d["files"].__setitem__("env", "x"), "files['env'] is a str"),
    (lambda d: d["files"]["env"].__setitem__("size", "1"), "files['env'].size"),
    (lambda d: d["files"]["env"].__setitem__("size", True), "files['env'].size"),
    (lambda d: d["files"]["env"].__setitem__("mode", 0o70000), "not a file mode"),
    (lambda d: d["files"]["env"].__setitem__("tables", {"t": "2"}), "row counts"),
    (lambda d: d.__setitem__("items", [1]), "'items' holds"),
])
def test_a_manifest_of_the_wrong_shape_is_one_clear_error(change, expected):
    doc = json.loads(json.dumps(GOOD))
    Manifest.from_json(json.dumps(doc).encode())  # the good one reads
    change(doc)
    with pytest.raises(ArchiveCorrupt) as err:
        Manifest.from_json(json.dumps(doc).encode(), "x: manifest.json")
    assert "wrong shape" in err.value.message and expected in err.value.message


def test_state_dir_is_private_and_refused_when_not_ours(tmp_path):
    made = statedir.ensure_private(tmp_path / "state")
    assert made.stat().st_mode & 0o777 == 0o700
    (tmp_path / "link").symlink_to(tmp_path / "state")
    with pytest.raises(ConfigError, match="not a plain folder"):
        statedir.ensure_private(tmp_path / "link")
    if os.geteuid() == 0:
        other = tmp_path / "other"
        other.mkdir(mode=0o700)
        os.chown(other, 65534, 65534)
        with pytest.raises(ConfigError, match="belongs to uid 65534"):
            statedir.ensure_private(other)


def test_a_second_migration_of_a_host_is_refused_before_it_connects(tmp_path):
    from clawdie_ops.actions.migrate import plan as migrate_plan
    from clawdie_ops.actions.migrate import run as migrate_run
    from clawdie_ops.config import settings as config
    from clawdie_ops.output import Reporter

    cfg = config.section({})
    cfg["hosts"] = {"newbox": {"ssh": "newbox", "root": "/srv/clawdie"}}
    cfg["state_dir"] = str(tmp_path / "state")
    p = holder(tmp_path / "state", "host:newbox", 30)
    try:
        with pytest.raises(LockHeld) as err:
            migrate_run.run(None, cfg, migrate_plan.Options(to="newbox", yes=True),
                            Reporter(), tmp_path / "home")
        assert "host newbox (a migration) is busy" in err.value.message
        assert f"pid {p.pid}" in err.value.message
        assert not (tmp_path / "home").exists()  # refused before any journal was written
    finally:
        p.kill()
        p.wait()


def _pax_records(fields: dict[str, str]) -> bytes:
    out = b""
    for key, value in fields.items():
        rec = f" {key}={value}\n".encode()
        n = len(rec) + 1
        while len(str(n)) + len(rec) != n:
            n += 1
        out += str(n).encode() + rec
    return out


def test_a_sparse_member_is_refused_before_its_map_is_read(tmp_path):
    """GNU sparse 1.0: tarfile would read a map of as many numbers as the header claims
    (999999999 here) into memory; the archive is refused first."""
    import gzip
    import tarfile

    from clawdie_ops.archive.signing import Trust
    from clawdie_ops.archive.verify import Keys, verify

    body = _pax_records({"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                         "GNU.sparse.name": "top/x", "GNU.sparse.realsize": "10"})
    pax = tarfile.TarInfo("top/PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, len(body)
    member = tarfile.TarInfo("top/x")
    member.size = 1024
    data = b"999999999\n" + b"1\n" * 400
    raw = (pax.tobuf(format=tarfile.USTAR_FORMAT) + body + b"\0" * (512 - len(body) % 512)
           + member.tobuf(format=tarfile.USTAR_FORMAT) + data + b"\0" * (1024 - len(data))
           + b"\0" * 1024)
    archive = tmp_path / "sparse.tar.gz"
    archive.write_bytes(gzip.compress(raw))
    with pytest.raises(ArchiveCorrupt, match="is a sparse file"):
        verify(archive, Keys(Trust(allow_unsigned=True)))
