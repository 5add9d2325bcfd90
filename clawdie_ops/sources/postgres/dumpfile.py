"""Plain-SQL dumps from pg_dump: the roles they name, the version that wrote them, owner mapping.

pg_dump writes one statement per line for the parts read here (`ALTER ... OWNER TO role;`,
`GRANT ... TO role;`), and table data between `COPY ... FROM stdin;` and `\\.`, which is
skipped so that row data is never mistaken for a statement.

psql meta-commands (a line starting with a backslash: `\\! cmd` runs a shell command as
whoever runs psql) are recorded, with their line number, for the caller to refuse; pg_dump
17.6+ writes exactly one pair, `\\restrict KEY` first and `\\unrestrict KEY` last, which
is allowed and replaced by a comment in what `feed` returns: the replay runs under a
`\\restrict` key of its own (psql refuses a second `\\restrict`), which a dump cannot know.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from typing import IO
from dataclasses import dataclass, field
from pathlib import Path

_IDENT = rb'("(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_OWNER = re.compile(rb"^(ALTER .+ OWNER TO )" + _IDENT + rb";\n?$")
_GRANT = re.compile(rb"^(GRANT .+ TO |REVOKE .+ FROM )" + _IDENT + rb"( WITH GRANT OPTION)?;\n?$")
_FOR_ROLE = re.compile(rb"^(ALTER DEFAULT PRIVILEGES FOR ROLE )" + _IDENT + rb"( .*)$", re.DOTALL)
_COPY = re.compile(rb"^COPY .+ FROM stdin;\n?$")
_VERSION = re.compile(rb"^-- Dumped by pg_dump version (\d+)(?:\.(\d+))?")
# The statements a plain dump makes its extensions with (and drops them, with --clean).
_EXTENSION = re.compile(rb"^(?:CREATE EXTENSION IF NOT EXISTS |DROP EXTENSION IF EXISTS |"
                        rb"COMMENT ON EXTENSION )" + _IDENT + rb"(?: WITH SCHEMA " + _IDENT +
                        rb"|(?: IS '(?:[^'\n]|'')*'))?;\n?$")
_RESTRICT = re.compile(rb"^\\(restrict|unrestrict) ([A-Za-z0-9]+)\r?\n?$")
RESTRICT_DROPPED = b"-- pg_dump's restrict line: the replay runs under a key of its own\n"
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
    extensions: set[str] = field(default_factory=set)  # what its CREATE EXTENSION lines make
    pg_dump_major: int | None = None
    pg_dump_version: str | None = None
    meta: list[tuple[int, str]] = field(default_factory=list)  # (line, text): refused
    restrict_key: str | None = None  # pg_dump's own \restrict key, when it wrote one


class Scanner:
    """Fed a dump line by line (bytes); collects DumpFacts, can map role names and skip the
    dump's extension statements (restore and drill create the extensions beforehand, as
    db_admin: the app user that replays may neither create nor drop them)."""

    def __init__(self, role_map: dict[str, str] | None = None,
                 skip_extensions: bool = False) -> None:
        self.facts = DumpFacts()
        self.in_copy = False
        self.role_map = role_map or {}
        self.skip_extensions = skip_extensions
        self.at_start = True  # False while feeding the rest of a line longer than a read
        self.line = 0
        self.unrestricted = False

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
        self.line += 1
        if self.in_copy:
            if line.rstrip(b"\n") == b"\\.":
                self.in_copy = False
            return line
        if line.lstrip(b" \t").startswith(b"\\"):
            return self._meta(line)
        if not line.startswith((b"ALTER ", b"GRANT ", b"REVOKE ", b"COPY ", b"-- Dumped by",
                                b"CREATE EXTENSION ", b"DROP EXTENSION ", b"COMMENT ON EXT")):
            return line
        if line.startswith((b"CREATE EXTENSION ", b"DROP EXTENSION ", b"COMMENT ON EXT")):
            m = _EXTENSION.match(line)
            if m is None:
                return line
            if line.startswith(b"CREATE "):
                self.facts.extensions.add(unquote(m.group(1)))
            if not self.skip_extensions:
                return line
            return b"-- (clawdie-ops: made by db_admin before the replay) " + line
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

    def feed_block(self, block: bytes) -> bytes:
        """feed() for a block of lines (each ending in a newline but perhaps the last, a
        piece of a long line): the same facts, lines and result, but COPY data, most of a
        dump, passes in one slice, found and counted at C speed, not line by line."""
        out = []
        pos, n = 0, len(block)
        while pos < n:
            if self.in_copy and self.at_start:
                end = _copy_end(block, pos)
                data = block[pos:] if end < 0 else block[pos:end]
                if data:
                    self.line += data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
                    self.at_start = data.endswith(b"\n")
                    out.append(data)
                    pos += len(data)
                    continue
            nl = block.find(b"\n", pos)
            line = block[pos:] if nl < 0 else block[pos:nl + 1]
            out.append(self.feed(line))
            pos += len(line)
        return b"".join(out)

    def _meta(self, line: bytes) -> bytes:
        """A backslash command: pg_dump's one \\restrict ... \\unrestrict pair, or refused."""
        m = _RESTRICT.match(line)
        f = self.facts
        if m and not self.unrestricted:
            key = m.group(2).decode()
            if m.group(1) == b"restrict" and f.restrict_key is None and not f.meta:
                f.restrict_key = key
                return RESTRICT_DROPPED
            if m.group(1) == b"unrestrict" and f.restrict_key == key:
                self.unrestricted = True
                return RESTRICT_DROPPED
        if len(f.meta) < 10:
            f.meta.append((self.line, line[:120].decode(errors="replace").rstrip("\r\n")))
        return line

    def map_lines(self, lines: Iterable[bytes]) -> Iterator[bytes]:
        for line in lines:
            yield self.feed(line)


def _copy_end(block: bytes, pos: int) -> int:
    """Where the line that ends COPY data (`\\.`) starts in `block`, from the line start
    `pos` on; -1 when the block holds none."""
    if block.startswith(b"\\.\n", pos) or block[pos:] == b"\\.":
        return pos
    i = block.find(b"\n\\.\n", pos)
    if i >= 0:
        return i + 1
    return len(block) - 2 if block.endswith(b"\n\\.") and len(block) - 3 >= pos else -1


def scan(lines: Iterable[bytes]) -> DumpFacts:
    sc = Scanner()
    for line in lines:
        sc.feed(line)
    return sc.facts


def rewrite_owners(path: Path, role_map: dict[str, str], chunk: int = 1 << 20,
                   skip_extensions: bool = False) -> None:
    """Map role names in a dump file in place (through a 0600 sibling, then renamed); with
    `skip_extensions`, its extension statements become comments."""
    tmp = path.with_name(path.name + ".mapped")
    sc = Scanner(role_map, skip_extensions)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(path, "rb") as src, os.fdopen(fd, "wb", buffering=chunk) as out:
        for block in blocks(src, chunk):
            out.write(sc.feed_block(block))
    os.replace(tmp, path)


def blocks(fh: IO[bytes], chunk: int = 1 << 20) -> Iterator[bytes]:
    """Whole lines, about `chunk` bytes at a time, for Scanner.feed_block (a few large reads
    instead of one per line: through tarfile's stream, reads per line were half of staging's
    time); a line longer than `chunk` comes in pieces (Scanner knows a piece from a line
    start)."""
    carry = b""
    while data := fh.read(chunk):
        if carry:
            data, carry = carry + data, b""
        cut = data.rfind(b"\n") + 1
        if cut == 0 and len(data) < chunk:
            carry = data  # the start of a line: wait for its end
            continue
        if cut == 0:
            cut = len(data)  # a long line: hand over this piece
        yield data[:cut]
        carry = data[cut:]
    if carry:
        yield carry
