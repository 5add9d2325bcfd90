"""A realistic installation at any scale, bulk-loaded fast and reproducibly from a seed.

Starts from the rig's installation (tests/rig/content.py: same schemas, roles, views,
functions) and adds the bulk a Clawdie host gathers over months: chat messages in
messages.db, memories and skill chunks with 384-dimension REAL[] embeddings in PostgreSQL
(binary COPY, built with numpy), and photo-like attachments in groups/. Text is made of
words drawn at random (compresses like chat text, never repeats whole rows, so no codec
gains from an unrealistically long match window); embeddings are random normal floats
(incompressible in binary, like real ones); attachments are random bytes (like JPEGs).

Scale 1.0 is about 1 GB of state as a backup sees it (what it reads and archives:
messages.db ~120 MB, the two plain SQL dumps ~850 MB, groups/ ~50 MB); PostgreSQL holds
the same rows in about 350 MB on disk, as an embedding's float text is about 2.5 times its
binary size.
"""
from __future__ import annotations

import random
import re
import sqlite3
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DIM = 384  # all-MiniLM-L6-v2's size, a common choice for local embeddings
FLOAT4_OID = 700

# Per 1.0 of scale. Row sizes measured on PostgreSQL 15 / SQLite 3.40 (see `state_bytes`).
MESSAGES = 350_000
MEMORIES = 92_000
SKILLS = 2_000
CHUNKS = 68_000
ATTACHMENTS = 100  # ~500 KB each
ATTACHMENT_BYTES = 500_000

# A small vocabulary with repeats, so common words are common (a crude Zipf).
_BASE = ("the a to and of I you it is in that for on we this be with have not are do at "
         "but so what can was my your me if just like will about get up no all one out "
         "know think time there they when how here need then now good yes make more see "
         "agent memory task schedule message group chat run back check file please thanks "
         "tomorrow today meeting deploy server backup restore database jail postgres sqlite "
         "snapshot remind weather build error log update config token telegram photo link "
         "project review draft note list order price invoice travel train hotel dinner "
         "weekend family kids doctor school music movie book coffee lunch gym budget plan").split()
WORDS: list[str] = ((_BASE[:40] * 3 + _BASE) * 2)[:256]


@dataclass(frozen=True)
class Counts:
    messages: int
    memories: int
    skills: int
    chunks: int
    attachments: int

    def with_vectors(self, dim: int) -> Counts:
        """Fewer memories where each embedding is a pgvector of `dim` floats, not DIM."""
        return Counts(self.messages, self.memories * DIM // dim, self.skills, self.chunks,
                      self.attachments)

    @classmethod
    def at(cls, scale: float) -> Counts:
        if scale <= 0:
            return cls(0, 0, 0, 0, 0)
        return cls(int(MESSAGES * scale), int(MEMORIES * scale), max(1, int(SKILLS * scale)),
                   int(CHUNKS * scale), max(1, int(ATTACHMENTS * scale)))


def _texts(rng: random.Random, n: int, lo: int, hi: int) -> list[str]:
    """n texts of lo..hi random words (C-speed: bytes index the vocabulary)."""
    lengths = [rng.randint(lo, hi) for _ in range(n)]
    pool = rng.randbytes(sum(lengths))
    out, pos = [], 0
    for k in lengths:
        out.append(" ".join(map(WORDS.__getitem__, pool[pos:pos + k])))
        pos += k
    return out


# -- PostgreSQL: binary COPY --------------------------------------------------------------
_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_TRAILER = struct.pack("!h", -1)


def _embeddings(seed: int, n: int) -> np.ndarray:
    """n array_send() bodies of float4[DIM], as one (n, bytes) uint8 array."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((n, DIM), dtype=np.float32) / np.float32(DIM ** 0.5)
    elems = np.empty((n, DIM), dtype=[("len", ">i4"), ("v", ">f4")])
    elems["len"] = 4
    elems["v"] = values
    head = struct.pack("!iiiii", 1, 0, FLOAT4_OID, DIM, 1)
    body = np.frombuffer(elems.tobytes(), dtype=np.uint8).reshape(n, DIM * 8)
    return np.hstack([np.frombuffer(head, dtype=np.uint8)[None, :].repeat(n, 0), body])


def _vectors(seed: int, n: int, dim: int) -> np.ndarray:
    """n vector_send() bodies of pgvector's vector(dim) (int16 dim, int16 0, float4s)."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((n, dim), dtype=np.float32) / np.float32(dim ** 0.5)
    head = struct.pack("!hh", dim, 0)
    body = np.frombuffer(values.astype(">f4").tobytes(), dtype=np.uint8).reshape(n, dim * 4)
    return np.hstack([np.frombuffer(head, dtype=np.uint8)[None, :].repeat(n, 0), body])


def _vector_dim(conn, table: str) -> int | None:
    """The dimension of `table`.embedding when it is pgvector's vector (PostgreSQL 18 rig)."""
    row = conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE "
                       "attrelid = %s::regclass AND attname = 'embedding'", (table,)).fetchone()
    m = re.fullmatch(r"vector\((\d+)\)", row[0] if row else "")
    return int(m.group(1)) if m else None


def vector_dim(conn) -> int:
    """memories.embedding's pgvector dimension (PostgreSQL 18 hosts), or 0 for REAL[]."""
    return _vector_dim(conn, "memories") or 0


def _field(data: bytes) -> bytes:
    return struct.pack("!i", len(data)) + data


def _copy(conn, table: str, columns: str, rows) -> None:
    with conn.cursor() as cur:
        with cur.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)") as cp:
            cp.write(_HEADER)
            buf = []
            for row in rows:
                buf.append(row)
                if len(buf) >= 2000:
                    cp.write(b"".join(buf))
                    buf.clear()
            if buf:
                cp.write(b"".join(buf))
            cp.write(_TRAILER)


def load_memory(conn, n: int, seed: int, start: int = 0) -> None:
    """n memories for 10 users: text, embedding, JSONB meta, a small BYTEA."""
    if n <= 0:
        return
    rng = random.Random(f"{seed}-memories-{start}")
    texts = _texts(rng, n, 20, 90)
    dim = _vector_dim(conn, "memories")
    emb = (_vectors(seed * 1000 + 1 + start, n, dim) if dim else
           _embeddings(seed * 1000 + 1 + start, n))
    blobs = rng.randbytes(64 * n)

    def rows():
        for i in range(n):
            meta = b'\x01{"source": "chat", "score": %d, "tags": ["%s", "%s"]}' % (
                (start + i) % 97, WORDS[i % 256].encode(), WORDS[(i * 7) % 256].encode())
            yield b"".join((struct.pack("!hii", 5, 4, 1 + (start + i) % 10),
                            _field(texts[i].encode()), _field(emb[i].tobytes()), _field(meta),
                            _field(blobs[64 * i:64 * i + 64])))
    # An HNSW index takes each row in turn (minutes at scale 0.25): built once after the load.
    index = conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'memories' AND "
                         "indexdef LIKE '%USING hnsw%'").fetchall()
    for (defn,) in index:
        conn.execute(f"DROP INDEX {defn.split()[2]}")
    _copy(conn, "memories", "user_id, content, embedding, meta, blob", rows())
    if index:  # the loader's own session: the graph in memory (BENCHMARKS.md, restore)
        conn.execute("SET maintenance_work_mem = '1GB'")
    for (defn,) in index:
        conn.execute(defn)


def load_skills(conn, n_skills: int, n_chunks: int, seed: int, start: int = 0,
                chunk_start: int = 0) -> None:
    """Skills (a body and an artifact each) and their embedded chunks."""
    rng = random.Random(f"{seed}-skills-{start}")
    if n_skills > 0:
        bodies = _texts(rng, n_skills, 150, 400)
        emb = _embeddings(seed * 1000 + 2 + start, n_skills)

        def skills():
            for i in range(n_skills):
                yield b"".join((struct.pack("!h", 5), _field(b"bulk-skill-%d" % (start + i)),
                                _field(bodies[i].encode()), _field(emb[i].tobytes()),
                                _field(b'\x01{"v": %d}' % i), _field(rng.randbytes(256))))
        _copy(conn, "skills", "name, body, embedding, meta, artifact", skills())
    if n_chunks > 0:
        first, last = conn.execute("SELECT min(id), max(id) FROM skills").fetchone()
        texts = _texts(rng, n_chunks, 40, 120)
        emb = _embeddings(seed * 1000 + 3 + chunk_start, n_chunks)

        def chunks():
            span = last - first + 1
            for i in range(n_chunks):
                yield b"".join((struct.pack("!hii", 3, 4, first + (chunk_start + i) % span),
                                _field(texts[i].encode()), _field(emb[i].tobytes())))
        _copy(conn, "skill_chunks", "skill_id, chunk, embedding", chunks())
    conn.execute("ANALYZE")


# -- SQLite and files ----------------------------------------------------------------------
def load_messages(path: Path, n: int, seed: int, start: int = 0) -> None:
    rng = random.Random(f"{seed}-messages-{start}")
    con = sqlite3.connect(path)
    con.execute("PRAGMA synchronous=OFF")
    batch = 50_000
    with con:
        for b in range(0, n, batch):
            k = min(batch, n - b)
            texts = _texts(rng, k, 5, 90)
            con.executemany("INSERT INTO messages VALUES (?,?,?,?,?,?,?)", [
                (f"b{start + b + i}", f"{(start + b + i) % 40}@g.us", f"u{(b + i) % 23}",
                 f"User {(b + i) % 23}", texts[i],
                 f"2026-{1 + (b + i) % 12:02d}-{1 + (b + i) % 28:02d}T{(b + i) % 24:02d}:"
                 f"{(b + i) % 60:02d}:{i % 60:02d}Z", (b + i) % 3 == 0) for i in range(k)])
        con.executemany("INSERT INTO task_run_logs (task_id, run_at, duration_ms, status, result)"
                        " VALUES (?,?,?,?,?)",
                        [("t1", f"2026-11-{1 + i % 28:02d}", i % 5000, "ok", t)
                         for i, t in enumerate(_texts(rng, n // 20, 5, 30))])
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


def write_attachments(groups: Path, n: int, seed: int, start: int = 0) -> None:
    rng = random.Random(f"{seed}-attachments-{start}")
    folders = ["main", "family chat", "work/team alpha"]
    for i in range(n):
        d = groups / folders[i % 3] / "attachments"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"photo {start + i:05d}.jpg").write_bytes(rng.randbytes(ATTACHMENT_BYTES))


# -- the whole installation -------------------------------------------------------------
def populate(h, scale: float, seed: int = 7, already: float = 0.0, hnsw: bool = False) -> None:
    """Bring host `h` (a populated rig host) from `already` to `scale` of bulk data; with
    `hnsw`, memories keeps the HNSW index a Clawdie host has."""
    want, have = Counts.at(scale), Counts.at(already)
    with h.db_connect("memory") as conn:
        dim = vector_dim(conn)
        if dim:
            # pgvector hosts: as many embedding bytes as REAL[DIM] rows would hold, and,
            # unless `hnsw`, no HNSW index (building it over the bulk takes minutes here;
            # every restore, by hand or by the tool, would measure pgvector's index build).
            want, have = want.with_vectors(dim), have.with_vectors(dim)
            if not hnsw:
                conn.execute("DROP INDEX IF EXISTS memories_embedding")
    load_messages(h.root / "store" / "messages.db", want.messages - have.messages, seed,
                  start=have.messages)
    with h.db_connect("memory") as conn:
        load_memory(conn, want.memories - have.memories, seed, start=have.memories)
    with h.db_connect("skills") as conn:
        load_skills(conn, want.skills - have.skills, want.chunks - have.chunks, seed,
                    start=have.skills, chunk_start=have.chunks)
    write_attachments(h.root / "groups", want.attachments - have.attachments, seed,
                      start=have.attachments)
    for key in ("memory", "skills"):
        with h.db_connect(key) as conn:
            conn.execute("VACUUM ANALYZE")


def state_bytes(h) -> dict[str, int]:
    """What the installation holds on disk, per item."""
    sizes = {"messages.db": (h.root / "store" / "messages.db").stat().st_size}
    for key in ("memory", "skills"):
        with h.db_connect(key) as conn:
            sizes[f"{key}_db"] = conn.execute(
                "SELECT pg_database_size(current_database())").fetchone()[0]
    sizes["groups/"] = sum(p.stat().st_size for p in (h.root / "groups").rglob("*")
                           if p.is_file())
    return sizes


# -- jail datasets and changes between a sync and a cut-over ------------------------------
JAIL_BYTES = {"git": 150_000_000, "cms": 100_000_000, "management": 20_000_000,
              "db": 10_000_000}


def fill_datasets(h, scale: float, seed: int) -> None:
    """Jail filesystem content (git repositories, CMS uploads, logs) for the migration pair.

    The db jail's dataset also holds PostgreSQL's data directory (as on a real host)."""
    rng = random.Random(f"{seed}-datasets")
    for jail, size in JAIL_BYTES.items():
        mnt = h.pool.mount_of(h.dataset(jail))
        want = int(size * scale)
        n = max(1, want // 1_000_000)
        for i in range(n):
            body = (_texts(rng, 1, 170_000, 170_000)[0].encode()[:1_000_000]
                    if jail in ("git", "management") else rng.randbytes(1_000_000))
            (mnt / f"bulk-{i:04d}.dat").write_bytes(body)


def dataset_bytes(h) -> int:
    from tests.rig.hosts import JAILS
    return sum(p.stat().st_size for j in JAILS for p in h.pool.mount_of(h.dataset(j)).rglob("*")
               if p.is_file())


def mutate(h, share: float, seed: int) -> None:
    """Change `share` of the installation the way a running agent does: new messages, new
    memories and skill chunks, new attachments, new and rewritten jail files."""
    path = h.root / "store" / "messages.db"
    con = sqlite3.connect(path)
    n_msg = con.execute("SELECT count(*) FROM messages").fetchone()[0]
    con.close()
    load_messages(path, int(n_msg * share), seed, start=10_000_000 + seed * 100_000)
    with h.db_connect("memory") as conn:
        n = conn.execute("SELECT count(*) FROM memories").fetchone()[0]
        load_memory(conn, max(1, int(n * share)), seed, start=10_000_000 + seed * 100_000)
    with h.db_connect("skills") as conn:
        n = conn.execute("SELECT count(*) FROM skill_chunks").fetchone()[0]
        load_skills(conn, 0, max(1, int(n * share)), seed, chunk_start=seed * 100_000)
    groups = h.root / "groups"
    n_att = sum(1 for _ in groups.rglob("photo *"))
    write_attachments(groups, max(1, int(n_att * share)), seed, start=10_000 + seed * 100)
    rng = random.Random(f"{seed}-mutate")
    for jail in ("git", "cms", "management"):
        mnt = h.pool.mount_of(h.dataset(jail))
        total = sum(p.stat().st_size for p in mnt.rglob("*") if p.is_file())
        (mnt / f"changed-{seed}.dat").write_bytes(rng.randbytes(max(1, int(total * share))))


def _main(argv: list[str]) -> int:
    """`python -m bench.data mutate STATE.json`: mutate() on the host the file describes
    (run by bench/syncoid_hook.py between the pre-sync and the cut-over)."""
    import json

    from tests.rig.hosts import SimHost
    from tests.rig.postgres import Cluster
    from tests.rig.services import Pool

    if len(argv) != 2 or argv[0] != "mutate":
        print("usage: python -m bench.data mutate STATE.json")
        return 2
    st = json.loads(Path(argv[1]).read_text())
    base = Path(st["base"])
    h = SimHost(st["name"], st["address"], base, Pool(st["pool"], Path(), Path()),
                Cluster(Path(st.get("datadir") or base / "pg" / "data"), st["address"]))
    mutate(h, st["share"], st["seed"])
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
