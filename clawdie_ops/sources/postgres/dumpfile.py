"""Plain-SQL dumps from pg_dump: the roles they name, the version that wrote them, owner mapping.

pg_dump writes one statement per line for the parts read here (`ALTER ... OWNER TO role;`,
`GRANT ... TO role;`), and table data between `COPY ... FROM stdin;` and `\\.`, which is
skipped so that row data is never mistaken for a statement.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

_IDENT = rb'("(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_OWNER = re.compile(rb"^(ALTER .+ OWNER TO )" + _IDENT + rb";\n?$")
_GRANT = re.compile(rb"^(GRANT .+ TO |REVOKE .+ FROM )" + _IDENT + rb"( WITH GRANT OPTION)?;\n?$")
_FOR_ROLE = re.compile(rb"^(ALTER DEFAULT PRIVILEGES FOR ROLE )" + _IDENT + rb"( .*)$", re.DOTALL)
_COPY = re.compile(rb"^COPY .+ FROM stdin;\n?$")
_VERSION = re.compile(rb"^-- Dumped by pg_dump version (\d+)(?:\.(\d+))?")
# Roles every server has: never created, never mapped.
BUILTIN = {"public", "postgres", "pg_database_owner", "current_user", "session_user",
           "current_role"}


def unquote(ident: bytes) -> str:
    text = ident.decode()
    if text.startswith('"'):
        return text[1:-1].replace('""', '"')
    return text.lower()


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class DumpFacts:
    """What a dump needs from the server it is replayed into."""

    roles: set[str] = field(default_factory=set)
    pg_dump_major: int | None = None
    pg_dump_version: str | None = None


class Scanner:
    """Fed a dump line by line (bytes); collects DumpFacts and can map role names."""

    def __init__(self, role_map: dict[str, str] | None = None) -> None:
        self.facts = DumpFacts()
        self.in_copy = False
        self.role_map = role_map or {}
        self.at_start = True  # False while feeding the rest of a line longer than a read

    def _role(self, ident: bytes) -> bytes:
        name = unquote(ident)
        if name.lower() not in BUILTIN:
            self.facts.roles.add(name)
        new = self.role_map.get(name)
        return quote(new).encode() if new else ident

    def feed(self, line: bytes) -> bytes:
        """Record what `line` tells, and return it with mapped role names."""
        start, self.at_start = self.at_start, line.endswith(b"\n")
        if not start:
            return line
        if self.in_copy:
            if line.rstrip(b"\n") == b"\\.":
                self.in_copy = False
            return line
        if not line.startswith((b"ALTER ", b"GRANT ", b"REVOKE ", b"COPY ", b"-- Dumped by")):
            return line
        if _COPY.match(line):
            self.in_copy = True
            return line
        if self.facts.pg_dump_major is None and (m := _VERSION.match(line)):
            self.facts.pg_dump_major = int(m.group(1))
            self.facts.pg_dump_version = f"{m.group(1).decode()}.{(m.group(2) or b'0').decode()}"
            return line
        for rx in (_OWNER, _GRANT, _FOR_ROLE):
            m = rx.match(line)
            if m:
                head, ident, *tail = m.groups()
                rest = b"".join(t or b"" for t in tail)
                end = b"" if rx is _FOR_ROLE else b";" + (b"\n" if line.endswith(b"\n") else b"")
                return head + self._role(ident) + rest + end
        return line

    def map_lines(self, lines: Iterable[bytes]) -> Iterator[bytes]:
        for line in lines:
            yield self.feed(line)


def scan(lines: Iterable[bytes]) -> DumpFacts:
    sc = Scanner()
    for line in lines:
        sc.feed(line)
    return sc.facts


def rewrite_owners(path: Path, role_map: dict[str, str], chunk: int = 1 << 20) -> None:
    """Map role names in a dump file in place (through a 0600 sibling, then renamed)."""
    tmp = path.with_name(path.name + ".mapped")
    sc = Scanner(role_map)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(path, "rb") as src, os.fdopen(fd, "wb", buffering=chunk) as out:
        # Lines longer than `chunk` come in pieces; Scanner knows a piece from a line start.
        while line := src.readline(chunk):
            out.write(sc.feed(line))
    os.replace(tmp, path)
