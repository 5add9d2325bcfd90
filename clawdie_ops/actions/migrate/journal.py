"""The migration journal on the operator's machine: which steps are done, so a re-run continues.

One JSON file per (from, to) pair, written atomically (0600) after every step. Results
are stored masked: the journal never holds a password.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ...config.masking import masked

FORMAT = 1


def path_for(home: Path, old: str, new: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.@-]+", "_", f"{old}--to--{new}")
    return home / ".clawdie-ops" / "migrations" / f"{safe}.json"


class Journal:
    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data
        self.lock = threading.RLock()  # steps may finish in two threads at once

    @classmethod
    def open(cls, path: Path, identity: dict[str, Any], restart: bool = False) -> Journal:
        """The journal at `path`, or a fresh one (also when the hosts' identity changed)."""
        fresh = {"format": FORMAT, "identity": identity, "status": "new", "runs": 0,
                 "created_at": time.time(), "steps": {}, "window": {}, "history": []}
        if restart or not path.exists():
            return cls(path, fresh)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"migration journal {path} is unreadable: {exc}",
                              "move it away, or pass --restart to start over") from None
        if data.get("format") != FORMAT or data.get("identity") != identity:
            raise ConfigError(
                f"migration journal {path} belongs to another plan (hosts, roots or "
                "overrides changed since it was written)",
                "pass --restart to start over with the current inventory")
        return cls(path, data)

    # -- steps -----------------------------------------------------------------------
    @property
    def steps(self) -> dict[str, Any]:
        return self.data["steps"]

    def done(self, step: str) -> bool:
        return self.steps.get(step, {}).get("status") == "done"

    def result(self, step: str) -> dict[str, Any]:
        return self.steps.get(step, {}).get("result") or {}

    def record(self, step: str, result: dict[str, Any] | None, seconds: float) -> None:
        with self.lock:
            self.steps[step] = {"status": "done", "at": time.time(),
                                "seconds": round(seconds, 3), "result": masked(result or {})}
            self.save()

    def forget(self, steps: list[str]) -> None:
        for step in steps:
            self.steps.pop(step, None)
        self.save()

    # -- the rest ------------------------------------------------------------------------
    @property
    def window(self) -> dict[str, Any]:
        return self.data["window"]

    def note(self, event: str, **details: Any) -> None:
        with self.lock:
            self.data["history"].append({"at": time.time(), "event": event, **masked(details)})
            self.save()

    def set(self, key: str, value: Any) -> None:
        with self.lock:
            self.data[key] = masked(value)
            self.save()

    def save(self) -> None:
        with self.lock:
            self.data["updated_at"] = time.time()
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".journal.", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w") as fh:
                    json.dump(self.data, fh, indent=2, default=str)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
