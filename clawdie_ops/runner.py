"""Every external command, here or on a Fabric Connection: quoted, masked, run and judged here.

A command is an argv (quoted here, with shlex.join) or `Shell` text that is already quoted
where it was built (a filled command template, a pipeline). The shell is POSIX `/bin/sh`
unless `clawdie.shell` says otherwise: FreeBSD has no /bin/bash, invoke's default. Output is
captured (never shown), stdin is closed unless given, and a failing exit code is returned
for the caller to judge or turned into `CommandFailed` by `check=True`. An SSH connection
that cannot be opened or drops mid-command is a `HostError` naming the host, whatever the
command. Binary streams never come here: invoke decodes output as text (the archive's
compressors are pipes of their own, archive/writer.py).
"""
from __future__ import annotations

import io
import json
import os
import shlex
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from invoke import Context, Result
from invoke.exceptions import ThreadException

from .config.masking import mask_text
from .errors import CommandFailed, HostError

DEFAULT_SHELL = "/bin/sh"
TAIL_LINES = 5  # what of a failing command's output an error shows: its last lines...
TAIL_CHARS = 500  # ...and at most this much of them


@dataclass(frozen=True)
class Shell:
    """Shell text quoted where it was built: a filled template (Settings.command), a pipe."""

    text: str

    def __str__(self) -> str:
        return self.text


Command = Sequence[str] | Shell


def line(cmd: Command) -> str:
    """The command as the shell gets it: the one place an argv is quoted."""
    if isinstance(cmd, Shell):
        return cmd.text
    if isinstance(cmd, str):
        raise TypeError(f"a command is an argv list or a Shell, not a str: {cmd!r}")
    return shlex.join(str(a) for a in cmd)


def tail(text: str) -> str:
    """What an error shows of a command's output: the last few non-empty lines, bounded."""
    lines = [ln.rstrip() for ln in (text or "").strip().splitlines() if ln.strip()]
    return "\n".join(lines[-TAIL_LINES:])[-TAIL_CHARS:]


# Secret values this process knows (the .env's passwords and keys, db_admin's password):
# masked in every command the runner shows, records or puts in an error, whoever calls it.
_known_secrets: set[str] = set()


def keep_secret(*values: str) -> None:
    """Mask these values wherever a command is shown from now on (Settings.load calls it)."""
    _known_secrets.update(v for v in values if v and len(v) >= 3)


def mask(text: str, secrets: Sequence[str] = ()) -> str:
    return mask_text(text, [*_known_secrets, *secrets])


# -- the recorder: tests (and --dry-run comparisons) see every command, masked, in order ---
Recorder = Callable[[str, str], None]  # (host label, masked command line)
_recorders: list[Recorder] = []
_record_lock = threading.Lock()


RECORD_ENV = "CLAWDIE_OPS_RECORD"  # a file: every command appended, masked, one per line


def _record(label: str, shown: str) -> None:
    for hook in list(_recorders):
        hook(label, shown)
    path = os.environ.get(RECORD_ENV)
    if path:
        with _record_lock, open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"host": label, "command": shown}) + "\n")


@contextmanager
def recording(hook: Recorder) -> Iterator[None]:
    """Call `hook(host, command)` for every command run inside the block (in this process)."""
    _recorders.append(hook)
    try:
        yield
    finally:
        _recorders.remove(hook)


# Fabric and paramiko are imported by the code that connects, not here: a local task (and
# `clawdie-ops --version`) does not pay for them. Where they are not loaded, no context is
# a Connection and no paramiko error can be raised.
def _exec_form(c: Context, cmd: Command, text: str, remote: bool) -> str:
    """An argv run here by the tool's own runner (lifeline.LocalRunner) is `exec`ed: sh
    forks for a plain `sh -c CMD`, and only the shell would then die with the tool (the
    parent-death signal is not inherited); exec'd, the command itself is the child that
    does. Shell text (templates, pipelines) runs as written."""
    if remote or isinstance(cmd, Shell):
        return text
    from .lifeline import LocalRunner
    runners = getattr(c, "config", {}).get("runners", {}) or {}
    return f"exec {text}" if runners.get("local") is LocalRunner else text


def _is_remote(c: Context) -> bool:
    fabric = sys.modules.get("fabric.connection")
    return fabric is not None and isinstance(c, fabric.Connection)


def _ssh_errors() -> tuple[type[BaseException], ...]:
    """What a refused or dropped SSH session raises."""
    paramiko = sys.modules.get("paramiko")
    return (paramiko.SSHException, EOFError, OSError) if paramiko else (EOFError, OSError)


def host_label(c: Context) -> str:
    return str(getattr(c, "host", "")) if _is_remote(c) else "this host"


def shell_of(c: Context) -> str:
    """`clawdie.shell` of the context's config, else /bin/sh (sshd picks the remote one)."""
    try:
        value = c.config.clawdie.shell
    except (AttributeError, KeyError):
        return DEFAULT_SHELL
    return str(value or DEFAULT_SHELL)


class _Payload(io.StringIO):
    """stdin for a command: invoke reads a non-terminal stream one byte per 10 ms loop
    (terminals.bytes_to_read), so a few hundred bytes of JSON would take seconds; this
    stream hands over everything left at once."""

    def read(self, size: int | None = -1) -> str:
        return super().read()


RESUME_HINT = "check the network; running the same command again continues where it stopped"


def run(c: Context, cmd: Command, *, what: str = "", host: str = "",
        env: dict[str, str] | None = None, stdin: str | None = None,
        timeout: int | None = None, secrets: Sequence[str] = (), check: bool = False,
        ok: Sequence[int] = (0,), hint: str = "",
        error: type[CommandFailed] = CommandFailed) -> Result:
    """Run `cmd` on `c`'s host; its Result (a failing exit code too, unless `check`).

    `what` names the command in errors (default: the masked command line), `host` the host
    (default: the Connection's host). `secrets` are masked wherever the command is shown.
    With `check`, an exit code outside `ok` raises `error` (a CommandFailed) with the
    masked command, the exit code, the output's tail and `hint`."""
    text = line(cmd)
    shown = mask(text, secrets)
    label = host or host_label(c)
    _record(label, shown)
    kw: dict[str, Any] = {"hide": True, "warn": True, "shell": shell_of(c),
                          "in_stream": _Payload(stdin) if stdin is not None else False}
    if env:
        kw["env"] = env
    if timeout:
        kw["timeout"] = timeout
    remote = _is_remote(c)
    was_connected = bool(getattr(c, "is_connected", False))
    try:
        ran = c.run(_exec_form(c, cmd, text, remote), **kw)
    except ThreadException as exc:
        # sending stdin failed: the command ended before it read its input (or the link
        # failed under it: the writer's own error says which)
        why = "; ".join(f"{w.type.__name__}: {w.value}" for w in exc.exceptions)[:300]
        raise HostError(f"{what or 'a command'} on {label} ended before it read its input"
                        + (f" (sending it: {why})" if why else ""),
                        f"run it by hand there to see why: {shown}") from None
    except _ssh_errors() as exc:
        if not remote:
            raise
        reason = str(exc) or type(exc).__name__
        if "not found in known_hosts" in reason:
            raise HostError(f"the host key of {label} is unknown: refusing to connect",
                            "verify its fingerprint and add it to the known_hosts file of your "
                            "ssh config (ssh-keyscan), or set StrictHostKeyChecking accept-new "
                            "for it; clawdie-ops refuses unknown keys even where the config "
                            "says StrictHostKeyChecking no") from None
        if not was_connected:
            raise HostError(f"cannot reach {label} over SSH: {reason}",
                            f"check `ssh {label} true` with the same ssh config, and its "
                            "host key") from None
        raise HostError(f"lost the connection to {label} during {what or shown}: {reason}",
                        RESUME_HINT) from None
    assert ran is not None  # None only with asynchronous or disowned runs, never used here
    res: Result = ran
    if remote and res.exited == -1 and not getattr(c, "is_connected", True):
        raise HostError(f"lost the connection to {label} during {what or shown}", RESUME_HINT)
    if check and res.exited not in ok:
        raise failure(res, what or shown, hint, shown, error)
    return res


def failure(res: Result, what: str, hint: str = "", command: str = "",
            error: type[CommandFailed] = CommandFailed, detail: str = "") -> CommandFailed:
    """The error for a failed command: `what failed: <tail of stderr, else stdout> (exit N)`."""
    out = mask(tail(detail or res.stderr or res.stdout)) or "no output"
    return error(f"{what} failed: {out} (exit {res.exited})", hint,
                 command=mask(command or res.command), exited=res.exited, output=out)

