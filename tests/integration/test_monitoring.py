"""Monitoring on the rig: pings to a real HTTP server on 127.0.0.1, and the node_exporter
textfile read back with prometheus_client's own parser."""
from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from clawdie_ops.monitoring import Pinger
from tests.conftest import cli
from tests.helpers import set_config


class PingServer:
    """healthchecks.io on loopback: records each request; `codes` scripts the answers."""

    def __init__(self, codes: list[int] | None = None) -> None:
        self.requests: list[dict] = []
        self.codes = list(codes or [])
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                n = int(self.headers.get("Content-Length") or 0)
                url = urllib.parse.urlsplit(self.path)
                server.requests.append({"path": url.path,
                                        "query": urllib.parse.parse_qs(url.query),
                                        "body": self.rfile.read(n).decode()})
                code = server.codes.pop(0) if server.codes else 200
                self.send_response(code)
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *a) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/ping/0f3c-secret-uuid"

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def pings():
    s = PingServer()
    yield s
    s.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def metrics(path: Path) -> dict[str, dict[tuple, float]]:
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(path.read_text()):
        for sample in fam.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_backup_pings_start_then_success_with_its_output(host, pings):
    set_config(host, monitoring={"ping_url": pings.url})
    res = cli(host, "backup", "--no-snapshot")
    assert res.returncode == 0, res.stderr
    assert pings.paths() == ["/ping/0f3c-secret-uuid/start", "/ping/0f3c-secret-uuid"]
    start, done = pings.requests
    assert start["query"]["rid"] == done["query"]["rid"], "one run id pairs start and end"
    assert "backup written: " in done["body"] and ".tar.zst" in done["body"]


def test_failed_backup_pings_fail_with_the_error(host, pings):
    set_config(host, monitoring={"ping_url": {"backup": pings.url}})
    res = cli(host, "backup", "--no-snapshot", "--output", str(host.home / "missing"))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert pings.paths() == ["/ping/0f3c-secret-uuid/start", "/ping/0f3c-secret-uuid/fail"]
    assert "output directory does not exist" in pings.requests[1]["body"]
    assert "create it, or pass another with --output" in pings.requests[1]["body"]


def test_dry_run_and_unmonitored_jobs_do_not_ping(host, pings):
    set_config(host, monitoring={"ping_url": {"drill": pings.url}})
    assert cli(host, "backup", "--no-snapshot").returncode == 0
    set_config(host, monitoring={"ping_url": pings.url})
    assert cli(host, "backup", "--no-snapshot", "--dry-run").returncode == 0
    assert pings.requests == []


def test_an_unreachable_ping_never_fails_the_backup(host):
    url = f"http://127.0.0.1:{closed_port()}/ping/0f3c-secret-uuid"
    set_config(host, monitoring={"ping_url": url, "ping_retries": 2, "ping_timeout_s": 1})
    started = time.monotonic()
    res = cli(host, "backup", "--no-snapshot")
    assert res.returncode == 0, res.stderr
    assert "monitoring ping" in res.stderr and "the run itself is not affected" in res.stderr
    assert "0f3c-secret-uuid" not in res.stderr, "the ping URL's token is a secret"
    assert list((host.home / "backups").glob("clawdie-backup-*.tar.zst"))
    assert time.monotonic() - started < 60


def test_ping_retries_a_server_error_then_gives_up_on_a_wrong_url():
    server = PingServer(codes=[500, 503, 200, 404])
    try:
        p = Pinger(server.url, timeout_s=2, retries=3, sleep=lambda s: None)
        assert p.start() is True
        assert len(server.requests) == 3 and p.warnings == []
        assert p.success("done") is False  # 404: the URL is wrong, one try only
        assert len(server.requests) == 4
        assert "HTTP 404" in p.warnings[0]
    finally:
        server.close()


def test_textfile_after_backup_prune_and_drill(host, tmp_path):
    prom = tmp_path / "textfile" / "clawdie.prom"
    set_config(host, monitoring={"textfile": str(prom)})
    res = cli(host, "backup", "--no-snapshot", "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    m = metrics(prom)
    assert m["clawdie_backup_size_bytes"][()] == summary["size"]
    assert m["clawdie_backup_archives"][()] == 1
    assert m["clawdie_backup_duration_seconds"][()] == pytest.approx(summary["duration_s"])
    assert time.time() - m["clawdie_backup_last_success_timestamp_seconds"][()] < 120
    rows = m["clawdie_backup_table_rows"]
    for item, tables in summary["tables"].items():
        for table, n in tables.items():
            assert rows[(("item", item), ("table", table))] == n
    assert len(rows) == sum(len(t) for t in summary["tables"].values())
    assert oct(prom.stat().st_mode & 0o777) == "0o644"

    assert cli(host, "backup", "--no-snapshot").returncode == 0
    res = cli(host, "prune", "--keep-last", "1")
    assert res.returncode == 0, res.stderr
    m = metrics(prom)
    assert m["clawdie_backup_archives"][()] == 1
    assert m["clawdie_prune_removed"][()] == 1
    assert "clawdie_backup_size_bytes" in m, "a prune keeps the backup's metrics"

    res = cli(host, "drill", "--latest", str(host.home / "backups"))
    assert res.returncode == 0, res.stderr
    m = metrics(prom)
    assert time.time() - m["clawdie_drill_last_success_timestamp_seconds"][()] < 300
    assert "clawdie_backup_table_rows" in m and "clawdie_prune_removed" in m
    assert sorted(p.name for p in prom.parent.iterdir()) == [".clawdie.prom.lock",
                                                             "clawdie.prom"]


def test_textfile_records_a_failed_backup(host, tmp_path):
    prom = tmp_path / "clawdie.prom"
    set_config(host, monitoring={"textfile": str(prom)})
    res = cli(host, "backup", "--no-snapshot", "--output", str(host.home / "missing"))
    assert res.returncode == 1
    m = metrics(prom)
    assert time.time() - m["clawdie_backup_last_failure_timestamp_seconds"][()] < 120
    assert "clawdie_backup_last_success_timestamp_seconds" not in m


def test_doctor_exit_codes_are_nagios_codes(host):
    res = cli(host, "doctor")
    assert res.returncode in (1, 2), "the rig has no snapshots yet: warn or fail"
    set_config(host, compression="rar")  # doctor cannot run: UNKNOWN, not a finding
    res = cli(host, "doctor")
    assert res.returncode == 3, (res.returncode, res.stderr)
    assert "compression 'rar' is not known" in res.stderr
