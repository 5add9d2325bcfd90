"""SSH to the hosts of a migration: Fabric Connections that refuse unknown host keys.

A Fabric Connection is an invoke Context, so a step runs the same here or there: a host
marked `local` in the inventory gets the operator's own invoke Context instead.

Hosts resolve with `ssh -G` (ssh.py), exactly as syncoid will reach them. Host keys:
Fabric's default policy accepts any key; here the known_hosts files of the ssh config are
loaded and an unknown key is refused (paramiko's RejectPolicy). Only an explicit operator
flag (--accept-new-host-key) accepts a new key, recorded like OpenSSH's `accept-new`. A
key that differs from the recorded one is always refused.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any
from collections.abc import Mapping

import paramiko
from fabric import Connection
from invoke import Context, Result

from .. import runner
from ..runner import Shell
from . import ssh
from ..errors import HostError, RemoteTaskFailed
from ..config.inventory import Host

CONNECT_TIMEOUT = 15
KEEPALIVE_S = 15


def _endpoint(conn: Connection) -> str:
    return f"{conn.host}:{conn.port}" if conn.port != 22 else conn.host


def connection(local: Context, host: Host, cfg: Mapping[str, Any], *,
               accept_new_host_key: bool = False, timeout: int = CONNECT_TIMEOUT) -> Connection:
    """An unopened Connection to `host`, resolved by `ssh -G` as syncoid resolves it.

    Whatever StrictHostKeyChecking the ssh config says, an unknown key is refused here
    unless the operator passed --accept-new-host-key."""
    h = ssh.resolve(local, host.ssh, str(cfg.get("ssh_config") or ""))
    return ssh.connect(h, timeout=timeout, accept_new=accept_new_host_key)


def open_checked(conn: Connection, host: Host) -> None:
    """Open the connection; any failure becomes a HostError that says what to do."""
    where = f"{host.label} at {_endpoint(conn)}"
    files = ", ".join(str(f) for f in getattr(conn.client, "clawdie_known_hosts", []))
    try:
        conn.open()
    except paramiko.BadHostKeyException as exc:
        raise HostError(
            f"the host key of {where} does not match the one recorded in known_hosts "
            f"(got {exc.key.get_name()} {exc.key.fingerprint}): refusing to connect",
            "if the host was really reinstalled, verify its new key out of band and replace "
            "the old line (ssh-keygen -R); otherwise someone may be in the middle") from None
    except paramiko.AuthenticationException as exc:
        raise HostError(f"ssh authentication to {where} failed as {conn.user}: {exc}",
                        "check the IdentityFile / User for this alias in the ssh config") from None
    except paramiko.SSHException as exc:
        if "not found in known_hosts" in str(exc):
            raise HostError(
                f"the host key of {where} is unknown (not in {files or 'any known_hosts'}): "
                "refusing to connect",
                f"verify its fingerprint and add it (ssh-keyscan -p {conn.port} {conn.host} "
                ">> ~/.ssh/known_hosts), or pass --accept-new-host-key") from None
        raise HostError(f"ssh to {where} failed: {exc}",
                        "check that sshd runs there and the ssh config alias") from None
    except (OSError, EOFError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or \
            type(exc).__name__
        raise HostError(f"cannot reach {where}: {reason}",
                        "check the address/port in the ssh config, the network, and that "
                        "sshd runs there") from None
    if conn.transport is not None:
        conn.transport.set_keepalive(KEEPALIVE_S)


def context_for(local: Context, host: Host, cfg: Mapping[str, Any], *,
                accept_new_host_key: bool = False) -> Context:
    """The Context that runs commands on `host`: `local` itself, or an opened Connection."""
    if host.local:
        return local
    conn = connection(local, host, cfg, accept_new_host_key=accept_new_host_key)
    open_checked(conn, host)
    return conn


def accepted_keys(c: Context) -> list[str]:
    policy = getattr(getattr(c, "client", None), "clawdie_policy", None)
    return list(getattr(policy, "accepted", []))


def close(c: Context) -> None:
    if isinstance(c, Connection):
        try:
            c.close()
        except Exception:  # noqa: BLE001 - closing a dead connection must not mask the cause
            pass


def run(c: Context, host: Host, command: runner.Command, *, stdin: str | None = None,
        what: str = "", timeout: int | None = None) -> Result:
    """Run `command` on `host`; a lost connection is a HostError, a failing command is not."""
    return runner.run(c, command, host=host.label, stdin=stdin, what=what, timeout=timeout)


def tool_argv(host: Host, task: str, *args: str, config_file: str | None = None) -> list[str]:
    """`clawdie-ops [-f FILE] TASK ARGS...` as it runs on `host`."""
    return host.tool_argv() + (["-f", config_file] if config_file else []) + [task, *args]


def tool_command(host: Host, task: str, *args: str, config_file: str | None = None) -> str:
    """The same, quoted for display (plans, hints)."""
    return runner.line(tool_argv(host, task, *args, config_file=config_file))


def _error_lines(stderr: str) -> tuple[str, str]:
    """The `error: ...` line and its `-> hint` from a clawdie-ops failure, else the tail."""
    lines = [ln.rstrip() for ln in stderr.strip().splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        if line.startswith("error:"):
            hint = lines[i + 1].strip() if i + 1 < len(lines) else ""
            return line[len("error:"):].strip(), hint[2:].strip() if hint.startswith("->") else ""
    return (" | ".join(lines[-3:]) if lines else "no error output"), ""


def parse_json(stdout: str) -> dict[str, Any] | None:
    text = stdout.strip()
    if not text:
        return None
    start = text.find("{")
    try:
        value = json.loads(text[start:]) if start >= 0 else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def run_tool(c: Context, host: Host, task: str, *args: str, stdin: Any = None,
             config_file: str | None = None, ok_codes: tuple[int, ...] = (0,),
             timeout: int | None = None) -> tuple[dict[str, Any], int]:
    """Run a clawdie-ops task on `host` with --json; its JSON, or RemoteTaskFailed."""
    return run_argv(c, host, tool_argv(host, task, *args, config_file=config_file),
                    stdin=stdin, ok_codes=ok_codes, timeout=timeout)


def run_argv(c: Context, host: Host, argv: list[str], *, stdin: Any = None,
             ok_codes: tuple[int, ...] = (0,), timeout: int | None = None
             ) -> tuple[dict[str, Any], int]:
    """Run `argv` (clawdie-ops [-f FILE] TASK ARGS... on `host`); its JSON summary."""
    task = argv[len(host.tool_argv())]
    if task == "-f":
        task = argv[len(host.tool_argv()) + 2]
    command = runner.line(argv)
    data = json.dumps(stdin) if stdin is not None else None
    res = run(c, host, argv, stdin=data, what=f"`clawdie-ops {task}`", timeout=timeout)
    result = parse_json(res.stdout)
    if res.exited == 127 or ("not found" in res.stderr and res.exited in (126, 127)):
        raise RemoteTaskFailed(
            f"clawdie-ops is not installed on {host.label} ({host.tool!r} not found)",
            f"install it there (pip install clawdie-ops), or set clawdie.hosts.{host.name}.tool "
            "to its path")
    if f"No idea what '{task}' is" in res.stderr:
        raise RemoteTaskFailed(
            f"clawdie-ops on {host.label} has no `{task}` task: it is too old or incomplete",
            "install the same clawdie-ops version on both hosts")
    if res.exited not in ok_codes:
        message, hint = _error_lines(res.stderr)
        exc = RemoteTaskFailed(f"`clawdie-ops {task}` on {host.label} failed "
                               f"(exit {res.exited}): {message}",
                               hint or f"run it by hand there to see more: {command}")
        exc.result = result  # type: ignore[attr-defined]
        exc.exited = res.exited  # type: ignore[attr-defined]
        raise exc
    if result is None:
        raise RemoteTaskFailed(f"`clawdie-ops {task}` on {host.label} printed no JSON summary",
                               f"run it by hand there: {command}")
    return result, res.exited


_TEMP_DIR = re.compile(r"^/[^\s'\"]*/clawdie-ops\.[A-Za-z0-9]+$")


def make_temp_dir(c: Context, host: Host) -> str:
    """A private (0700) temp dir on `host`, named clawdie-ops.XXXXXXXX."""
    res = run(c, host, Shell('mktemp -d "${TMPDIR:-/tmp}/clawdie-ops.XXXXXXXX"'),
              what="making a temporary directory")
    path = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    if res.exited != 0 or not _TEMP_DIR.match(path):
        raise HostError(f"could not make a temporary directory on {host.label}: "
                        f"{res.stderr.strip() or path!r}",
                        "check that $TMPDIR (or /tmp) is writable there")
    return path


def remove_temp_dir(c: Context, host: Host, path: str) -> None:
    if _TEMP_DIR.match(path):
        run(c, host, ["rm", "-rf", path], what="removing a temporary directory")


def write_temp_config(c: Context, host: Host, data: Mapping[str, Any]) -> str:
    """A private (0600 file in a 0700 dir) JSON config on `host`, written through stdin."""
    d = make_temp_dir(c, host)
    path = f"{d}/config.json"
    res = run(c, host, Shell(f"umask 077 && cat > {shlex.quote(path)}"), stdin=json.dumps(data),
              what="writing a temporary config file")
    if res.exited != 0:
        remove_temp_dir(c, host, d)
        raise HostError(f"could not write a temporary config file on {host.label}: "
                        f"{res.stderr.strip()}", "check that $TMPDIR (or /tmp) is writable there")
    return path


def remove_temp_config(c: Context, host: Host, path: str) -> None:
    if Path(path).name == "config.json":
        remove_temp_dir(c, host, str(Path(path).parent))  # which checks that it is ours
