"""A migration's outcome, gathered as data from the journal and the hosts: what moved, the
downtime, each step, what the new host holds after a stop. report.py turns it into text."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ...errors import ClawdieError
from .plan import Step, host_dict

if TYPE_CHECKING:
    from .run import Migration


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


def _steps(m: Migration, failed: Step | None) -> list[dict[str, Any]]:
    """Each step of the plan with what became of it in this run."""
    out = []
    for s in m.plan.steps:
        rec = m.journal.steps.get(s.id) or {}
        state = ("skipped (done earlier)" if s.id in m.skipped else
                 "done" if rec.get("status") == "done" else
                 "failed" if failed and s.id == failed.id else "not run")
        out.append({"id": s.id, "phase": s.phase, "where": s.where, "status": state,
                    "seconds": rec.get("seconds")})
    return out


def _datasets(syncs: list[dict[str, Any]]) -> dict[str, Any]:
    """Bytes and sends per dataset, over the pre-sync and the final sync."""
    datasets: dict[str, Any] = {}
    for sync in syncs:
        for d in sync.get("datasets", []):
            entry = datasets.setdefault(d.get("source"), {"target": d.get("target"),
                                                          "bytes": 0, "sends": [],
                                                          "children": d.get("children")})
            entry["bytes"] += d.get("bytes") or 0
            entry["sends"].append(d.get("mode"))
            if d.get("set_aside"):
                entry["set_aside"] = d["set_aside"]
    return datasets


def _moved_items(j: Any, backup: dict[str, Any]) -> list[str]:
    """What reached the new host: the final archive's items, the files final-files moved,
    and the databases in the db jail's dataset (checked by their row counts)."""
    items = list(backup.get("items", []))
    if j.done("install-files"):
        items += [i for i in ("env", "messages.db", "groups/", "mount-allowlist.json")
                  if i not in items]
    if j.done("check-new-db"):
        items += ["memory_db, skills_db (in the db jail's dataset)"]
    return items


def report(m: Migration, status: str, failed: Step | None = None, error: str = "",
           undone: list[str] | None = None, problems: list[str] | None = None
           ) -> dict[str, Any]:
    """What the migration did, as data (report.describe_report makes the text of it)."""
    j = m.journal
    w = j.window
    backup = j.result("final-backup")
    syncs = [j.result(s) for s in ("presync", "final-sync") if j.done(s)]
    stopped, healthy = w.get("agent_stopped_at"), w.get("healthy_at")
    steps = _steps(m, failed)
    datasets = _datasets(syncs)
    data: dict[str, Any] = {
        "status": status, "from": host_dict(m.plan.old), "to": host_dict(m.plan.new),
        "resumed": m.resumed, "skipped": m.skipped, "journal": str(m.plan.journal),
        "downtime_s": round(healthy - stopped, 3) if stopped and healthy else None,
        "agent_stopped_at": _iso(stopped), "healthy_at": _iso(healthy),
        "moved": {
            "items": _moved_items(j, backup),
            "archive": {"old": backup.get("archive"), "size": backup.get("size"),
                        "sha256": backup.get("sha256"),
                        "new": (j.result("copy-archive").get("dest") or "").split(":", 1)[-1]
                        or None},
            "tables": backup.get("tables", {}),
            "datasets": datasets,
            "dataset_bytes": sum(d["bytes"] for d in datasets.values()),
        },
        # the new host's own jail datasets, renamed and kept: the operator drops them
        "set_aside": [d["set_aside"] for d in datasets.values() if d.get("set_aside")],
        "copy": {k: v for k, v in j.result("copy-archive").items()
                 if k in ("attempts", "resumed_from", "bytes_sent", "seconds",
                          "already_there", "errors")},
        "restore": {k: v for k, v in j.result("restore").items()
                    if k in ("items", "connections", "safety", "duration_s")},
        "env_changes": j.result("point-env").get("changed", {}),
        # messages.db and the files by what changed (delta.py): bytes, pages, files, seconds
        "delta": {sid: j.result(sid) for sid in ("presync-files", "final-files", "install-files")
                  if j.done(sid)},
        "tools": j.result("tools"),
        "doctor": j.result("doctor").get("status"),
        "checks": [ch.as_dict() for ch in m.checks],
        "steps": steps, "warnings": m.warnings,
        # how the databases moved (pgmove.py), and each step of the window's seconds
        "postgres": {**(j.data.get("pg_path") or {}),
                     "checked": j.result("check-new-db") or None},
        "downtime_steps": {s["id"]: s["seconds"] for s in steps
                           if s["phase"] == "downtime" and s["seconds"] is not None},
        "rollback": rollback_howto(m, status),
    }
    if status == "failed":
        data.update(stopped_at=failed.id if failed else None,
                    stopped_on=m.plan.label(failed.where) if failed else None,
                    error=error, undone=undone or [], problems=problems or [],
                    old_host={"agent_restarted": "started the agent on the old host again"
                              in (undone or []),
                              "agent_running": old_agent_running(m),
                              "changed": "nothing",
                              "added": ([backup.get("archive")] + list(
                                  backup.get("snapshots") or [])
                                  if j.done("final-backup") else [])},
                    new_host=new_holds(m))
    return data


def rollback_howto(m: Migration, status: str) -> list[str]:
    old, new = m.plan.old, m.plan.new
    if status != "done":
        return [f"the old host {old.label} stays the live one; run the same migrate "
                "command again to continue"]
    # the databases moved with the db jail: it was stopped on the old host, and starts first
    db = ([f"on {new.label}: {new.tool} migrate-step db-jail-stop",
           f"on {old.label}: {old.tool} migrate-step db-jail-start"]
          if m.opts.pg_path == "dataset" else [])
    return [f"on {new.label}: {new.tool} migrate-step agent-stop",
            f"on {new.label}: {new.tool} migrate-step schedule-pause", *db,
            f"on {old.label}: {old.tool} migrate-step schedule-resume",
            f"on {old.label}: {old.tool} migrate-step agent-start",
            "the old host's data was not changed: it is live again as it was at the "
            "agent stop (what the agent wrote on the new host since is not carried back)"]


def new_holds(m: Migration) -> dict[str, Any]:
    """What the new host holds now, from the journal and a fresh read-only check."""
    holds: dict[str, Any] = {
        "datasets_received": m.journal.done("presync") or m.journal.done("final-sync"),
        "archive": (m.journal.result("copy-archive").get("dest", "").split(":", 1)[-1]
                    if m.journal.done("copy-archive") else None),
        "restored": m.journal.done("restore"),
        "env_pointed": m.journal.done("point-env"),
        "schedule_paused": m.journal.done("pause-new-schedule")
        and not m.journal.done("resume-new-schedule"),
    }
    if "new" in m.ctx and "new" in m.tool_ready:
        try:
            facts = m.step_tool("new", "check", "--role", "target", env=m.db_env)
            holds["agent_running"] = facts.get("agent_running")
            holds["datasets"] = {d: i.get("snapshots", [])[:1] for d, i in
                                 (facts.get("zfs") or {}).get("datasets", {}).items()
                                 if i.get("exists")}
            holds["messages_db"] = (facts.get("sqlite") or {}).get("present", False)
        except ClawdieError as err:
            holds["unreadable"] = err.message
    return holds


def old_agent_running(m: Migration) -> bool | None:
    """Read again, for the report; None when the old host cannot be asked."""
    if "old" not in m.ctx or "old" not in m.tool_ready:
        return None
    try:
        return bool(m.step_tool("old", "agent-status").get("running"))
    except ClawdieError:
        return None
