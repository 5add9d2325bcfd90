"""A loopback TCP proxy in front of a simulated host's sshd that cuts the link on cue.

traffic shaping does not work on the test bed (testbed.md), so a dropped connection is
simulated here: every connection through the proxy is forwarded both ways, and one that
has carried more than `cut_after` bytes upstream (client -> sshd) is closed hard, at most
`cuts` times (-1: every time). An archive upload is the only big upstream stream of a
migration, so that is where the cut lands.
"""
from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

from .hosts import Rig, SimHost, SSH_PORT


@dataclass
class CuttingProxy:
    address: str
    port: int
    target: tuple[str, int]
    cut_after: int | None = None
    cuts: int = 1
    cut_count: int = 0
    connections: int = 0
    _server: socket.socket | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _socks: list[socket.socket] = field(default_factory=list)

    def start(self) -> CuttingProxy:
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((self.address, self.port))
        srv.listen(20)
        self._server = srv
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.close()
        for s in list(self._socks):
            self._close(s)

    def cut_now(self) -> int:
        """Close every open connection at once (the link drops); new ones still pass."""
        with self._lock:
            socks = [s for s in self._socks if s.fileno() != -1]
            self._socks = []
            if socks:
                self.cut_count += 1
        for s in socks:
            self._close(s)
        return len(socks) // 2

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()  # type: ignore[union-attr]
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self.connections += 1
                self._socks += [client, upstream]
            state = {"up": 0}
            threading.Thread(target=self._pump, args=(client, upstream, state, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, state, False),
                             daemon=True).start()

    def _should_cut(self, state: dict) -> bool:
        with self._lock:
            if self.cut_after is None or state["up"] <= self.cut_after or state.get("cut"):
                return False
            if self.cuts >= 0 and self.cut_count >= self.cuts:
                return False
            self.cut_count += 1
            state["cut"] = True
            return True

    @staticmethod
    def _close(s: socket.socket) -> None:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    def _pump(self, src: socket.socket, dst: socket.socket, state: dict, upstream: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if upstream:
                    state["up"] += len(data)
                    if self._should_cut(state):
                        break
                if state.get("cut"):
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close(src)
            self._close(dst)


def through_proxy(rig: Rig, h: SimHost, port: int = SSH_PORT + 1, alias: str = "",
                  **kw) -> tuple[str, CuttingProxy]:
    """A proxy on h's address and `port`, and an ssh alias (`rig-NAME-cut` unless given)
    that goes through it."""
    proxy = CuttingProxy(h.address, port, (h.address, SSH_PORT), **kw).start()
    alias = alias or f"rig-{h.name}-cut"
    assert h.sshd is not None, "the host needs ssh=True"
    with open(rig.known_hosts, "a") as fh:
        fh.write(f"[{h.address}]:{port} ssh-ed25519 {h.sshd.host_pubkey}\n")
    with open(rig.ssh_config, "a") as fh:
        fh.write(f"""
Host {alias}
  HostName {h.address}
  Port {port}
  User root
  IdentityFile {rig.client_key}
  IdentitiesOnly yes
  UserKnownHostsFile {rig.known_hosts}
  StrictHostKeyChecking yes
  BatchMode yes
""")
    return alias, proxy
