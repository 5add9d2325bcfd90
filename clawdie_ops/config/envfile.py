"""Edit an installation's .env in place: set a few keys, keep every other line as it was.

Used on the new host after the restore, so the agent (which reads .env, not the tool's
config) uses the new host's own database address, pool and prefix.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from collections.abc import Mapping

from .settings import read_env
from ..errors import EnvFileError

# Tool settings that have a .env counterpart: a host's value for them goes into its .env.
ENV_KEY_OF_SETTING = {"db_host": "WARDEN_DB_IP", "db_port": "DB_PORT",
                      "zfs_pool": "ZFS_POOL", "zfs_prefix": "ZFS_PREFIX"}


def quote(value: str) -> str:
    """A .env value as python-dotenv reads it back: single-quoted with \\\\ and \\' escapes."""
    if value and not any(ch in value for ch in " '\"$\\#:\t="):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _line_key(line: str) -> str | None:
    m = re.match(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=", line)
    return m.group(1) if m else None


def set_values(path: Path, values: Mapping[str, str]) -> dict[str, dict[str, str | None]]:
    """Set `values` in the .env at `path`; return {key: {from, to}} for what changed."""
    try:
        before = read_env(path)
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        st = path.stat()
    except OSError as exc:
        raise EnvFileError(f"cannot read {path}: {exc}", "check its owner and mode") from None
    changes = {k: {"from": before.get(k), "to": str(v)} for k, v in values.items()
               if before.get(k) != str(v)}
    if not changes:
        return {}
    done = set()
    out = []
    for line in lines:
        key = _line_key(line)
        if key in changes:
            if key in done:
                continue  # a repeated key: python-dotenv takes the last; keep just ours
            out.append(f"{key}={quote(changes[key]['to'] or '')}\n")
            done.add(key)
        else:
            out.append(line)
    if out and not out[-1].endswith("\n"):
        out[-1] += "\n"
    out.extend(f"{k}={quote(ch['to'] or '')}\n" for k, ch in changes.items() if k not in done)
    fd, tmp = tempfile.mkstemp(prefix=".env.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.writelines(out)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, st.st_mode & 0o777)
        if os.geteuid() == 0:
            os.chown(tmp, st.st_uid, st.st_gid)  # the agent's user must still read it
        after = read_env(Path(tmp))
        wrong = [k for k, ch in changes.items() if after.get(k) != ch["to"]]
        if wrong:
            raise EnvFileError(f"rewriting {path} would not read back {', '.join(wrong)}",
                               "set them by hand in the .env")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return changes
