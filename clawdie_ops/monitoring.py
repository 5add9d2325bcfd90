"""Tell monitoring how a run went: healthchecks.io-style pings and node_exporter textfile metrics.

Settings, `clawdie.monitoring`:
  ping_url: a URL for every job, or {backup: URL, prune: URL, drill: URL, replicate: URL}.
    `URL/start` when the job starts, `URL` on success, `URL/fail` on failure, the last lines
    of the run's output as the POST body (healthchecks.io; Uptime Kuma and others accept it).
  textfile: a .prom file for node_exporter's textfile collector, rewritten atomically.

Monitoring never fails a run: a ping that cannot get through is retried a few times with a
short timeout, then reported as a warning; so is a textfile that cannot be written.
"""
from __future__ import annotations

import fcntl
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from .archive.catalog import count_archives  # noqa: F401 -- prune's and backup's import

JOBS = ("backup", "prune", "drill", "replicate")
DEFAULTS: dict[str, Any] = {"ping_url": "", "textfile": "", "ping_timeout_s": 5,
                            "ping_retries": 3}
BODY_LINES = 20
BODY_MAX = 10_000  # healthchecks.io keeps the first 100 KB; the tail is what matters


# -- pings -----------------------------------------------------------------------------
def ping_url_for(cfg: Mapping[str, Any], job: str) -> str:
    raw = cfg.get("ping_url") or ""
    if isinstance(raw, str):
        return raw
    return str(dict(raw).get(job) or "")  # a mapping (invoke hands over its own kind)


def _with_suffix(url: str, suffix: str, rid: str) -> str:
    """URL + /start or /fail before any query string, with a run id pairing start and end."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path.rstrip("/") + suffix if suffix else parts.path
    query = "&".join(q for q in (parts.query, f"rid={rid}") if q)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, query, parts.fragment))


@dataclass
class Pinger:
    url: str
    timeout_s: float = 5
    retries: int = 3
    sleep: Callable[[float], None] = time.sleep
    rid: str = field(default_factory=lambda: str(uuid.uuid4()))
    warnings: list[str] = field(default_factory=list)

    def start(self) -> bool:
        return self._send("/start", "")

    def success(self, body: str) -> bool:
        return self._send("", body)

    def fail(self, body: str) -> bool:
        return self._send("/fail", body)

    def _send(self, suffix: str, body: str) -> bool:
        if not self.url:
            return True
        target = _with_suffix(self.url, suffix, self.rid)
        data = body[-BODY_MAX:].encode("utf-8", "replace")
        last = ""
        for attempt in range(1, max(1, self.retries) + 1):
            req = urllib.request.Request(target, data=data, method="POST",
                                         headers={"User-Agent": "clawdie-ops"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    if resp.status < 400:
                        return True
                    last = f"HTTP {resp.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
                if exc.code < 500 and exc.code != 429:
                    break  # the URL is wrong: retrying will not help
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last = str(getattr(exc, "reason", None) or exc)
            if attempt < self.retries:
                self.sleep(0.5 * attempt)
        self.warnings.append(f"monitoring ping {_safe(target)} failed: {last} "
                             "(the run itself is not affected)")
        return False


def _safe(url: str) -> str:
    """The ping URL without its secret part (a healthchecks.io UUID or a push token)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/…"


def body(lines: Iterable[str], extra: str = "") -> str:
    text = [ln for ln in lines if ln.strip()]
    if extra:
        text.append(extra)
    return "\n".join(text[-BODY_LINES:])


# -- textfile metrics ------------------------------------------------------------------
HELP = {
    "last_success_timestamp_seconds": "Unix time the last successful {job} ended",
    "last_failure_timestamp_seconds": "Unix time the last failed {job} ended",
    "duration_seconds": "Seconds the last successful {job} took",
}


def job_metrics(job: str, ok: bool, ended: float, result: Mapping[str, Any] | None
                ) -> dict[str, tuple[str, list[tuple[dict[str, str], float]]]]:
    """name -> (help, [(labels, value)]) for one finished run of `job`."""
    m: dict[str, tuple[str, list[tuple[dict[str, str], float]]]] = {}

    def put(name: str, help_: str, value: float, labels: dict[str, str] | None = None) -> None:
        m.setdefault(f"clawdie_{job}_{name}", (help_, []))[1].append((labels or {}, value))

    if not ok:
        put("last_failure_timestamp_seconds", HELP["last_failure_timestamp_seconds"]
            .format(job=job), ended)
        return m
    r = dict(result or {})
    put("last_success_timestamp_seconds", HELP["last_success_timestamp_seconds"]
        .format(job=job), ended)
    if "duration_s" in r:
        put("duration_seconds", HELP["duration_seconds"].format(job=job), float(r["duration_s"]))
    if job == "backup":
        put("size_bytes", "Size of the last archive written, bytes", float(r.get("size", 0)))
        for item, tables in (r.get("tables") or {}).items():
            for table, rows in tables.items():
                put("table_rows", "Rows per table in the last archive (manifest counts)",
                    float(rows), {"item": str(item), "table": str(table)})
    if job in ("backup", "prune") and r.get("archives_in_dir") is not None:
        m["clawdie_backup_archives"] = ("clawdie-backup archives in the backup directory",
                                        [({}, float(r["archives_in_dir"]))])
    if job == "prune":
        put("removed", "Archives the last prune removed", float(len(r.get("removed", []))))
    return m


def write_textfile(path: Path, metrics: Mapping[str, tuple[str, list[tuple[dict, float]]]]
                   ) -> None:
    """Replace `metrics` in the .prom file, keep every other metric it holds; atomically.

    A lock beside the file keeps a backup and a drill finishing together from losing one
    another's update."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # here, not atop the module: every backup counts its archives through this module
        from prometheus_client import CollectorRegistry, Gauge, write_to_textfile
        from prometheus_client.parser import text_string_to_metric_families

        registry = CollectorRegistry()
        kept = []
        if path.exists():
            for fam in text_string_to_metric_families(path.read_text()):
                if fam.name not in metrics:
                    kept.append(fam)
        registry.register(_Carry(kept))
        for name, (help_, samples) in metrics.items():
            labels = sorted({k for lab, _ in samples for k in lab})
            g = Gauge(name, help_, labels, registry=registry)
            for lab, value in samples:
                (g.labels(**lab) if labels else g).set(value)
        write_to_textfile(str(path), registry)
        os.chmod(path, 0o644)  # node_exporter runs as its own user


class _Carry:
    """Metrics already in the file that this run does not touch."""

    def __init__(self, families: list) -> None:
        self.families = families

    def collect(self):
        return iter(self.families)


# -- a run -----------------------------------------------------------------------------
class Run:
    """One monitored run: ping start, then success or failure, and the textfile."""

    def __init__(self, job: str, cfg: Mapping[str, Any] | None) -> None:
        self.job = job
        self.cfg = {**DEFAULTS, **dict(cfg or {})}
        self.started = time.time()
        self.pinger = Pinger(ping_url_for(self.cfg, job), float(self.cfg["ping_timeout_s"]),
                             int(self.cfg["ping_retries"]))
        self.warnings = self.pinger.warnings

    @property
    def active(self) -> bool:
        return bool(self.pinger.url or self.cfg.get("textfile"))

    def start(self) -> None:
        self.pinger.start()

    def finish(self, ok: bool, result: Mapping[str, Any] | None, lines: Iterable[str],
               error: str = "") -> None:
        text = body(lines, error)
        if ok:
            self.pinger.success(text)
        else:
            self.pinger.fail(text)
        textfile = str(self.cfg.get("textfile") or "")
        if textfile and not (result or {}).get("dry_run"):
            try:
                write_textfile(Path(textfile).expanduser(),
                               job_metrics(self.job, ok, time.time(), result))
            except (OSError, ValueError) as exc:
                self.warnings.append(f"monitoring textfile {textfile} not written: {exc}")
