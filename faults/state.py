"""What the invariants compare: an installation's state, its archives, leftovers and secrets.

The comparisons themselves are the test suite's (tests/helpers.py, tests/migrate_helpers.py);
this module adds only what a campaign needs on top: file modes, the database list, and the
checks that span a run (archives that must verify, files that must not leak a secret).
"""
from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

from tests.conftest import CLI
from tests.helpers import tree_modes
from tests.migrate_helpers import whole_state
from tests.rig import content
from tests.rig.hosts import SimHost
from tests.rig.postgres import SUPERPASS

# A complete archive's name (what backup renames to once the archive is whole).
COMPLETE = re.compile(r"^clawdie-backup-[^/]+\.tar\.(zst|gz)$")
ASIDE = "_pre_restore_"
MAX_SCAN = 64 * 2**20  # bigger files are the rig's pool images, not leftovers


def databases(h: SimHost) -> list[str]:
    with h.cluster.connect() as admin:
        return sorted(r[0] for r in admin.execute(
            "SELECT datname FROM pg_database WHERE NOT datistemplate"))


def installation(h: SimHost) -> dict:
    """Tables row for row, databases, files (content and modes), datasets (file by file)."""
    s = whole_state(h)
    allow = h.home / ".config" / "clawdie-cp" / "mount-allowlist.json"
    s["modes"] = {"env": tree_modes(h.root / ".env"), "store": tree_modes(h.root / "store"),
                  "groups": tree_modes(h.root / "groups"), "allowlist": tree_modes(allow)}
    # the agent's WAL files come and go while it runs; the database file's mode stays
    s["modes"]["store"] = {k: v for k, v in s["modes"]["store"].items()
                           if not k.endswith(("-wal", "-shm")) and k != "clawdie.pid"}
    names = databases(h)
    s["databases"] = [n for n in names if ASIDE not in n and not n.startswith("fault_tpl_")]
    s["aside"] = [n for n in names if ASIDE in n]
    return s


def differences(a: dict, b: dict, skip: tuple[str, ...] = ("aside",)) -> list[str]:
    """The top-level parts (and for databases, the tables) in which two states differ."""
    out = []
    for key in sorted(set(a) | set(b)):
        if key in skip or a.get(key) == b.get(key):
            continue
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            sub = [k for k in sorted(set(a[key]) | set(b[key])) if a[key].get(k) != b[key].get(k)]
            out.append(f"{key}: {', '.join(map(str, sub))}")
        else:
            out.append(key)
    return out


def mode_changes(a: dict, b: dict) -> list[str]:
    """Files whose permission bits differ between two installation states."""
    out = []
    for part in sorted(set(a.get("modes", {})) | set(b.get("modes", {}))):
        ma, mb = a.get("modes", {}).get(part, {}), b.get("modes", {}).get(part, {})
        for rel in sorted(set(ma) & set(mb)):
            if ma[rel] != mb[rel]:
                out.append(f"{part}/{rel} {ma[rel]} -> {mb[rel]}")
    return out


DATA_ONLY = ("aside", "modes")  # compared separately: a changed mode is not lost data


def secrets_of(*hosts: SimHost) -> list[str]:
    """The rig's secret values: database passwords, the admin's, each host's API keys."""
    vals = {content.MEMORY_PASSWORD, content.SKILLS_PASSWORD, SUPERPASS}
    for h in hosts:
        vals.add(h.env["ANTHROPIC_API_KEY"])
        vals.add(h.env["TELEGRAM_BOT_TOKEN"])
    return sorted(vals)


def leaks(dirs: list[Path], secrets: list[str], skip: tuple[Path, ...] = (),
          since: float = 0.0) -> list[str]:
    """Files readable by group or others that hold one of `secrets`, among those created,
    written or chmodded since `since` (a time.time()): what the run left."""
    needles = [s.encode() for s in secrets]
    found = []
    for top in dirs:
        if not top.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            here = Path(dirpath)
            dirnames[:] = [d for d in dirnames if here / d not in skip]
            for name in filenames:
                p = here / name
                if p in skip:
                    continue
                try:
                    st = p.lstat()
                    if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o044 \
                            or st.st_size > MAX_SCAN or st.st_ctime < since:
                        continue
                    data = p.read_bytes()
                except OSError:
                    continue
                hit = [s.decode() for s in needles if s in data]
                if hit:
                    found.append(f"{p} (mode {oct(st.st_mode & 0o777)}) holds "
                                 f"{len(hit)} secret value(s)")
    return found


class ArchiveChecker:
    """Every file with a complete archive's name must verify; each is checked once per
    (size, mtime), as `clawdie-ops inspect` reads it whole."""

    def __init__(self) -> None:
        self._ok: dict[Path, tuple[int, int]] = {}

    def check(self, dirs: list[Path], env: dict[str, str]) -> list[str]:
        bad = []
        for d in dirs:
            if not d.exists():
                continue
            for p in sorted(d.iterdir()):
                if not COMPLETE.match(p.name) or not p.is_file():
                    continue
                st = p.stat()
                key = (st.st_size, st.st_mtime_ns)
                if self._ok.get(p) == key:
                    continue
                res = subprocess.run([CLI, "inspect", str(p), "--json"], env=env,
                                     capture_output=True, text=True, timeout=120,
                                     stdin=subprocess.DEVNULL)
                if res.returncode:
                    last = (res.stderr.strip().splitlines() or ["?"])[-1]
                    bad.append(f"{p} does not verify: {last}")
                else:
                    self._ok[p] = key
        return bad
