"""Realistic installation content: a Clawdie root, its SQLite store, its two databases."""
from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import psycopg
from psycopg import sql

ZFS = "/usr/sbin/zfs"

# Passwords an operator might really pick: spaces, quotes, dollars, a backslash.
MEMORY_PASSWORD = "mem pass 'q' \"dq\" $HOME$x \\b"
SKILLS_PASSWORD = "sk $ill's \"pw\" x:y"

SQLITE_SCHEMA = """
CREATE TABLE chats (jid TEXT PRIMARY KEY, name TEXT, last_message_time TEXT);
CREATE TABLE messages (id TEXT, chat_jid TEXT, sender TEXT, sender_name TEXT, content TEXT,
  timestamp TEXT, is_from_me INTEGER, PRIMARY KEY (id, chat_jid));
CREATE INDEX idx_timestamp ON messages(timestamp);
CREATE TABLE scheduled_tasks (id TEXT PRIMARY KEY, group_folder TEXT NOT NULL,
  chat_jid TEXT NOT NULL, prompt TEXT NOT NULL, schedule_type TEXT NOT NULL,
  schedule_value TEXT NOT NULL, next_run TEXT, last_run TEXT, last_result TEXT,
  status TEXT DEFAULT 'active', created_at TEXT NOT NULL);
CREATE TABLE task_run_logs (id INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT NOT NULL,
  run_at TEXT NOT NULL, duration_ms INTEGER NOT NULL, status TEXT NOT NULL, result TEXT,
  error TEXT);
CREATE TABLE router_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sessions (group_folder TEXT PRIMARY KEY, session_id TEXT NOT NULL);
CREATE TABLE registered_groups (jid TEXT PRIMARY KEY, name TEXT NOT NULL,
  folder TEXT NOT NULL UNIQUE, trigger_pattern TEXT NOT NULL, added_at TEXT NOT NULL,
  container_config TEXT, requires_trigger INTEGER DEFAULT 1);
"""

PG_SCHEMA = {
    "memory": """
CREATE TABLE users (id serial PRIMARY KEY, handle text UNIQUE NOT NULL, profile jsonb);
CREATE TABLE memories (id bigserial PRIMARY KEY, user_id int REFERENCES users(id),
  content text NOT NULL, embedding real[] NOT NULL, meta jsonb, blob bytea,
  created_at timestamptz DEFAULT now());
CREATE INDEX memories_user ON memories(user_id);
CREATE VIEW recent_memories AS SELECT id, user_id, content FROM memories ORDER BY id DESC LIMIT 10;
CREATE FUNCTION memory_count(uid int) RETURNS bigint LANGUAGE sql STABLE
  AS $$ SELECT count(*) FROM memories WHERE user_id = uid $$;
""",
    "skills": """
CREATE TABLE skills (id serial PRIMARY KEY, name text UNIQUE NOT NULL, body text,
  embedding real[] NOT NULL, meta jsonb, artifact bytea);
CREATE TABLE skill_chunks (id bigserial PRIMARY KEY, skill_id int REFERENCES skills(id),
  chunk text, embedding real[]);
CREATE VIEW skill_names AS SELECT name FROM skills;
CREATE FUNCTION skill_search(q text) RETURNS SETOF skills LANGUAGE sql STABLE
  AS $$ SELECT * FROM skills WHERE name ILIKE '%' || q || '%' $$;
""",
}

# On PostgreSQL 18 (Clawdie's server) memory_db keeps pgvector embeddings, as Clawdie does:
# the extension created by the superuser, the table owned by the app user.
VECTOR_DIM = 1024
VECTOR_MEMORY_SCHEMA = PG_SCHEMA["memory"].replace(
    "embedding real[] NOT NULL", f"embedding vector({VECTOR_DIM}) NOT NULL")
VECTOR_INDEX = ("CREATE INDEX memories_embedding ON memories"
                " USING hnsw (embedding vector_cosine_ops)")
# Made by the server (seeded: the same on every host): a Python loop over 200 x 1024 floats
# cost seconds per host on the shared 2-core machine.
VECTOR_VALUE = (f"(SELECT array_agg(round((random() * 2 - 1)::numeric, 6)::real) "
                f"FROM generate_series(1, {VECTOR_DIM}))::vector")

JUNK = ["data/ipc/req-1.json", "data/health/status.json", "data/sessions/s.log", "tmp/x.tmp",
        "node_modules/pkg/index.js", "dist/index.js", "artifacts/skills.db"]


def _embedding(rng: random.Random, dim: int = 32) -> list[float]:
    return [round(rng.uniform(-1, 1), 6) for _ in range(dim)]


def env_text(values: dict[str, str]) -> str:
    """Render .env lines; single-quoted where needed (python-dotenv's escapes: \\\\ and \\')."""
    lines = ["# Clawdie configuration", ""]
    for key, value in values.items():
        if any(ch in value for ch in " '\"$\\#:"):
            value = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def write_installation(root: Path, home: Path, env: dict[str, str], *, rows: int = 200,
                       seed: int = 7) -> None:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / ".env").write_text(env_text(env))
    (root / ".env").chmod(0o600)
    (root / "store").mkdir(exist_ok=True)
    write_sqlite(root / "store" / "messages.db", rows=rows, rng=rng)
    groups = root / "groups"
    for folder in ("main", "family chat", "work/team alpha"):
        d = groups / folder
        d.mkdir(parents=True, exist_ok=True)
        (d / "CLAUDE.md").write_text(f"# Memory for {folder}\n" + "note\n" * rng.randint(1, 20))
        (d / "config.json").write_text(json.dumps({"folder": folder, "trigger": "@clawdie"}))
    (groups / "main" / "attachments").mkdir(exist_ok=True)
    (groups / "main" / "attachments" / "photo one.bin").write_bytes(rng.randbytes(50_000))
    allow = home / ".config" / "clawdie-cp" / "mount-allowlist.json"
    allow.parent.mkdir(parents=True, exist_ok=True)
    allow.write_text(json.dumps({"allowedRoots": [{"path": str(home / "projects"),
                                                   "allowReadWrite": False}]}, indent=2))
    for rel in JUNK:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("not part of a backup\n")


def write_sqlite(path: Path, *, rows: int, rng: random.Random) -> None:
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.executescript(SQLITE_SCHEMA)
    chats = [(f"{i}@g.us", f"chat {i}", "2026-11-01T00:00:00Z") for i in range(5)]
    con.executemany("INSERT INTO chats VALUES (?,?,?)", chats)
    con.executemany("INSERT INTO messages VALUES (?,?,?,?,?,?,?)", [
        (f"m{i}", chats[i % 5][0], "u", "User", f"hello {i} " + "x" * rng.randint(0, 200),
         f"2026-11-01T00:{i % 60:02d}:00Z", i % 2) for i in range(rows)])
    con.executemany("INSERT INTO scheduled_tasks VALUES (?,?,?,?,?,?,?,?,?,?,?)", [
        (f"t{i}", "main", chats[0][0], "say hi", "cron", "0 9 * * *", None, None, None,
         "active", "2026-11-01") for i in range(10)])
    con.executemany("INSERT INTO task_run_logs (task_id, run_at, duration_ms, status) "
                    "VALUES (?,?,?,?)", [("t1", f"2026-11-{1 + i % 28:02d}", i, "ok")
                                         for i in range(rows // 2)])
    con.executemany("INSERT INTO router_state VALUES (?,?)", [("last_ts", "123"), ("seq", "9")])
    con.executemany("INSERT INTO sessions VALUES (?,?)", [("main", "sess-1"), ("work", "s2")])
    con.executemany("INSERT INTO registered_groups VALUES (?,?,?,?,?,?,?)", [
        (c[0], c[1], f"folder{i}", "@clawdie", "2026-11-01", None, 1)
        for i, c in enumerate(chats)])
    con.commit()
    con.close()


def create_databases(admin: psycopg.Connection, *, memory_db: str = "memory_db",
                     skills_db: str = "skills_db", memory_user: str = "memory_user",
                     skills_user: str = "skills_user") -> None:
    for user, password in ((memory_user, MEMORY_PASSWORD), (skills_user, SKILLS_PASSWORD)):
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(user), sql.Literal(password)))
    for db, user in ((memory_db, memory_user), (skills_db, skills_user)):
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(db), sql.Identifier(user)))


def create_vector_extension(admin_in_db: psycopg.Connection) -> None:
    """pgvector in a database, created by the superuser (as Clawdie's setup does)."""
    admin_in_db.execute("CREATE EXTENSION vector")


def fill_database(conn: psycopg.Connection, key: str, *, rows: int, seed: int = 7,
                  vector: bool = False) -> None:
    """Schema and rows for memory_db or skills_db, owned by the connecting role; with
    `vector`, memory_db's embeddings are pgvector columns with an HNSW index."""
    rng = random.Random(f"{seed}-{key}")
    conn.execute(VECTOR_MEMORY_SCHEMA if vector and key == "memory" else PG_SCHEMA[key])
    with conn.cursor() as cur:
        if key == "memory":
            cur.executemany("INSERT INTO users (handle, profile) VALUES (%s, %s)",
                            [(f"user{i}", json.dumps({"tz": "UTC", "n": i})) for i in range(10)])
            rows_of = [(1 + i % 10, f"memory {i}: it's \"quoted\" \\ tab\t",
                        json.dumps({"tags": ["a", "b"], "score": i}), rng.randbytes(64))
                       for i in range(rows)]
            if vector:
                cur.execute("SELECT setseed(0.7)")
                cur.executemany("INSERT INTO memories (user_id, content, embedding, meta, blob) "
                                f"VALUES (%s, %s, {VECTOR_VALUE}, %s, %s)", rows_of)
                cur.execute(VECTOR_INDEX)
            else:
                cur.executemany("INSERT INTO memories (user_id, content, embedding, meta, blob) "
                                "VALUES (%s, %s, %s, %s, %s)",
                                [(u, t, _embedding(rng), m, b) for u, t, m, b in rows_of])
        else:
            cur.executemany("INSERT INTO skills (name, body, embedding, meta, artifact) "
                            "VALUES (%s, %s, %s, %s, %s)",
                            [(f"skill-{i}", "body " * 20, _embedding(rng),
                              json.dumps({"v": i}), rng.randbytes(32)) for i in range(rows // 4)])
            cur.executemany("INSERT INTO skill_chunks (skill_id, chunk, embedding) "
                            "VALUES (%s, %s, %s)",
                            [(1 + i % max(1, rows // 4), f"chunk {i}", _embedding(rng))
                             for i in range(rows)])
    conn.commit()


def _mountpoint(dataset: str) -> Path:
    import subprocess
    out = subprocess.run([ZFS, "get", "-H", "-o", "value", "mountpoint", dataset],
                         capture_output=True, text=True, check=True).stdout.strip()
    return Path(out)


def bastille_create(pool: str, jails: str, name: str, address: str, *,
                    populated: bool = True) -> None:
    """A jail as `bastille create` makes it on ZFS (its create.sh): POOL/PREFIX/jails/NAME
    holding jail.conf and fstab, the jail's files in the child dataset NAME/root."""
    import subprocess
    ds = f"{pool}/{jails}/{name}"
    for each in (ds, f"{ds}/root"):
        subprocess.run([ZFS, "create", each], capture_output=True, text=True, check=True)
    top, root = _mountpoint(ds), _mountpoint(f"{ds}/root")
    (top / "jail.conf").write_text(
        f"{name} {{\n  exec.start = '/bin/sh /etc/rc';\n  host.hostname = {name};\n"
        f"  mount.devfs;\n  mount.fstab = {top}/fstab;\n  path = {root};\n"
        f"  ip4.addr = lo1|{address};\n}}\n")
    (top / "fstab").write_text(f"/usr/local/bastille/releases/14.3-RELEASE {root}/.bastille "
                               "nullfs ro 0 0\n")
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc" / "rc.conf").write_text(f"# jail {name}\nhostname={name}\n")
    if populated:
        (root / "usr" / "local" / "etc").mkdir(parents=True, exist_ok=True)
        (root / "usr" / "local" / "etc" / f"{name}.conf").write_text(f"{name} = 1\n")
        (root / "data.bin").write_bytes(random.Random(name).randbytes(200_000))
