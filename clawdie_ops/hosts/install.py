"""clawdie-ops on the hosts of a migration: find it there, or install this very version.

A host without clawdie-ops (or, for the new host, with an older one) gets the operator's
own clawdie-ops as a wheel (wheel.py), uploaded over SFTP into a private temp dir and
pip-installed into a virtualenv of its own (default ~/.local/clawdie-ops); nothing else on
the host changes. The inventory's `install` entry says how, per host:

    newbox:
      install:
        python: python3.11                 # a Python >= 3.11 on that host
        dir: ~/.local/clawdie-ops          # the virtualenv
        pip_args: --no-index --find-links /srv/wheels   # e.g. a host without the index
        system_site_packages: true         # take dependencies installed by pkg/apt

The defaults are FreeBSD's: `pkg install python311` gives `python3.11` (no `python3`), and
pip cannot build cryptography there (PyPI has no FreeBSD wheels), so the virtualenv sees
the dependencies pkg installed (py311-fabric, py311-psycopg, ...) and pip fetches only
what is missing.

pip_args go to pip inside a 0600 requirements file, never on its command line (an index
URL may carry a password).
"""
from __future__ import annotations

import re
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from invoke import Context

from .. import __version__, runner
from ..runner import Shell
from . import remote, wheel
from ..actions.migrate.checks import version_tuple
from ..errors import HostError
from ..config.inventory import Host

DEFAULTS = {"python": "python3.11", "dir": "~/.local/clawdie-ops", "pip_args": "",
            "system_site_packages": True}
TIMEOUT_S = 900
_VERSION = re.compile(r"^clawdie-ops\s+(\S+)\s*$", re.MULTILINE)

# Resolves `dir` ("~/..." from $HOME), then prints "clawdie-ops X.Y" and its path.
_FIND = r'''d=$1; case $d in "~/"*) d="$HOME/${d#"~/"}";; esac
"$d/bin/clawdie-ops" --version && printf '%s\n' "$d/bin/clawdie-ops"'''

_INSTALL = r'''py=$1 d=$2 tmp=$3 site=$4
case $d in "~/"*) d="$HOME/${d#"~/"}";; esac
command -v "$py" >/dev/null 2>&1 || exit 20
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { "$py" --version >&2; exit 21; }
if [ ! -x "$d/bin/python" ]; then
  mkdir -p "$(dirname "$d")" && "$py" -m venv $site "$d" || exit 22
fi
pip() { "$d/bin/python" -m pip -q --disable-pip-version-check --no-input "$@"; }
pip install -r "$tmp/requirements.txt" || exit 23
pip install --no-deps --force-reinstall "$tmp"/*.whl || exit 23
"$d/bin/clawdie-ops" --version || exit 24
printf '%s\n' "$d/bin/clawdie-ops"'''


@dataclass(frozen=True)
class Found:
    """What a host runs: `path` None means no usable clawdie-ops there (yet)."""
    path: str | None
    version: str | None
    how: str  # "present", "installed earlier", "installed", "missing", "older"

    def as_dict(self) -> dict[str, Any]:
        return {"tool": self.path, "version": self.version, "how": self.how}


def settings(host: Host) -> dict[str, Any]:
    return {**DEFAULTS, **dict(host.install)}


def _sh(script: str, *args: str) -> list[str]:
    return ["sh", "-c", script, "sh", *args]


def _parse(stdout: str) -> tuple[str | None, str | None]:
    """(version, path) from `--version` output followed by the tool's path."""
    m = _VERSION.search(stdout)
    lines = [ln.strip() for ln in stdout.strip().splitlines() if ln.strip()]
    path = lines[-1] if lines and lines[-1].startswith("/") else None
    return (m.group(1) if m else None), path


def probe(c: Context, host: Host) -> str | None:
    """The version of the clawdie-ops `host` is configured to run, or None."""
    res = remote.run(c, host, [*host.tool_argv(), "--version"],
                     what="clawdie-ops --version")
    return _parse(res.stdout)[0] if res.exited == 0 else None


def probe_installed(c: Context, host: Host) -> tuple[str | None, str | None]:
    """(version, path) of an earlier install in the host's install dir."""
    res = remote.run(c, host, _sh(_FIND, settings(host)["dir"]), what="clawdie-ops --version")
    return _parse(res.stdout) if res.exited == 0 else (None, None)


def plan_text(host: Host, minimum: str | None) -> str:
    s = settings(host)
    need = f"missing or older than {minimum}" if minimum else "missing"
    return (f"{host.tool} --version; if {need}: upload clawdie-ops {__version__} as a wheel "
            f"and install it into {s['dir']} ({s['python']} -m venv"
            + (" --system-site-packages" if s["system_site_packages"] else "")
            + ", pip install" + (" with install.pip_args" if s["pip_args"] else "") + ")")


def find(c: Context, host: Host, minimum: str | None) -> Found:
    """The host's clawdie-ops if it is there and new enough, else an earlier install's."""
    have = probe(c, host)
    if have and version_tuple(have) >= version_tuple(minimum):
        return Found(host.tool, have, "present")
    ver, path = probe_installed(c, host)
    if ver and path and version_tuple(ver) >= version_tuple(minimum):
        return Found(path, ver, "installed earlier")
    return Found(None, have, "older" if have else "missing")


def install(c: Context, host: Host) -> Found:
    """Upload this clawdie-ops and pip-install it on `host` (a Fabric Connection)."""
    s = settings(host)
    tmp = remote.make_temp_dir(c, host)
    try:
        with tempfile.TemporaryDirectory(prefix="clawdie-ops-wheel.") as local:
            whl = wheel.build(Path(local))
            reqs = Path(local) / "requirements.txt"
            reqs.write_text(f"{s['pip_args']}\n./{whl.name}\n" if s["pip_args"]
                            else f"./{whl.name}\n")
            reqs.chmod(0o600)
            for f in (whl, reqs):
                c.put(str(f), remote=f"{tmp}/{f.name}")
        site = "--system-site-packages" if s["system_site_packages"] else ""
        # requirements.txt names the wheel relative to where pip runs: cd into tmp first
        res = remote.run(c, host, Shell(f"cd {shlex.quote(tmp)} && " + runner.line(
                         _sh(_INSTALL, str(s["python"]), str(s["dir"]), tmp, site))),
                         what="installing clawdie-ops", timeout=TIMEOUT_S)
    finally:
        remote.remove_temp_dir(c, host, tmp)
    if res.exited != 0:
        raise _install_error(host, s, res.exited, res.stderr)
    ver, path = _parse(res.stdout)
    if not path or ver != __version__:
        raise HostError(f"installing clawdie-ops on {host.label} ended without it: "
                        f"{res.stdout.strip()[-300:]!r}", f"look into {s['dir']} there")
    return Found(path, ver, "installed")


def _install_error(host: Host, s: dict[str, Any], code: int, stderr: str) -> HostError:
    entry = f"clawdie.hosts.{host.name}.install"
    tail = " | ".join(ln.strip() for ln in stderr.strip().splitlines()[-4:] if ln.strip())
    where = f"on {host.label}"
    if code == 20:
        return HostError(f"cannot install clawdie-ops {where}: {s['python']!r} not found there",
                         "install Python 3.11 there (FreeBSD: pkg install python311), or set "
                         f"{entry}.python to the Python 3.11+ it has")
    if code == 21:
        return HostError(f"cannot install clawdie-ops {where}: {s['python']} is {tail or 'old'}, "
                         "and clawdie-ops needs Python 3.11 or newer",
                         f"install a newer Python there and set {entry}.python to it")
    if code == 22:
        return HostError(f"cannot create the virtualenv {s['dir']} {where}: {tail}",
                         "install Python's venv module there (Debian: apt-get install "
                         f"python3-venv), or set {entry}.dir to a writable place")
    if code == 23:
        return HostError(f"pip could not install clawdie-ops into {s['dir']} {where} (the "
                         f"virtualenv stays, the next run completes it): {tail}",
                         "install the dependencies with the system's packages (FreeBSD: pkg "
                         "install py311-fabric py311-psycopg py311-rich py311-python-dotenv "
                         "py311-cryptography py311-prometheus-client; "
                         "pip cannot build cryptography there) and keep "
                         f"{entry}.system_site_packages true, or set {entry}.pip_args (e.g. "
                         "--no-index --find-links DIR of wheels)")
    return HostError(f"installing clawdie-ops {where} failed (exit {code}): {tail}",
                     f"run `{s['dir']}/bin/clawdie-ops --version` there to see why")
