"""`inv inspect ARCHIVE`: verify an archive and list what it holds."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from invoke import Context

from .base import operator_task, settings
from .positional import help_requested

if TYPE_CHECKING:
    from rich.console import Console


@operator_task(help={
    "archive": "the clawdie-backup-*.tar.gz / .tar.zst archive to look into",
    "json": "print what it holds as JSON (items, sizes, row counts, checksums, signer)",
    "allow-unsigned": "accept an archive that is not signed (made before clawdie-ops signed "
                      "its archives), with a loud warning",
})
def inspect(c: Context, archive, json=False, allow_unsigned=False):
    """Verify an archive and list what it holds: items, sizes, row counts.

    The signature against the trusted keys, every member's checksum and size against the
    manifest, safe member names and types; nothing is extracted."""
    if help_requested("inspect", archive):
        return
    from rich.table import Table
    from rich.text import Text

    from ..archive.contents import describe
    from ..archive.verify import keys_for, verify
    from ..output import Reporter, human_size

    out = Reporter(as_json=json)
    keys = keys_for(settings(c, require_env=False), allow_unsigned)
    with out.step(f"verify {Path(archive).name}"):
        v = verify(Path(archive), keys)
        data = describe(v)
    if v.signer is None:
        out.warn(v.unsigned_warning)

    def human(con: Console) -> None:
        signer = data["signed_by"]
        con.print(f"{data['archive']}: verified ({human_size(data['size'])}, "
                  f"{data['compression']}{', age-encrypted' if data['encrypted'] else ''}, "
                  f"format {data['format']})", markup=False)
        con.print(f"  signed by {signer['fingerprint']} ({signer['comment']})" if signer
                  else "  NOT signed (accepted with --allow-unsigned)", markup=False)
        con.print(f"  agent {data['agent_name']} on {data['host']} at {data['timestamp']}, "
                  f"clawdie-ops {data['tool_version']}", markup=False)
        table = Table(box=None, pad_edge=False)
        for col in ("item", "kind", "files", "size", "rows"):
            table.add_column(col, justify="right" if col in ("files", "size", "rows") else "left")
        for it in data["items"]:
            table.add_row(Text(it["item"]), Text(str(it["kind"])), str(it["files"]),
                          human_size(it["size"]), str(it.get("rows", "")))
        con.print(table)
        for it in data["items"]:
            for name, n in it.get("tables", {}).items():
                con.print(f"  {it['item']}: {name} {n}", markup=False)
        for item, why in data["skipped"].items():
            con.print(f"  skipped: {item} ({why})", markup=False)

    out.result(data, human)
