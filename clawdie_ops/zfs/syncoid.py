"""syncoid: the only place that builds syncoid command lines and reads what syncoid reports.

syncoid pastes its ssh options into shell strings, so every value handed to it is
shell-quoted here; dataset names are validated by zfs.check_dataset first.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from ..errors import InvalidName
from ..hosts.ssh import SshHost
from .commands import check_dataset
from ..runner import Shell

# Preference order: the program both ends need -> syncoid's --compress name.
COMPRESSORS: tuple[tuple[str, str], ...] = (("zstd", "zstd-fast"), ("lzop", "lzo"))
COMPRESS_CHOICES = ("auto", "zstd-fast", "zstd-slow", "lzo", "gzip", "pigz-fast", "pigz-slow",
                    "lz4", "xz", "none")
# pv sits right after `zfs send` in syncoid's pipeline (before compression): with -n -b it
# prints the bytes of the send stream so far, one number per line, and the total at the end.
PV_OPTIONS = "-n -b -i 5"
PROBED = ("zstd", "lzop", "mbuffer", "pv")
_RATE = re.compile(r"^[0-9]+[kmgtKMGT]?$")


def target_spec(h: SshHost, dataset: str) -> str:
    """`user@host:dataset`; syncoid decides on sudo from the user, so root is written out."""
    check_dataset(dataset)
    return f"{h.user}@{h.hostname}:{dataset}" if h.user else f"{h.hostname}:{dataset}"


def ssh_args(h: SshHost) -> list[str]:
    """The resolved ssh settings as syncoid flags (it cannot take `ssh -F FILE`)."""
    args = [f"--sshport={h.port}"] if h.port != 22 else []
    if h.identity_files:
        args.append(f"--sshkey={shlex.quote(h.identity_files[0])}")
        args += [f"--sshoption={shlex.quote('IdentityFile=' + f)}" for f in h.identity_files[1:]]
    args += [f"--sshoption={shlex.quote(f'{key}={value}')}" for key, value in h.options]
    return args


@dataclass(frozen=True)
class SyncOptions:
    compress: str = "none"  # a syncoid --compress value
    bwlimit: str = ""  # e.g. 20m: mbuffer's rate limit on the sending side
    force_delete: bool = False  # replace a target that shares no snapshot with the source

    def __post_init__(self) -> None:
        if self.compress not in COMPRESS_CHOICES or self.compress == "auto":
            raise InvalidName(f"unknown compression for syncoid: {self.compress!r}",
                              f"use one of {', '.join(COMPRESS_CHOICES)}")
        if self.bwlimit and not _RATE.match(self.bwlimit):
            raise InvalidName(f"not a bandwidth limit: {self.bwlimit!r}",
                              "write it as bytes per second with k, m, g or t: 500k, 20m")


def command(syncoid: str, source: str, target: str, h: SshHost, opts: SyncOptions) -> Shell:
    """One dataset, local source to the remote target; stdout and stderr merged so pv's
    byte counts come out between the INFO lines of the transfer they belong to."""
    args = [syncoid, f"--compress={opts.compress}", f"--pv-options={PV_OPTIONS}"]
    if opts.bwlimit:
        args.append(f"--source-bwlimit={opts.bwlimit}")
    if opts.force_delete:
        args.append("--force-delete")
    args += ssh_args(h)
    args += [check_dataset(source), target_spec(h, target)]
    return Shell(shlex.join(args) + " 2>&1")


def probe_cmd() -> list[str]:
    """Which helpers syncoid can use on one host; `sh -c` because root's shell may be csh."""
    loop = "; ".join([f"for t in {' '.join(PROBED)}", 'do command -v "$t"', "done", "true"])
    return ["sh", "-c", loop]


def found_tools(output: str) -> set[str]:
    return {line.strip().rsplit("/", 1)[-1] for line in output.splitlines() if line.strip()}


def choose_compress(local: set[str], remote: set[str]) -> str:
    for program, name in COMPRESSORS:
        if program in local and program in remote:
            return name
    return "none"


@dataclass
class Transfer:
    kind: str  # "full" or "incremental"
    what: str
    estimate: int | None = None  # syncoid's `zfs send -nP` estimate, where ZFS has one
    counted: int | None = None  # bytes pv counted in the stream


@dataclass
class SyncReport:
    transfers: list[Transfer] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    refused_existing: bool = False

    @property
    def kind(self) -> str:
        if any(t.kind == "full" for t in self.transfers):
            return "full"
        return "incremental" if self.transfers else "none"

    @property
    def method(self) -> str | None:
        if self.transfers and all(t.counted is not None for t in self.transfers):
            return "pv"
        if self.transfers and all(t.estimate is not None for t in self.transfers):
            return "estimate"
        return None if self.transfers else "pv"

    @property
    def bytes(self) -> int | None:
        method = self.method
        if method == "pv":
            return sum(t.counted or 0 for t in self.transfers)
        if method == "estimate":
            return sum(t.estimate or 0 for t in self.transfers)
        return None


_START = re.compile(r"^(?:INFO: )?(Sending oldest full snapshot|Sending incremental|"
                    r"Updating new target filesystem with incremental)\s+(.*?)"
                    r"(?:\s+\(~ ([^)]*)\))?(?: to new target filesystem)?:?\s*$")
_UNITS = {"KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3}


def _estimate(text: str | None) -> int | None:
    if not text:
        return None
    m = re.match(r"^([0-9.]+)\s*(KB|MB|GB)$", text.strip())
    return int(float(m.group(1)) * _UNITS[m.group(2)]) if m else None


def parse_output(text: str) -> SyncReport:
    """syncoid's merged output: INFO lines open a transfer, pv's numbers count its bytes."""
    report = SyncReport()
    for raw in text.splitlines():
        line = raw.strip("\r ").strip()
        if not line:
            continue
        m = _START.match(line)
        if m:
            kind = "full" if m.group(1).startswith("Sending oldest full") else "incremental"
            report.transfers.append(Transfer(kind, m.group(2), _estimate(m.group(3))))
        elif line.isdigit() and report.transfers:
            # Cumulative within one pv; the last number is the transfer's total.
            report.transfers[-1].counted = int(line)
        elif line.startswith("WARN:"):
            report.warnings.append(line[5:].strip())
        elif line.startswith(("CRITICAL ERROR:", "cannot ")):
            report.errors.append(line)
        if "Cowardly refusing to destroy your existing target" in line:
            report.refused_existing = True
    return report
