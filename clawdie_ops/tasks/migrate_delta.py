"""`migrate-delta`: the host side of moving messages.db and the files by what changed, run
by migrate on each host through SSH (the work is in clawdie_ops.actions.migrate.delta)."""
from __future__ import annotations

import json as jsonlib
from pathlib import Path

from invoke import Context

from ..errors import ConfigError
from .base import operator_task
from .migrate import host_side

ACTIONS = ("state", "make", "apply", "install", "undo", "remove-bundle")


@operator_task(help={
    "action": "one of: " + ", ".join(ACTIONS),
    "path": "the bundle for `apply` and `remove-bundle`",
    "stdin": "read {\"config\": overrides, ...} as JSON from standard input (never argv)",
    "json": "print the result as JSON",
})
def migrate_delta(c: Context, action, path=None, stdin=False, json=False):
    """Used by migrate: messages.db and the files by what changed (state, make, apply,
    install, undo). By hand, `undo` on the new host puts back the files a failed migration
    replaced there (they are kept in state_dir's migrate-delta/before-STAMP/)."""
    if action not in ACTIONS:
        raise ConfigError(f"unknown migrate-delta action {action!r}",
                          f"use one of: {', '.join(ACTIONS)}")
    from ..actions.migrate import delta
    from ..output import Reporter

    data, _, s = host_side(c, stdin)
    if action in ("apply", "remove-bundle") and not path:
        raise ConfigError(f"migrate-delta {action} needs --path BUNDLE", "")
    if action == "state":
        result = delta.state(s, bool(data.get("fresh")))
    elif action == "make":
        result = delta.make(c, s, dict(data.get("have") or {}), bool(data.get("final")))
    elif action == "apply":
        result = delta.apply(s, Path(path))
    elif action == "install":
        result = delta.install(c, s)
    elif action == "undo":
        result = delta.undo(s)
    else:
        result = delta.remove_bundle(s, path)
    out = Reporter(as_json=json)
    out.result(result, lambda con: con.print(jsonlib.dumps(result, indent=2, default=str),
                                             markup=False))
