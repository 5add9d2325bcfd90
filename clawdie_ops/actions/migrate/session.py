"""The two hosts of a migration as the run sees them: a Context for each, the clawdie-ops
there, its temporary config files, and the commands the steps run on them."""
from __future__ import annotations

import dataclasses
import shlex
import threading
from collections.abc import Mapping
from typing import Any

from invoke import Context

from ...errors import ClawdieError
from ...hosts import remote, transfer
from .journal import Journal
from .plan import Options, Plan, Step, make_steps


class HostSession:
    """Contexts per host (opened by the connect step), the tools found there, temp configs."""

    def __init__(self, c: Context, cfg: Mapping[str, Any], plan: Plan, opts: Options,
                 journal: Journal) -> None:
        self.c = c
        self.cfg = cfg
        self.plan = plan
        self.opts = opts
        self.journal = journal
        self.ctx: dict[str, Any] = {}
        self.facts: dict[str, dict[str, Any]] = {}  # each host's preflight facts
        self.temp_configs: dict[str, str] = {}
        # hosts whose clawdie-ops is known to run: this machine, and what the tools step found
        self.tool_ready = {w for w in ("old", "new") if plan.host(w).local}
        self.lock = threading.RLock()
        self.warnings: list[str] = []

    def tool(self, where: str, *args: str, stdin: Any = None, config: bool = False,
             ok_codes: tuple[int, ...] = (0,)) -> dict[str, Any]:
        h = self.plan.host(where)
        cfg_file = self.temp_config(where) if config else None
        result, _ = remote.run_tool(self.ctx[where], h, *args, stdin=stdin,
                                    config_file=cfg_file, ok_codes=ok_codes)
        return result

    def run_plan_step(self, step: Step, values: Mapping[str, str] | None = None,
                      ok_codes: tuple[int, ...] = (0,), **extra: Any) -> dict[str, Any]:
        """Run the step's own command on its host: the argv the plan shows, filled in."""
        where = step.host_key
        h = self.plan.host(where)
        cfg_file = self.temp_config(where) if step.config else None
        stdin = {"config": h.settings_overrides(), **extra} if step.stdin else None
        result, _ = remote.run_argv(self.ctx[where], h, step.argv(h, cfg_file, values),
                                    stdin=stdin, ok_codes=ok_codes)
        return result

    def step_tool(self, where: str, action: str, *args: str, **extra: Any) -> dict[str, Any]:
        h = self.plan.host(where)
        return self.tool(where, "migrate-step", action, *args, "--stdin", "--json",
                         stdin={"config": h.settings_overrides(), **extra})

    def temp_config(self, where: str) -> str | None:
        with self.lock:  # steps run in threads in the downtime window
            if where in self.temp_configs:
                return self.temp_configs[where]
            data = self.config_content(where)
            if not data["clawdie"]:
                return None
            path = remote.write_temp_config(self.ctx[where], self.plan.host(where), data)
            self.temp_configs[where] = path
            # in the journal too: a run killed outright leaves it for the next run to remove
            self.journal.set("temp_configs", {**self.journal.data.get("temp_configs", {}),
                                              path: self.plan.host(where).name})
            return path

    def config_content(self, where: str) -> dict[str, Any]:
        h = self.plan.host(where)
        content = h.settings_overrides()
        if where == "old":
            # replicate on the old host learns the new host's layout from this entry.
            nf = self.facts["new"]
            st = nf["settings"]
            content["hosts"] = {self.plan.new.name: {
                "ssh": self.plan.new.reach_from_peer, "root": nf["root"],
                "overrides": {"home": nf["home"], "zfs_pool": st["zfs_pool"],
                              "zfs_prefix": st["zfs_prefix"], "jails": st["jails"],
                              "jail_name": st["jail_name"], "zfs": st["zfs"],
                              "commands": st["commands"]}}}
        return {"clawdie": content}

    def remove_stale_configs(self) -> None:
        """Temporary config files of an earlier run that was killed before its cleanup."""
        if self.opts.dry_run:
            return
        for path, name in dict(self.journal.data.get("temp_configs") or {}).items():
            where = next((w for w in ("old", "new") if self.plan.host(w).name == name), None)
            if where is not None:
                self.remove_config(where, path, "the earlier run's temporary config")

    def remove_config(self, where: str, path: str, what: str) -> None:
        """Remove a temporary config file on a host, and its entry in the journal."""
        try:
            remote.remove_temp_config(self.ctx[where], self.plan.host(where), path)
        except ClawdieError as exc:
            self.warnings.append(f"could not remove {what} {path} on "
                                 f"{self.plan.host(where).label}: {exc.message}")
            return
        left = dict(self.journal.data.get("temp_configs") or {})
        if left.pop(path, None) is not None:
            self.journal.set("temp_configs", left)

    def set_tool(self, where: str, path: str) -> None:
        """From now on, run `path` as clawdie-ops on that host (the plan shows it too)."""
        host = dataclasses.replace(self.plan.host(where), tool=shlex.quote(path))
        if where == "old":
            self.plan.old = host
        else:
            self.plan.new = host
        self.plan.steps = make_steps(self.cfg, self.plan.old, self.plan.new, self.opts)

    def _files(self, where: str) -> transfer.Files:
        h = self.plan.host(where)
        if h.local:
            return transfer.LocalFiles(h.name)

        def connect() -> Any:
            return remote.context_for(self.c, h, self.cfg,
                                      accept_new_host_key=self.opts.accept_new_host_key)
        return transfer.SftpFiles(connect, h.name)

    def cleanup(self) -> None:
        for where, path in list(self.temp_configs.items()):
            self.remove_config(where, path, "the temporary config")
            self.temp_configs.pop(where, None)
        for ctx in self.ctx.values():
            remote.close(ctx)
        self.ctx.clear()
