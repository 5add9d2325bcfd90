"""Signatures, meta-command scanning and the commands that keep a dump's replay restricted:
signed, changed, re-signed and unsigned archives built in a temporary folder (no rig)."""
from __future__ import annotations

import hashlib
import json
import re
import tarfile
from pathlib import Path

import pytest

from clawdie_ops.archive import signing
from clawdie_ops.archive.signing import Trust
from clawdie_ops.archive.verify import Keys, verify
from clawdie_ops.config.settings import DbSpec
from clawdie_ops.errors import ArchiveUnsafe, ArchiveUntrusted, ConfigError
from clawdie_ops.sources.postgres import commands as pg
from clawdie_ops.sources.postgres.dumpfile import RESTRICT_DROPPED, Scanner
from tests import archive_kit as kit

DUMP = (b"-- Dumped by pg_dump version 15.18\n\\restrict abc123\nSET x = 1;\n"
        b"COPY public.t (a) FROM stdin;\n\\N\n\\.\n\n\\unrestrict abc123\n")


def _archive(tmp: Path, key=kit.KIT_KEY, dump: bytes = DUMP) -> Path:
    files = {"memory_db.sql": dump, "env": b"X=1\n"}
    members = [(tarfile.TarInfo("top"), None)]
    members[0][0].type = tarfile.DIRTYPE
    members += [(tarfile.TarInfo(f"top/{n}"), d) for n, d in files.items()]
    doc = {"format": 1, "agent_name": "a", "timestamp": "2026-01-01T00:00:00+00:00",
           "items": ["memory_db.sql", "env"],
           "files": {"memory_db.sql": {"kind": "postgres", "user": "u", "tables": {}},
                     "env": {"kind": "file"}}}
    members.append((tarfile.TarInfo("top/manifest.json"), json.dumps(doc).encode()))
    return kit.write(tmp / "a.tar.gz", kit.resign("top", members, key))


def trusting(*keys) -> Keys:
    t = Trust()
    for k in keys:
        t.add(signing.public_of(k))
    return Keys(t)


def test_a_signed_archive_verifies_and_names_its_signer(tmp_path):
    v = verify(_archive(tmp_path), trusting(kit.KIT_KEY))
    assert v.signer is not None
    assert v.signer.fingerprint == signing.public_of(kit.KIT_KEY).fingerprint
    assert v.dumps["memory_db.sql"].restrict_key == "abc123"


def test_an_unsigned_archive_is_refused_unless_allowed(tmp_path):
    path = _archive(tmp_path, key=None)
    with pytest.raises(ArchiveUntrusted, match="not signed") as err:
        verify(path, trusting(kit.KIT_KEY))
    assert "--allow-unsigned" in err.value.hint
    v = verify(path, Keys(Trust(allow_unsigned=True)))
    assert v.signer is None and "NOT signed" in v.unsigned_warning


def test_an_unknown_key_is_refused_naming_its_fingerprint_and_the_fix(tmp_path):
    attacker = kit.attacker_key()
    path = _archive(tmp_path, key=attacker)
    fp = signing.public_of(attacker).fingerprint
    for keys in (trusting(kit.KIT_KEY), Keys(Trust(allow_unsigned=True))):
        with pytest.raises(ArchiveUntrusted, match=re.escape(f"signed by key {fp}")) as err:
            verify(path, keys)
        assert "clawdie-ops keys --trust 'ssh-ed25519 " in err.value.hint


def test_a_manifest_changed_after_signing_fails_the_signature(tmp_path):
    good = _archive(tmp_path)
    top, members = kit.read(good)
    # The attacker recomputes every checksum but cannot sign: the old signature stays.
    changed = kit.edit_member("env", lambda b: b"X=2\n")(top, members)
    resigned = kit.resign(top, changed, key=None)
    old_sig = next(m for m in members if m[0].name.endswith(signing.NAME))
    bad = kit.write(tmp_path / "bad.tar.gz", resigned + [old_sig])
    with pytest.raises(ArchiveUntrusted, match="does not match its manifest"):
        verify(bad, trusting(kit.KIT_KEY))


def test_a_meta_command_is_refused_even_when_signed_by_a_trusted_key(tmp_path):
    path = _archive(tmp_path, dump=b"\\! id > /tmp/proof\n" + DUMP)
    with pytest.raises(ArchiveUnsafe, match=r"memory_db.sql line 1 is a psql meta-command"):
        verify(path, trusting(kit.KIT_KEY))


def test_scanner_allows_only_pg_dumps_restrict_pair_and_blanks_it():
    sc = Scanner()
    out = [sc.feed(line) for line in DUMP.splitlines(keepends=True)]
    assert sc.facts.meta == []
    assert out[1] == RESTRICT_DROPPED and out[-1] == RESTRICT_DROPPED
    assert b"\\N\n" in out  # COPY data keeps its backslashes
    for bad in (b"\\unrestrict abc123\n", b"  \\! id\n", b"\\restrict other\n", b"\\.\n"):
        sc2 = Scanner()
        for line in DUMP.splitlines(keepends=True) + [bad]:
            sc2.feed(line)
        assert sc2.facts.meta and sc2.facts.meta[0][0] == 9, bad


def test_trusted_keys_come_from_config_file_and_own_key(tmp_path):
    own = signing.create_private(tmp_path / "cfg" / "signing.key")
    assert (tmp_path / "cfg" / "signing.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "cfg").stat().st_mode & 0o777 == 0o700
    other = kit.attacker_key()
    tfile = tmp_path / "cfg" / "trusted_keys"
    assert signing.add_trusted(tfile, signing.public_of(other, "old host"))
    assert not signing.add_trusted(tfile, signing.public_of(other))
    cfg = {"key": str(tmp_path / "cfg" / "signing.key"), "trusted_file": str(tfile),
           "trusted_keys": [kit.KIT_PUBLIC]}
    t = signing.trust_from(cfg, tmp_path)
    assert set(t.keys) == {signing.public_of(k).fingerprint for k in (own, other, kit.KIT_KEY)}
    with pytest.raises(ConfigError, match=r"trusted_keys\[0\]"):
        signing.trust_from({"trusted_keys": ["ssh-rsa AAAA"]}, tmp_path)
    with pytest.raises(ConfigError, match="inside the backup directory"):
        signing.check_key_outside(tmp_path / "b" / "k", tmp_path / "b")


def test_dump_and_replay_name_the_database_as_an_option_never_positionally():
    from clawdie_ops.config import settings as config
    s = config.load({"clawdie": {"db_host": "h"}}, "/tmp", require_env=False)
    db = DbSpec("memory", "-x", "u", "", "h", 5432)
    assert pg.pg_dump_cmd(s, db, Path("/o.sql"))[-1] == "--dbname=dbname='-x'"
    assert "--dbname=dbname='-x'" in pg.psql_cmd(s, db, Path("/d.sql"))
    assert pg.dbname_arg("memory_db") == "--dbname=memory_db"
    assert pg.dbname_arg("a b'c") == "--dbname=dbname='a b\\'c'"


def test_restrict_is_used_where_psql_has_it(tmp_path):
    assert [pg.knows_restrict(v) for v in ("15.13", "15.14", "16.10", "17.5", "17.6",
                                                "18.0", "12.22")] == \
        [False, True, True, False, True, True, False]
    script = pg.write_restrict(tmp_path / "a.sql")
    text = script.read_text()
    assert text.startswith("\\restrict ") and len(text.split()[1]) == 32
    assert script.stat().st_mode & 0o777 == 0o600
    assert pg.write_restrict(tmp_path / "b.sql").read_text() != text  # a fresh key each time


def test_require_auth_is_asked_for_admin_connections_where_libpq_can():
    import psycopg

    from clawdie_ops.config import settings as config
    from clawdie_ops.sources.postgres import roles
    s = config.load({"clawdie": {"db_host": "h", "db_admin": {"user": "a", "password": "p"}}},
                    "/tmp", require_env=False)
    admin = roles.admin_spec(s, "h", 5432)
    assert admin is not None
    if psycopg.pq.version() >= 160000:
        assert admin.conninfo()["require_auth"] == "scram-sha-256"
        assert roles.scram_note() == ""
    else:
        assert "require_auth" not in admin.conninfo()
        assert "cannot require SCRAM" in roles.scram_note()
    assert "require_auth" not in s.memory.conninfo()  # the app's own role: as its server says


def test_hashes_of_the_kit_key_are_stable():
    assert hashlib.sha256(kit.KIT_PUBLIC.encode()).hexdigest() == hashlib.sha256(
        signing.public_of(kit.KIT_KEY, "clawdie-ops-test-kit").line.encode()).hexdigest()


def test_the_public_key_survives_the_journals_masking():
    """migrate reads the old host's public key back from its journal, which masks every
    field named like a secret: the key line travels as `public`."""
    from clawdie_ops.config.masking import masked
    line = signing.public_of(kit.KIT_KEY).line
    kept = masked({"signed_by": {"fingerprint": "SHA256:x", "public": line, "file": "/k"}})
    assert kept["signed_by"]["public"] == line
