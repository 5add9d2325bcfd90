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


def control_socket_prefix(h: SshHost) -> str:
    """Where syncoid before 2.3 puts its SSH master's socket: this prefix and the second it
    started (`/tmp/syncoid-root@HOST-1796000000`); 2.3 adds its pid and a random number."""
    return f"/tmp/syncoid-{h.user}@{h.hostname}-" if h.user else f"/tmp/syncoid-{h.hostname}-"


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
    # ZFS delegation (`zfs allow`) instead of root: syncoid otherwise prepends sudo for a
    # non-root user, and FreeBSD's base system has no sudo.
    no_privilege_elevation: bool = False

    def __post_init__(self) -> None:
        if self.compress not in COMPRESS_CHOICES or self.compress == "auto":
            raise InvalidName(f"unknown compression for syncoid: {self.compress!r}",
                              f"use one of {', '.join(COMPRESS_CHOICES)}")
        if self.bwlimit and not _RATE.match(self.bwlimit):
            raise InvalidName(f"not a bandwidth limit: {self.bwlimit!r}",
                              "write it as bytes per second with k, m, g or t: 500k, 20m")


def command(syncoid: str, source: str, target: str, h: SshHost, opts: SyncOptions) -> Shell:
    """One jail dataset and its descendants (`--recursive`: bastille keeps the jail's files
    in the child `root`), local source to the remote target; stdout and stderr merged so
    pv's byte counts come out between the INFO lines of the transfer they belong to.

    Never `--force-delete`: a target that shares no snapshot is renamed aside beforehand
    (replication.py), and on a dataset with children it would destroy them all. No
    `--sshconfig` either (syncoid 2.2+ only; Debian 12 ships 2.1): ssh_args carries the
    resolved settings. syncoid resumes an interrupted receive by itself where ZFS keeps
    resume tokens (OpenZFS)."""
    args = [syncoid, "--recursive", f"--compress={opts.compress}",
            f"--pv-options={PV_OPTIONS}"]
    if opts.bwlimit:
        args.append(f"--source-bwlimit={opts.bwlimit}")
    if opts.no_privilege_elevation:
        args.append("--no-privilege-elevation")
    args += ssh_args(h)
    args += [check_dataset(source), target_spec(h, target)]
    return Shell(shlex.join(args) + " 2>&1")


def version_cmd(syncoid: str) -> Shell:
    return Shell(shlex.join([syncoid, "--version"]) + " 2>&1")


def parse_version(text: str) -> tuple[int, ...] | None:
    """`/usr/sbin/syncoid version 2.1.0` -> (2, 1, 0); None when it says no version."""
    m = re.search(r"version\s+v?([0-9]+(?:\.[0-9]+)*)", text)
    return tuple(int(x) for x in m.group(1).split(".")) if m else None


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
    kind: str  # "full", "incremental" or "resumed" (from a receive_resume_token)
    what: str  # the source snapshot(s), as syncoid names them
    estimate: int | None = None  # syncoid's `zfs send -nP` estimate, where ZFS has one
    counted: int | None = None  # bytes pv counted in the stream
    target: str = ""  # syncoid 2.3 names it; 2.1 does not


@dataclass
class SyncReport:
    transfers: list[Transfer] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    refused_existing: bool = False

    @property
    def kind(self) -> str:
        for kind in ("full", "resumed", "incremental"):
            if any(t.kind == kind for t in self.transfers):
                return kind
        return "none"

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


# The lines that open a transfer, as syncoid 2.1 (Debian 12) and 2.3 (FreeBSD) print them
# (tests/data/syncoid holds samples of both). 2.1 puts the size before "to new target
# filesystem" and names no target; 2.3 names the target, then the size; 2.3 prefixes every
# line with its level (INFO:, WARNING:, CRITICAL ERROR:), where 2.1 printed WARN: and left
# the resume line bare.
_SIZE = r"(?: \(~ (?P<size>[^)]*?)(?: remaining)?\))?"
_TRANSFERS = (
    ("full", re.compile(r"^(?:INFO: )?Sending oldest full snapshot (?P<what>\S+)"
                        r"(?: \(~ (?P<size21>[^)]*)\))? to new target filesystem"
                        r"(?: (?P<target>\S+))?" + _SIZE + r":\s*$")),
    ("incremental", re.compile(r"^(?:INFO: )?(?:Sending incremental|Updating new target "
                               r"filesystem with incremental) (?P<what>\S+ \.\.\. \S+)"
                               r"(?: to (?P<target>\S+))?" + _SIZE + r":\s*$")),
    ("resumed", re.compile(r"^(?:INFO: )?Resuming interrupted zfs send/receive from "
                           r"(?P<what>\S+) to (?P<target>\S+)" + _SIZE + r":\s*$")),
)
_UNITS = {"KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3}


def _estimate(text: str | None) -> int | None:
    if not text:
        return None
    m = re.match(r"^([0-9.]+)\s*(KB|MB|GB)$", text.strip())
    return int(float(m.group(1)) * _UNITS[m.group(2)]) if m else None  # UNKNOWN: None


def _transfer(line: str) -> Transfer | None:
    for kind, pattern in _TRANSFERS:
        m = pattern.match(line)
        if m:
            size = m.groupdict().get("size21") or m.group("size")
            return Transfer(kind, m.group("what"), _estimate(size),
                            target=m.group("target") or "")
    return None


def parse_output(text: str) -> SyncReport:
    """syncoid's merged output: a transfer's opening line, then pv's numbers count its bytes."""
    report = SyncReport()
    for raw in text.splitlines():
        line = raw.strip("\r ").strip()
        if not line:
            continue
        transfer = _transfer(line)
        if transfer is not None:
            report.transfers.append(transfer)
        elif line.isdigit() and report.transfers:
            # Cumulative within one pv; the last number is the transfer's total.
            report.transfers[-1].counted = int(line)
        elif line.startswith(("WARN:", "WARNING:")):
            report.warnings.append(line.split(":", 1)[1].strip())
        elif line.startswith(("CRITICAL ERROR:", "CRITICAL:", "cannot ")):
            report.errors.append(line)
        if "Cowardly refusing to destroy your existing target" in line:
            report.refused_existing = True
    return report
