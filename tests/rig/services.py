"""zfs-fuse pools and sshd instances for the simulated hosts."""
from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ZFS = "/usr/sbin/zfs"
ZPOOL = "/usr/sbin/zpool"


def sh(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and res.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def ensure_zfs_fuse() -> None:
    """One zfs-fuse daemon per machine: reuse a running one, else start it."""
    if not Path("/dev/fuse").exists():
        raise RuntimeError("/dev/fuse is missing: zfs-fuse cannot run on this machine")
    if not shutil.which("zfs-fuse"):
        raise RuntimeError("zfs-fuse is not installed: run scripts/setup")
    if sh("pgrep", "-x", "zfs-fuse", check=False).returncode:
        sh("zfs-fuse")
    deadline = time.monotonic() + 20
    while sh(ZPOOL, "list", check=False).returncode:
        if time.monotonic() > deadline:
            raise RuntimeError("zfs-fuse started but `zpool list` still fails")
        time.sleep(0.2)


def zfs_retry(*args: str, timeout: float = 60) -> None:
    """zfs-fuse unmounts asynchronously: `destroy` may say busy until the unmount is done,
    which takes longer on a loaded machine; try again until it succeeds or `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        res = sh(ZFS, *args, check=False)
        if res.returncode == 0 or "does not exist" in res.stderr:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"zfs {' '.join(args)}: {res.stderr.strip()}")
        time.sleep(0.3)


@dataclass
class Pool:
    name: str
    image: Path
    mountpoint: Path

    def create(self, size: str = "1G") -> None:
        self.image.parent.mkdir(parents=True, exist_ok=True)
        sh("truncate", "-s", size, str(self.image))
        # atime off, as FreeBSD's installer creates zroot: reading a dataset's files (a
        # digest, a running PostgreSQL) must not make its next increment
        sh(ZPOOL, "create", "-f", "-O", "atime=off", "-m", str(self.mountpoint), self.name,
           str(self.image))

    def destroy(self, tries: int = 20) -> bool:
        """The pool and its image gone (True), or the pool still there after `tries`."""
        for _ in range(tries):
            res = sh(ZPOOL, "destroy", "-f", self.name, check=False)
            if res.returncode == 0 or "no such pool" in res.stderr:
                self.image.unlink(missing_ok=True)
                return True
            time.sleep(0.3)
        return False

    def mount_of(self, dataset: str) -> Path:
        return Path(sh(ZFS, "get", "-H", "-o", "value", "mountpoint", dataset).stdout.strip())


def stale_pools(prefix: str) -> list[str]:
    out = sh(ZPOOL, "list", "-H", "-o", "name", check=False).stdout.split()
    return [p for p in out if p.startswith(prefix)]


# FreeBSD has no bash in its base system: these run a program in a mount namespace where
# /bin/bash is /bin/false, and where root's login shell (which sshd runs every session
# through) is /bin/sh. The namespace lets go of its copies of the zfs-fuse mounts (every
# rig's on this machine), which would otherwise keep them busy for `zfs destroy`; the rig's
# zfs wrapper runs zfs in the daemon's namespace, and nothing here reads a dataset's files.
_NO_BASH = ('mount --bind /bin/false /bin/bash && mount --bind "$1" /etc/passwd && shift && '
            "for m in $(awk '$3 == \"fuse.zfs\" {print $2}' /proc/self/mounts | sort -r); "
            'do umount -l "$m"; done; exec "$@"')


def passwd_without_bash(where: Path, shell: str = "/bin/sh") -> Path:
    """A copy of /etc/passwd whose bash login shells are `shell`."""
    path = where / f"passwd-without-bash-{Path(shell).name}"
    if not path.exists():
        lines = [re.sub(r":(/usr)?/bin/bash$", f":{shell}", ln)
                 for ln in Path("/etc/passwd").read_text().splitlines()]
        path.write_text("\n".join(lines) + "\n")
    return path


def without_bash(argv: list[str], where: Path, shell: str = "/bin/sh") -> list[str]:
    """`argv` run where bash fails, as on FreeBSD, with root's login shell `shell`."""
    return ["unshare", "-m", "--propagation", "slave", "sh", "-c", _NO_BASH, "sh",
            str(passwd_without_bash(where, shell)), *argv]


@dataclass
class Sshd:
    """One sshd for one simulated host, with its own address, port, HOME and PATH."""

    address: str
    port: int
    dir: Path
    setenv: dict[str, str]
    authorized_key: str
    proc: subprocess.Popen | None = None
    wrap: list[str] = field(default_factory=list)  # a prefix: without_bash([], ...)

    @property
    def host_pubkey(self) -> str:
        return (self.dir / "ssh_host_ed25519_key.pub").read_text().split()[1]

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(exist_ok=True)
        key = self.dir / "ssh_host_ed25519_key"
        if not key.exists():
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
        (self.dir / "authorized_keys").write_text(self.authorized_key + "\n")
        setenv = " ".join(f'"{k}={v}"' for k, v in self.setenv.items())
        (self.dir / "sshd_config").write_text(f"""\
Port {self.port}
ListenAddress {self.address}
HostKey {key}
PidFile {self.dir}/sshd.pid
AuthorizedKeysFile {self.dir}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 50
MaxSessions 50
SetEnv {setenv}
Subsystem sftp /usr/lib/openssh/sftp-server
""")
        log = open(self.dir / "sshd.log", "w")
        argv = ["/usr/sbin/sshd", "-D", "-e", "-f", str(self.dir / "sshd_config")]
        self.proc = subprocess.Popen([*self.wrap, *argv], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        import socket
        while True:
            try:
                socket.create_connection((self.address, self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sshd on {self.address}:{self.port} did not start: "
                                       f"{(self.dir / 'sshd.log').read_text()}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
