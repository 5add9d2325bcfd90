"""A migration's report as lines for a person (the same data is printed as --json)."""
from __future__ import annotations

from typing import Any

from ...output import human_size


def describe_report(report: dict[str, Any]) -> list[str]:
    """The report as lines for a person. Long on purpose: one line per fact, in the order a
    person reads a report, top to bottom; pieces of it would hide that order."""
    lines = []
    frm, to = report["from"], report["to"]
    lines.append(f"migration {frm['name']} -> {to['name']}: {report['status']}"
                 + (" (continued from an earlier run)" if report.get("resumed") else ""))
    if report.get("note"):
        lines.append(f"  {report['note']}")
    if report.get("status") == "failed":
        lines.append(f"  stopped at: {report.get('stopped_at')} on {report.get('stopped_on')}")
        lines.append(f"  error: {report.get('error')}")
        for u in report.get("undone", []):
            lines.append(f"  undone: {u}")
        for p in report.get("problems", []):
            lines.append(f"  PROBLEM: {p}")
        oh = report.get("old_host") or {}
        lines.append("  old host: nothing changed or deleted" + (
            f"; added: {', '.join(str(a) for a in oh['added'])}" if oh.get("added") else ""))
        holds = report.get("new_host") or {}
        shown = {k: v for k, v in holds.items() if k != "datasets" and v}
        lines.append("  new host holds: " + (", ".join(f"{k}={v}" for k, v in shown.items())
                                             or "nothing from this migration"))
        if holds.get("datasets"):
            lines.append("  new host datasets: " + ", ".join(
                f"{d}@{(s or ['-'])[0]}" for d, s in holds["datasets"].items()))
    for ch in report.get("checks", []):
        if ch["status"] != "ok":
            lines.append(f"  {ch['status']}: {ch['name']}: {ch['detail']}")
    for where, tool in (report.get("tools") or {}).items():
        if tool.get("how") == "installed":
            lines.append(f"  installed clawdie-ops {tool['version']} on the {where} host: "
                         f"{tool['tool']}")
    if report.get("downtime_s") is not None:
        lines.append(f"  downtime: {report['downtime_s']:.1f}s (agent stopped "
                     f"{report['agent_stopped_at']}, healthy on the new host "
                     f"{report['healthy_at']})")
    if report.get("downtime_steps"):
        lines.append("  window steps: " + ", ".join(
            f"{k} {v:.1f}s" if isinstance(v, (int, float)) else f"{k} {v}"  # a stored
            for k, v in report["downtime_steps"].items()))  # report masks "trust-old-key"
    pgm = report.get("postgres") or {}
    if pgm.get("path"):
        how = "moved with the db jail's dataset" if pgm["path"] == "dataset" else \
            "dump and restore"
        checked = pgm.get("checked") or {}
        lines.append(f"  PostgreSQL: {how} ({pgm.get('why')})" + (
            f"; row counts of {checked.get('tables')} tables match the old server's"
            if checked.get("match") else ""))
    moved = report.get("moved") or {}
    if moved.get("items"):
        arch = moved.get("archive") or {}
        lines.append(f"  moved: {', '.join(moved['items'])} " + (
            f"(archive {human_size(arch.get('size') or 0)}, sha256 "
            f"{str(arch.get('sha256'))[:16]}…)" if arch.get("sha256") else "(no archive)"))
    if moved.get("datasets"):
        lines.append(f"  datasets: {len(moved['datasets'])} "
                     f"({human_size(moved.get('dataset_bytes') or 0)} sent)")
    for ds in report.get("set_aside") or []:
        lines.append(f"  new host: its own jail dataset from before the migration is kept as "
                     f"{ds} (with its children): drop it once the migration is confirmed "
                     f"(zfs destroy -r {ds})")
    kept = ((report.get("restore") or {}).get("safety") or {}).get("databases") or {}
    for item, db in kept.items():
        lines.append(f"  new host: its {item.removesuffix('.sql')} from before the restore is "
                     f"kept as {db['database']} at {db['address']}: drop it once the "
                     "migration is confirmed")
    copy = report.get("copy") or {}
    if copy.get("attempts", 0) > 1 or copy.get("resumed_from"):
        lines.append(f"  copy: {copy['attempts']} attempts, resumed from "
                     f"{', '.join(human_size(n) for n in copy.get('resumed_from', []))}")
    for w in report.get("warnings", []):
        lines.append(f"  warning: {w}")
    if report.get("status") == "done":
        lines.append("  to roll back:")
        lines.extend(f"    {r}" for r in report.get("rollback", []))
    lines.append(f"  journal: {report.get('journal')}")
    return lines
