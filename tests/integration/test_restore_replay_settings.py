"""clawdie.restore_maintenance_work_mem and restore_index_workers reach the server session
that replays a dump: pgvector's HNSW build of memories says so in the server's log, when
its graph outgrows the session's maintenance_work_mem (which a tiny setting makes it do
and the default does not) and how many parallel workers it used (the default: 2; the
server's own way: none, memories' heap being small)."""
from __future__ import annotations

import json
import re

from tests.conftest import cli
from tests.helpers import set_config
from tests.rig.content import VECTOR_VALUE

NOTICE = re.compile(r"hnsw graph no longer fits into maintenance_work_mem after (\d+) tuples")
SERIAL = 'building index "memories_embedding" on table "memories" serially'
PARALLEL = re.compile(r"using (\d+) parallel workers")


def logged_during(h, run) -> str:
    """What the server logged while `run` ran."""
    log = h.cluster.log
    start = log.stat().st_size
    run()
    with open(log, "rb") as fh:
        fh.seek(start)
        return fh.read().decode(errors="replace")


def notices(log: str) -> list[int]:
    """The tuple counts of pgvector's 'no longer fits' notices."""
    return [int(n) for n in NOTICE.findall(log)]


def test_the_replay_session_gets_the_configured_maintenance_work_mem(host, tmp_path):
    with host.db_connect("memory") as conn:
        assert conn.execute("SELECT count(*) FROM pg_indexes WHERE tablename = 'memories' "
                            "AND indexdef LIKE '%USING hnsw%'").fetchone()[0] == 1
        # 1024-dimension vectors, 4 KiB each: 600 of them outgrow 1MB, not the server's 64MB
        conn.execute("INSERT INTO memories (user_id, content, embedding) SELECT 1, 'm', "
                     f"{VECTOR_VALUE} FROM generate_series(1, 600)")
        rows = conn.execute("SELECT count(*) FROM memories").fetchone()[0]
    with host.cluster.connect() as su:  # the app role's sessions log NOTICEs
        su.execute("ALTER ROLE memory_user SET log_min_messages = debug1")
    res = cli(host, "backup", "--json", "--no-snapshot", "--output", str(tmp_path), check=True)
    archive = json.loads(res.stdout)["archive"]

    set_config(host, restore_maintenance_work_mem="1MB", restore_index_workers="")
    plan = cli(host, "restore", archive, "--dry-run")
    assert "PGOPTIONS -c maintenance_work_mem=1MB" in plan.stdout, plan.stdout
    assert "max_parallel" not in plan.stdout, plan.stdout

    def restore() -> None:
        done = cli(host, "restore", archive, "--yes")
        assert done.returncode == 0, done.stderr
    log = logged_during(host, restore)
    tiny = notices(log)
    assert len(tiny) == 1 and 0 < tiny[0] < rows, tiny  # the replay's build outgrew 1MB
    assert SERIAL in log and not PARALLEL.search(log)  # the server's way: memories' heap is small

    set_config(host, restore_maintenance_work_mem="1GB", restore_index_workers=2)  # defaults
    plan = cli(host, "restore", archive, "--dry-run")
    assert ("PGOPTIONS -c maintenance_work_mem=1GB -c max_parallel_maintenance_workers=2 "
            "-c min_parallel_table_scan_size=0") in plan.stdout, plan.stdout
    log = logged_during(host, restore)
    assert notices(log) == []
    assert PARALLEL.findall(log) == ["2"] and SERIAL not in log, log[-2000:]
    with host.db_connect("memory") as conn:  # restored, index and all
        assert conn.execute("SELECT count(*) FROM memories").fetchone()[0] == rows
        assert conn.execute("SELECT count(*) FROM pg_indexes WHERE tablename = 'memories' "
                            "AND indexdef LIKE '%USING hnsw%'").fetchone()[0] == 1
