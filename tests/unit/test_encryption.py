"""Encryption at rest: recipients checked, the writer's pipe through age, the reader's errors
(a missing or wrong identity named as such), with the real age program and no rig."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from clawdie_ops.archive import encryption
from clawdie_ops.archive.signing import Trust
from clawdie_ops.archive.verify import Keys, verify
from clawdie_ops.archive.writer import ArchiveWriter
from clawdie_ops.errors import ArchiveCorrupt, ConfigError


def identity(folder: Path, name: str = "id") -> tuple[Path, str]:
    path = folder / name
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    return path, subprocess.run(["age-keygen", "-y", str(path)], check=True,
                                capture_output=True, text=True).stdout.strip()


def keys(ident: Path | None) -> Keys:
    cfg = {"identity": str(ident) if ident else ""}
    return Keys(Trust(allow_unsigned=True),
                lambda path: encryption.decrypt_cmd(cfg, Path("/"), path))


def test_recipients_are_checked_before_any_backup():
    assert encryption.recipients({"recipients": []}) == []
    with pytest.raises(ConfigError, match=r"recipients\[1\] is not an age recipient"):
        encryption.recipients({"recipients": ["ssh-ed25519 AAAA x", "age1typo"]})


def test_written_encrypted_and_read_back_only_with_the_identity(tmp_path):
    ident, recipient = identity(tmp_path)
    final = tmp_path / "clawdie-backup-01.jan.2026-0100.tar.zst.age"
    to = encryption.recipients({"recipients": [recipient]})
    w = ArchiveWriter(final, "top", "zstd", encryption.encrypt_cmd({}, to))
    w.add_bytes("env", b"SECRET=1\n")
    w.add_bytes("manifest.json", b'{"format": 1, "agent_name": "a", "timestamp": "t", '
                b'"items": ["env"], "files": {"env": {"kind": "file", "size": 9, "sha256": '
                b'"' + __import__("hashlib").sha256(b"SECRET=1\n").hexdigest().encode() + b'"}}}')
    w.commit()
    raw = final.read_bytes()
    assert raw.startswith(encryption.MAGIC) and b"SECRET" not in raw
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([final.name, ident.name])
    v = verify(final, keys(ident))
    assert v.encrypted and v.compression == "zstd" and v.env == {"SECRET": "1"}
    with pytest.raises(ConfigError, match="encrypted .age. and no identity"):
        verify(final, keys(None))
    wrong, _ = identity(tmp_path, "other")
    with pytest.raises(ArchiveCorrupt, match="no identity matched") as err:
        verify(final, keys(wrong))
    assert "not one of its recipients" in err.value.hint
