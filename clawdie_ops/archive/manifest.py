"""manifest.json: what an archive holds, with the sizes, checksums and row counts to verify it.

The runbook's fields (agent_name, timestamp, items) plus, per member in `files`: kind, size,
sha256, and for databases the per-table row counts and the versions they came from.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from collections.abc import Mapping
from typing import Any

from ..errors import ArchiveCorrupt

FORMAT = 1
NAME = "manifest.json"

# Where each item lives in an installation; `groups/` covers every groups/... member.
ITEMS = ("messages.db", "memory_db.sql", "skills_db.sql", "env", "groups/",
         "mount-allowlist.json")

MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")


def count_differences(expected: Mapping[str, int], got: Mapping[str, int], *,
                      extra_tables: bool = False) -> list[str]:
    """Each table whose row count differs from `expected`, missing or (unless
    `extra_tables`) not expected at all."""
    wrong = [f"table {t} has {got[t]} rows, manifest says {n}" if t in got
             else f"table {t} is missing" for t, n in expected.items() if got.get(t) != n]
    if not extra_tables:
        wrong += [f"table {t} is not in the manifest" for t in got if t not in expected]
    return wrong


def summary(wrong: list[str], limit: int = 3) -> str:
    more = f" (and {len(wrong) - limit} more)" if len(wrong) > limit else ""
    return "; ".join(wrong[:limit]) + more


def archive_stem(when: datetime) -> str:
    """The runbook's name: clawdie-backup-DD.mmm.YYYY-HHMM (English month, any locale)."""
    return f"clawdie-backup-{when:%d}.{MONTHS[when.month - 1]}.{when:%Y}-{when:%H%M}"


@dataclass
class Manifest:
    agent_name: str
    timestamp: str
    host: str
    tool_version: str
    items: list[str] = field(default_factory=list)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    snapshots: list[str] = field(default_factory=list)
    postgres: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    format: int = FORMAT

    def to_json(self) -> bytes:
        doc = {"format": self.format, "tool": "clawdie-ops", "tool_version": self.tool_version,
               "agent_name": self.agent_name, "timestamp": self.timestamp, "host": self.host,
               "items": self.items, "files": self.files, "snapshots": self.snapshots,
               "postgres": self.postgres, "skipped": self.skipped}
        return json.dumps(doc, indent=2, sort_keys=False).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, origin: str = "manifest.json") -> Manifest:
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ArchiveCorrupt(f"{origin} is not valid JSON: {exc}",
                                 "the archive is damaged; use another copy") from None
        fmt = doc.get("format") if isinstance(doc, dict) else None
        if fmt != FORMAT:
            raise ArchiveCorrupt(
                f"{origin} has format {fmt!r}; this clawdie-ops reads format {FORMAT}",
                "use the clawdie-ops version that wrote it (see tool_version in the manifest)")
        try:
            return cls(agent_name=doc["agent_name"], timestamp=doc["timestamp"],
                       host=doc.get("host", ""), tool_version=doc.get("tool_version", ""),
                       items=list(doc["items"]), files=dict(doc["files"]),
                       snapshots=list(doc.get("snapshots", [])),
                       postgres=dict(doc.get("postgres", {})),
                       skipped=dict(doc.get("skipped", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArchiveCorrupt(f"{origin} lacks a required field: {exc}",
                                 "the archive is damaged or not a clawdie-ops backup") from None

    def database_files(self) -> dict[str, dict[str, Any]]:
        return {n: f for n, f in self.files.items() if f.get("kind") == "postgres"}
