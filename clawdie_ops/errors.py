"""Failures an operator can act on: each names the thing and the next step."""
from __future__ import annotations


class Terminated(BaseException):
    """SIGTERM arrived. Not a KeyboardInterrupt: invoke's runner swallows those while a
    command runs (it forwards them to the command); this one unwinds through it."""


class ClawdieError(Exception):
    """Base: `message` says what failed, `hint` what to do about it."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  -> {self.hint}" if self.hint else self.message


class CommandFailed(ClawdieError):
    """An external command failed: the (masked) command, its exit code and output's tail."""

    def __init__(self, message: str, hint: str = "", *, command: str = "",
                 exited: int | None = None, output: str = "") -> None:
        super().__init__(message, hint)
        self.command = command
        self.exited = exited
        self.output = output


class ConfigError(ClawdieError):
    """A setting or the installation's .env is missing or wrong."""


class EnvFileError(ConfigError):
    """The installation's .env is missing or unreadable."""


class ToolMissing(ClawdieError):
    """An external program (pg_dump, psql, zfs, syncoid, ...) is not installed."""


class ToolTooOld(ClawdieError):
    """An external program is older than what it has to talk to."""


class DatabaseUnreachable(ClawdieError):
    """PostgreSQL cannot be reached or refuses the credentials."""


class DatabaseError(CommandFailed):
    """A dump, replay or query failed inside PostgreSQL."""


class DatasetMissing(ClawdieError):
    """A ZFS dataset or snapshot does not exist."""


class ZfsError(CommandFailed):
    """A zfs / zpool / syncoid command failed."""


class InvalidName(ClawdieError):
    """A dataset, snapshot or host name that must not reach a shell."""


class NotManaged(ClawdieError):
    """A dataset outside the configured jail datasets: refused unless forced."""


class OutputError(ClawdieError):
    """The output directory is missing, not writable, or full."""


class SourceError(ClawdieError):
    """An item of the installation (messages.db, groups/, ...) cannot be read."""


class ArchiveCorrupt(ClawdieError):
    """An archive fails verification: checksum, size, truncation, manifest."""


class ArchiveUnsafe(ClawdieError):
    """An archive holds members that could write outside their target."""


class ArchiveUntrusted(ClawdieError):
    """An archive is unsigned, signed by a key not trusted here, or its signature fails."""


class DumpTooNew(ClawdieError):
    """A dump was written by a newer pg_dump than the server it should go into."""


class DrillFailed(ClawdieError):
    """A restore drill found a mismatch or could not replay an item."""


class RestoreFailed(ClawdieError):
    """A restore step failed; the message says what was rolled back."""


class InterruptedAfterRestore(ClawdieError):
    """An interrupt came after the restore had completed (during its closing checks): the
    archive's state is in place and stays; only what was left to do is named."""

    exit_code = 130


class AgentError(CommandFailed):
    """The agent's stop / start / status command failed."""


class HostError(ClawdieError):
    """A remote host is unreachable, unknown, or not ready."""


class ScheduleError(CommandFailed):
    """The command that pauses or resumes scheduled backups and snapshots failed."""


class RemoteTaskFailed(ClawdieError):
    """clawdie-ops failed on another host; the message carries that host's error and hint."""


class MigrationFailed(ClawdieError):
    """A migration stopped; the message says where, and what was undone on the old host."""


class LockHeld(ClawdieError):
    """Another clawdie-ops run holds the installation, backup folder or host."""

    exit_code = 75  # EX_TEMPFAIL: try again later


class Aborted(ClawdieError):
    """The operator declined, or confirmation was needed and not given."""

    exit_code = 3
