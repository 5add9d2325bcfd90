"""`inv keys`: this host's signing key (public half, fingerprint) and the keys it trusts."""
from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from .base import operator_task, settings

if TYPE_CHECKING:
    from rich.console import Console


@operator_task(help={
    "create": "create the signing key now if there is none (the first backup does it too)",
    "trust": "trust archives signed by this public key (the `ssh-ed25519 AAAA...` line "
             "`clawdie-ops keys` prints on the host that signs): appended to "
             "clawdie.signing.trusted_file",
    "json": "print the keys as JSON",
})
def keys(c, create=False, trust=None, json=False):
    """Show the key backups are signed with here, and the public keys restores trust.

    Give the public key line to the hosts that restore or drill this host's backups
    (clawdie.signing.trusted_keys, or `keys --trust` there). Keep a copy of the private
    key apart from the backups."""
    from ..archive import signing
    from ..output import Reporter

    out = Reporter(as_json=json)
    s = settings(c, require_env=False)
    cfg = dict(s.signing)
    path = signing.key_path(cfg, s.home)
    comment = f"clawdie-ops@{socket.gethostname()}"
    created = False
    if create and not path.exists():
        signing.create_private(path)
        created = True
    added = None
    tfile = signing.trusted_file(cfg, s.home)
    if trust:
        key = signing.parse_public(trust, "--trust")
        added = {"fingerprint": key.fingerprint,
                 "added": signing.add_trusted(tfile, key), "file": str(tfile)}
    own = signing.public_of(signing.load_private(path), comment) if path.exists() else None
    t = signing.trust_from(cfg, s.home)
    data = {"signing": {"path": str(path), "exists": own is not None, "created": created,
                        "public": own.line if own else None,
                            "fingerprint": own.fingerprint if own else None},
            "trusted": [{"fingerprint": k.fingerprint, "public": k.line}
                        for k in t.keys.values()],
            "trusted_from": t.sources, "trusted_file": str(tfile), "trust_added": added}

    def human(con: Console) -> None:
        if own:
            con.print(f"signing key {path}{' (created now)' if created else ''}", markup=False)
            con.print(f"  public key: {own.line}", markup=False)
            con.print(f"  fingerprint: {own.fingerprint}", markup=False)
        else:
            con.print(f"no signing key yet at {path}: the first backup creates it "
                      "(or keys --create)", markup=False)
        if added:
            con.print(f"trusted {added['fingerprint']} in {tfile}"
                      + ("" if added["added"] else " (it was already)"), markup=False)
        con.print(f"trusted keys ({len(t.keys)}), from: {', '.join(t.sources) or 'nowhere'}",
                  markup=False)
        for k in t.keys.values():
            con.print(f"  {k.fingerprint}  {k.line}", markup=False)

    out.result(data, human)
