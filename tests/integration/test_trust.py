"""Trust nothing in an archive, on the rig: signatures, meta-commands in dumps, where the
passwords go, encryption at rest. Each attack is tried for real, and the installation
(tables, databases, files and their modes) is compared before and after."""
from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import tarfile
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from clawdie_ops.archive import signing
from clawdie_ops.archive.verify import Keys, verify
from tests import archive_kit as kit
from tests.conftest import cli
from tests.helpers import set_config
from tests.integration.test_restore import backup, databases, state, stop_agent, work_dirs
from tests.rig import content


# -- helpers --------------------------------------------------------------------------------
def modes(h) -> dict[str, int]:
    """The modes of every file and folder restore may touch."""
    paths = [h.root / ".env", h.root / "store" / "messages.db", h.root / "groups",
             h.home / ".config" / "clawdie-cp" / "mount-allowlist.json"]
    paths += sorted((h.root / "groups").rglob("*"))
    return {str(p): stat.S_IMODE(p.stat().st_mode) for p in paths if p.exists()}


def everything(h) -> dict:
    return {"state": state(h), "databases": databases(h), "modes": modes(h)}


def host_key(h):
    return signing.load_private(h.home / ".config" / "clawdie-ops" / "signing.key")


def fingerprint(key) -> str:
    return signing.public_of(key).fingerprint


def prepend_to_dump(text: bytes):
    return kit.edit_member("memory_db.sql", lambda b: text + b)


def keep_old_signature(top: str, members: list) -> list:
    """What an attacker who cannot sign does: new checksums, the old signature kept."""
    old = next(m for m in members if m[0].name == f"{top}/{signing.NAME}")
    return kit.resign(top, members, key=None) + [old]


def junit_failure(path: Path) -> str:
    case = next(c for c in ET.parse(path).getroot().iter("testcase")
                if c.find("failure") is not None)
    return case.find("failure").get("message")


@pytest.fixture(scope="module")
def victim(rig, tmp_path_factory):
    """One host and its good (signed) archive; every refusal leaves the host unchanged."""
    h = rig.new_host(rows=30)
    (h.home / "backups").mkdir(exist_ok=True)
    good = backup(h)
    yield h, good, tmp_path_factory.mktemp("trust")
    rig.drop(h)


# -- the attack ----------------------------------------------------------------------
def _attack(variant: str, good: Path, d: Path, proof: Path) -> tuple[Path, str]:
    """The issue's attack: `\\! id > PROOF` prepended to memory_db.sql, every checksum and
    size recomputed; then left unsigned, with the old signature, signed by the attacker, or
    signed by a key the host trusts (a stolen key, or an honest host's bad dump).
    Returns the archive and what the refusal must say."""
    edit = prepend_to_dump(f"\\! id > {proof}\n".encode())
    dest = d / f"{variant.replace(' ', '-').replace(chr(39), '')}.tar.gz"
    if variant == "unsigned":
        return kit.repack(good, dest, edit, key=None), "is not signed"
    if variant == "old signature kept":
        return (kit.repack(good, dest, lambda top, m: keep_old_signature(top, edit(top, m)),
                           sign=False), "does not match its manifest")
    if variant == "attacker's key":
        attacker = kit.attacker_key()
        return kit.repack(good, dest, edit, key=attacker), \
            f"signed by key {fingerprint(attacker)}"
    return (kit.repack(good, dest, edit),
            "memory_db.sql line 1 is a psql meta-command outside COPY data")


@pytest.mark.parametrize("variant", ["unsigned", "old signature kept", "attacker's key",
                                     "trusted key"])
def test_a_dump_with_a_shell_command_is_refused_by_drill_and_restore(victim, variant):
    h, good, d = victim
    proof = d / f"proof-{variant.replace(' ', '-')}"
    bad, expected = _attack(variant, good, d, proof)
    before = everything(h)

    junit = d / f"{variant.replace(' ', '-')}.xml"
    res = cli(h, "drill", str(bad), "--junit", str(junit))
    assert res.returncode == 1, res.stdout + res.stderr
    assert expected in " ".join(res.stderr.split()) and "Traceback" not in res.stderr
    assert expected in junit_failure(junit)

    res = cli(h, "restore", str(bad), "--yes")
    assert res.returncode == 1, res.stdout + res.stderr
    err = " ".join(res.stderr.split())
    assert err.startswith("error:") and expected in err, err
    if variant == "attacker's key":  # says how to trust it, should it be the operator's
        assert "clawdie-ops keys --trust 'ssh-ed25519 AAAA" in err
    if variant == "unsigned":
        assert "--allow-unsigned" in err
        # The flag accepts an unsigned archive, not a tampered dump: every check still runs.
        res = cli(h, "restore", str(bad), "--yes", "--allow-unsigned")
        assert res.returncode == 1
        assert "line 1 is a psql meta-command" in " ".join(res.stderr.split())
    res = cli(h, "inspect", str(bad))
    assert res.returncode == 1 and expected in " ".join(res.stderr.split())

    assert not proof.exists(), "the dump's shell command ran"
    assert everything(h) == before
    assert work_dirs(h) == []


def test_a_meta_command_hidden_from_the_line_scan_is_stopped_by_restrict(victim):
    """A comment that makes the scan take a shell command for COPY data: the scan passes
    it, psql's \\restrict (a random key the dump cannot know) refuses it."""
    h, good, d = victim
    proof = d / "proof-hidden"
    hidden = (f"/*\nCOPY public.x (a) FROM stdin;\n*/\n\\! id > {proof}\n\\.\n").encode()
    bad = kit.repack(good, d / "hidden.tar.gz", prepend_to_dump(hidden))
    before = everything(h)

    res = cli(h, "drill", str(bad), "--json")
    assert res.returncode == 1
    checks = {c["name"]: c for c in json.loads(res.stdout)["checks"]}
    assert checks["verify archive"]["status"] == "pass"
    assert checks["replay memory_db.sql"]["status"] == "fail"
    assert "backslash commands are restricted" in checks["replay memory_db.sql"]["detail"]

    res = cli(h, "restore", str(bad), "--yes")
    assert res.returncode == 1
    err = " ".join(res.stderr.split())
    assert "backslash commands are restricted" in err and "rolled back" in err
    assert not proof.exists()
    assert everything(h) == before


# -- signing --------------------------------------------------------------------------------
def test_backup_signs_with_a_key_it_creates_outside_the_backups(host):
    key_path = host.home / ".config" / "clawdie-ops" / "signing.key"
    assert not key_path.exists()
    res = cli(host, "backup", "--json", check=True)
    assert "created the signing key" in " ".join(res.stderr.split())
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_path.parent.stat().st_mode) == 0o700
    report = json.loads(res.stdout)
    archive = Path(report["archive"])
    key = host_key(host)
    assert report["signed_by"]["fingerprint"] == fingerprint(key) and report["signed_by"][
        "created"]
    # manifest.json then manifest.sig, the last two members; the signature checks out
    # against the host's public key alone.
    top, members = kit.read(archive)
    assert [m[0].name for m in members[-2:]] == [f"{top}/manifest.json", f"{top}/{signing.NAME}"]
    trust = signing.Trust()
    trust.add(signing.public_of(key))
    signer = signing.check(archive, members[-2][1], members[-1][1], trust)
    assert signer is not None and signer.fingerprint == fingerprint(key)
    # keys and inspect name the same key; the next backup reuses it.
    shown = json.loads(cli(host, "keys", "--json", check=True).stdout)
    assert shown["signing"]["fingerprint"] == fingerprint(key)
    inspected = json.loads(cli(host, "inspect", str(archive), "--json", check=True).stdout)
    assert inspected["signed_by"]["fingerprint"] == fingerprint(key)
    res = cli(host, "backup", "--json", "--no-snapshot", check=True)
    assert "created the signing key" not in res.stderr
    # A key inside the backup directory is refused before anything is written.
    set_config(host, signing={"key": str(host.home / "backups" / "k.key")})
    listing = sorted(p.name for p in (host.home / "backups").iterdir())
    res = cli(host, "backup")
    assert res.returncode == 1 and "inside the backup directory" in res.stderr
    assert sorted(p.name for p in (host.home / "backups").iterdir()) == listing


def test_a_ci_drill_needs_only_the_public_key(victim, tmp_path):
    h, good, _ = victim
    ci = tmp_path / "ci"
    ci.mkdir()
    # A CI runner has the PostgreSQL client of the dumps' version (pg_bin), nothing else.
    pg_bin = str(h.cluster.bindir)
    (ci / ".invoke.json").write_text(json.dumps({"clawdie": {"pg_bin": pg_bin}}))
    env = {"HOME": str(ci), "CLAWDIE_ROOT": str(ci)}
    res = cli(h, "drill", str(good), env=env)
    assert res.returncode == 1
    fp = fingerprint(host_key(h))
    assert f"signed by key {fp}" in " ".join(res.stderr.split())
    assert not (ci / ".config" / "clawdie-ops" / "signing.key").exists()
    # The public key in the config is all a CI runner needs (rotation: list old and new).
    public = signing.public_of(host_key(h)).line
    (ci / ".invoke.json").write_text(json.dumps(
        {"clawdie": {"pg_bin": pg_bin, "signing": {"trusted_keys": [kit.KIT_PUBLIC, public]}}}))
    res = cli(h, "drill", str(good), env=env)
    assert res.returncode == 0, res.stderr
    # Or `keys --trust`, which writes the trusted keys file.
    (ci / ".invoke.json").write_text(json.dumps({"clawdie": {"pg_bin": pg_bin}}))
    cli(h, "keys", "--trust", public, env=env, check=True)
    assert public.split()[1] in (ci / ".config" / "clawdie-ops" / "trusted_keys").read_text()
    res = cli(h, "drill", str(good), env=env)
    assert res.returncode == 0, res.stderr


def test_an_archive_from_before_signing_needs_allow_unsigned(host, tmp_path):
    original = everything(host)
    archive = backup(host)
    legacy = kit.repack(archive, tmp_path / "legacy.tar.gz", lambda top, m: [
        x for x in m if x[0].name != f"{top}/{signing.NAME}"], sign=False)
    with host.db_connect("memory") as conn:
        conn.execute("TRUNCATE users CASCADE")
    damaged = everything(host)
    res = cli(host, "restore", str(legacy), "--yes")
    assert res.returncode == 1 and "is not signed" in res.stderr
    assert everything(host) == damaged
    res = cli(host, "restore", str(legacy), "--yes", "--allow-unsigned")
    assert res.returncode == 0, res.stderr
    assert "WARNING" in res.stderr and "NOT signed" in res.stderr
    stop_agent(host)
    assert everything(host)["state"] == original["state"]


# -- where the passwords go -------------------------------------------------------------------
class Listener:
    """A TCP port that records who connects (where a hostile .env would send passwords)."""

    def __init__(self, address: str, port: int = 5432) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.connections = 0
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.stop = True
        self.thread.join()
        self.sock.close()


def test_passwords_go_to_the_configured_server_never_where_the_archive_points(victim):
    h, good, d = victim
    elsewhere = "127.0.0.251"
    bad = kit.repack(good, d / "elsewhere.tar.gz", kit.edit_member(
        "env", lambda b: b.replace(f"WARDEN_DB_IP={h.address}".encode(),
                                   f"WARDEN_DB_IP={elsewhere}".encode())))
    before = everything(h)
    trap = Listener(elsewhere)
    try:
        # The installation's own .env names the server: the archive's is not used.
        res = cli(h, "restore", str(bad), "--dry-run", "--json")
        assert res.returncode == 0, res.stderr
        plan = json.loads(res.stdout)
        assert plan["connections"]["memory_db.sql"]["address"] == f"{h.address}:5432"
        assert any(f"server     {h.address}:5432 from this installation's" in line
                   for line in plan["plan"])
        # No .env here and no clawdie.db_host: refused, naming the address, before any
        # connection; the flag is the operator's confirmation.
        os.rename(h.root / ".env", d / "env.aside")
        try:
            res = cli(h, "restore", str(bad), "--dry-run")
            err = " ".join(res.stderr.split())
            assert res.returncode == 1 and f"{elsewhere}:5432" in err
            assert "--use-archive-server" in err and "archive's .env alone" in err
            assert trap.connections == 0
            res = cli(h, "restore", str(bad), "--dry-run", "--use-archive-server")
            assert res.returncode == 1 and trap.connections >= 1  # where it was told to go
        finally:
            os.rename(d / "env.aside", h.root / ".env")
    finally:
        trap.close()
    assert everything(h) == before


def test_an_archived_env_is_read_without_expanding_variables(victim):
    """`${CI_SECRET}` in an archived .env stays literal: it must not become the CI's
    secret (sent to the database as a password). With expansion, the real password placed
    in CI_SECRET would have logged in."""
    h, good, d = victim
    bad = kit.repack(good, d / "interp.tar.gz", kit.edit_member("env", lambda b: re.sub(
        rb"(?m)^MEMORY_DB_PASSWORD=.*$", b"MEMORY_DB_PASSWORD=${CI_SECRET}", b)))
    assert b"\nMEMORY_DB_PASSWORD=${CI_SECRET}\n" in dict(
        (i.name.rsplit("/", 1)[-1], data) for i, data in kit.read(bad)[1])["env"]
    res = cli(h, "restore", str(bad), "--dry-run", env={"CI_SECRET": content.MEMORY_PASSWORD})
    assert res.returncode == 1
    assert "refused the password for memory_db" in " ".join(res.stderr.split())
    os.environ["CI_SECRET"] = "expanded"
    try:
        trust = signing.Trust()
        trust.add(signing.public_of(kit.KIT_KEY))
        v = verify(bad, Keys(trust))
        assert v.env["MEMORY_DB_PASSWORD"] == "${CI_SECRET}"
    finally:
        del os.environ["CI_SECRET"]


# -- encryption at rest ----------------------------------------------------------------------
def age_identity(folder: Path) -> tuple[Path, str]:
    ident = folder / "age-identity.txt"
    subprocess.run(["age-keygen", "-o", str(ident)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(ident)], check=True,
                               capture_output=True, text=True).stdout.strip()
    return ident, recipient


def test_encrypted_backup_restores_and_drills_with_the_identity_only(host, tmp_path):
    ident, recipient = age_identity(tmp_path)
    original = everything(host)
    set_config(host, encryption={"recipients": [recipient]})
    res = cli(host, "backup", "--json", check=True)
    archive = Path(json.loads(res.stdout)["archive"])
    assert archive.name.endswith(".tar.zst.age")
    assert archive.read_bytes().startswith(b"age-encryption.org/v1\n")
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert sorted(p.name for p in archive.parent.iterdir()) == [archive.name]  # no plaintext
    with pytest.raises(tarfile.ReadError):
        tarfile.open(archive)  # nothing readable without the identity

    res = cli(host, "inspect", str(archive))
    assert res.returncode == 1
    assert "encrypted (age) and no identity" in res.stderr
    assert "clawdie.encryption.identity" in res.stderr
    (tmp_path / "wrong").mkdir()
    wrong, _ = age_identity(tmp_path / "wrong")
    set_config(host, encryption={"recipients": [recipient], "identity": str(wrong)})
    res = cli(host, "inspect", str(archive))
    assert res.returncode == 1 and "age cannot decrypt" in res.stderr
    assert "not one of its recipients" in " ".join(res.stderr.split())

    set_config(host, encryption={"recipients": [recipient], "identity": str(ident)})
    data = json.loads(cli(host, "inspect", str(archive), "--json", check=True).stdout)
    assert data["encrypted"] and data["signed_by"]["fingerprint"] == fingerprint(host_key(host))
    res = cli(host, "drill", str(archive), "--json")
    assert res.returncode == 0, res.stderr

    with host.db_connect("memory") as conn:
        conn.execute("TRUNCATE users CASCADE")
    (host.root / "groups" / "main" / "CLAUDE.md").write_text("changed\n")
    res = cli(host, "restore", str(archive), "--yes", "--json")
    assert res.returncode == 0, res.stderr
    stop_agent(host)
    assert everything(host)["state"] == original["state"]


# -- smaller fixes --------------------------------------------------------------------------
def test_the_archive_copy_on_the_new_host_is_created_0600(rig, tmp_path):
    """The SFTP `.partial` exists with mode 0600 from its first byte, not chmodded later."""
    from invoke import Context

    from clawdie_ops.hosts import ssh, transfer
    target = rig.new_host(ssh=True, populated=False, datasets=False)
    try:
        h = ssh.resolve(Context(), target.alias, str(rig.ssh_config))
        files = transfer.SftpFiles(lambda: _opened(ssh.connect(h)), target.alias)
        path = str(target.home / "copy.partial")
        fh = files.open_write(path, 0)
        try:
            assert stat.S_IMODE(files.sftp().stat(path).st_mode) == 0o600
            fh.write(b"abc")
        finally:
            fh.close()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert Path(path).read_bytes() == b"abc"
        files.reset()
    finally:
        rig.drop(target)


def _opened(conn):
    conn.open()
    return conn
