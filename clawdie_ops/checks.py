"""One check's outcome, for doctor, the migration preflight and the restore drill alike."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Check:
    name: str
    status: str  # doctor and preflight: ok, warn, fail; drill: pass, fail, skip
    detail: str = ""
    fix: str = ""  # what to do about a warning or a failure
    item: str = ""  # the archive item a drill check is about
    seconds: float = 0.0  # how long a drill check took

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
