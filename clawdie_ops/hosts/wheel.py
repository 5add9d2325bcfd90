"""The running clawdie-ops as a wheel, to install the very same version on another host.

Built from what is installed here (the package's files and its metadata), so it needs no
source checkout, no build tool and no network; editable and regular installs both work.
clawdie-ops is pure Python, so one `py3-none-any` wheel serves every host.
"""
from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import zipfile
from pathlib import Path

from .. import __version__

DIST = "clawdie-ops"
PACKAGE = Path(__file__).resolve().parent.parent  # clawdie_ops/, this file is in hosts/
WHEEL_INFO = ("Wheel-Version: 1.0\nGenerator: clawdie-ops\nRoot-Is-Purelib: true\n"
              "Tag: py3-none-any\n")


def filename() -> str:
    return f"clawdie_ops-{__version__}-py3-none-any.whl"


def _metadata() -> tuple[str, str]:
    """METADATA (headers only, no long description) and entry_points.txt of this install."""
    dist = importlib.metadata.distribution(DIST)
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    headers = text.split("\n\n", 1)[0].strip() + "\n"
    if f"Version: {__version__}\n" not in headers:
        # an editable install whose metadata predates a version bump: the code wins
        headers = "".join(f"Version: {__version__}\n" if ln.startswith("Version:") else ln + "\n"
                          for ln in headers.splitlines())
    return headers, dist.read_text("entry_points.txt") or ""


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build(dest: Path) -> Path:
    """Write the wheel into `dest` (a directory); its path."""
    info = f"clawdie_ops-{__version__}.dist-info"
    members: list[tuple[str, bytes]] = []
    for path in sorted(PACKAGE.rglob("*.py")):  # the package is all Python: no stray files
        if "__pycache__" not in path.parts:
            members.append((f"clawdie_ops/{path.relative_to(PACKAGE).as_posix()}",
                            path.read_bytes()))
    metadata, entry_points = _metadata()
    members += [(f"{info}/METADATA", metadata.encode()), (f"{info}/WHEEL", WHEEL_INFO.encode())]
    if entry_points:
        members.append((f"{info}/entry_points.txt", entry_points.encode()))
    record = "\n".join([*(_record_line(n, d) for n, d in members), f"{info}/RECORD,,"]) + "\n"
    members.append((f"{info}/RECORD", record.encode()))
    out = dest / filename()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return out
