"""`inv inspect ARCHIVE`: verify an archive and list what it holds."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from invoke import Context

from ..archive.contents import describe
from ..output import Reporter, human_size
from ..archive.verify import verify
from .base import operator_task
from .positional import help_requested


@operator_task(help={
    "archive": "the clawdie-backup-*.tar.gz / .tar.zst archive to look into",
    "json": "print what it holds as JSON (items, sizes, row counts, checksums)",
})
def inspect(c: Context, archive, json=False):
    """Verify an archive and list what it holds: items, sizes, row counts.

    Every member's checksum and size against the manifest, safe member names and types;
    nothing is extracted."""
    if help_requested("inspect", archive):
        return
    out = Reporter(as_json=json)
    with out.step(f"verify {Path(archive).name}"):
        data = describe(verify(Path(archive)))

    def human(con: Console) -> None:
        con.print(f"{data['archive']}: verified ({human_size(data['size'])}, "
                  f"{data['compression']}, format {data['format']})", markup=False)
        con.print(f"  agent {data['agent_name']} on {data['host']} at {data['timestamp']}, "
                  f"clawdie-ops {data['tool_version']}", markup=False)
        table = Table(box=None, pad_edge=False)
        for col in ("item", "kind", "files", "size", "rows"):
            table.add_column(col, justify="right" if col in ("files", "size", "rows") else "left")
        for it in data["items"]:
            table.add_row(it["item"], it["kind"], str(it["files"]), human_size(it["size"]),
                          str(it.get("rows", "")))
        con.print(table)
        for it in data["items"]:
            for name, n in it.get("tables", {}).items():
                con.print(f"  {it['item']}: {name} {n}", markup=False)
        for item, why in data["skipped"].items():
            con.print(f"  skipped: {item} ({why})", markup=False)

    out.result(data, human)
