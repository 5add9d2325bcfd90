"""What a verified archive holds, item by item: for `inspect` and the project's demo."""
from __future__ import annotations

from typing import Any

from .verify import Verified


def describe(v: Verified) -> dict[str, Any]:
    m = v.manifest
    items = []
    for item in m.items:
        members = v.item_members(item)
        entry = m.files.get(item, {})
        row: dict[str, Any] = {"item": item, "kind": entry.get("kind", "file"),
                               "files": len(members), "size": sum(x.size for x in members)}
        if "tables" in entry:
            row["tables"] = entry["tables"]
            row["rows"] = sum(entry["tables"].values())
        for key in ("database", "user", "server_version", "system_identifier",
                    "pg_dump_version", "integrity"):
            if key in entry:
                row[key] = entry[key]
        items.append(row)
    return {"archive": str(v.path), "size": v.archive_size, "compression": v.compression,
            "top": v.top, "verified": True, "format": m.format, "tool_version": m.tool_version,
            "agent_name": m.agent_name, "timestamp": m.timestamp, "host": m.host,
            "items": items, "skipped": m.skipped, "snapshots": m.snapshots,
            "files": {n: {"size": x.size, "sha256": x.sha256} for n, x in v.members.items()}}
