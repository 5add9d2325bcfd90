"""clawdie.restore_maintenance_work_mem reaches the server session that replays a dump:
pgvector's HNSW build of memories says so in the server's log when its graph outgrows the
session's maintenance_work_mem, which a tiny setting makes it do and the default does not."""
from __future__ import annotations

import json
import re

from tests.conftest import cli
from tests.helpers import set_config
from tests.rig.content import VECTOR_VALUE

NOTICE = re.compile(r"hnsw graph no longer fits into maintenance_work_mem after (\d+) tuples")


def notices_during(h, run) -> list[int]:
    """The tuple counts of pgvector's 'no longer fits' notices logged while `run` ran."""
    log = h.cluster.log
    start = log.stat().st_size
    run()
    with open(log, "rb") as fh:
        fh.seek(start)
        return [int(n) for n in NOTICE.findall(fh.read().decode(errors="replace"))]


def test_the_replay_session_gets_the_configured_maintenance_work_mem(host, tmp_path):
    with host.db_connect("memory") as conn:
        assert conn.execute("SELECT count(*) FROM pg_indexes WHERE tablename = 'memories' "
                            "AND indexdef LIKE '%USING hnsw%'").fetchone()[0] == 1
        # 1024-dimension vectors, 4 KiB each: 600 of them outgrow 1MB, not the server's 64MB
        conn.execute("INSERT INTO memories (user_id, content, embedding) SELECT 1, 'm', "
                     f"{VECTOR_VALUE} FROM generate_series(1, 600)")
        rows = conn.execute("SELECT count(*) FROM memories").fetchone()[0]
    with host.cluster.connect() as su:  # the app role's sessions log NOTICEs
        su.execute("ALTER ROLE memory_user SET log_min_messages = notice")
    res = cli(host, "backup", "--json", "--no-snapshot", "--output", str(tmp_path), check=True)
    archive = json.loads(res.stdout)["archive"]

    set_config(host, restore_maintenance_work_mem="1MB")
    plan = cli(host, "restore", archive, "--dry-run")
    assert "PGOPTIONS -c maintenance_work_mem=1MB" in plan.stdout, plan.stdout

    def restore() -> None:
        done = cli(host, "restore", archive, "--yes")
        assert done.returncode == 0, done.stderr
    tiny = notices_during(host, restore)
    assert len(tiny) == 1 and 0 < tiny[0] < rows, tiny  # the replay's build outgrew 1MB

    set_config(host, restore_maintenance_work_mem="1GB")  # the default
    assert notices_during(host, restore) == []
    with host.db_connect("memory") as conn:  # restored, index and all
        assert conn.execute("SELECT count(*) FROM memories").fetchone()[0] == rows
        assert conn.execute("SELECT count(*) FROM pg_indexes WHERE tablename = 'memories' "
                            "AND indexdef LIKE '%USING hnsw%'").fetchone()[0] == 1
