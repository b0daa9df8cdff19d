"""WireGuard driver: kernel module when `ip link add … type wireguard` works, else wireguard-go.

Userspace interfaces are driven through their UAPI socket (`/var/run/wireguard/IF.sock`, one
round trip for a whole batch of peers); kernel interfaces through `wg`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol

from kswifi.agent import keys
from kswifi.agent.drivers.command import Runner
from kswifi.agent.errors import CommandError, DriverError
from kswifi.agent.hosts import host_cidr, normalize_allowed_ip
from kswifi.agent.model import InterfaceState, PeerState

InterfaceMode = Literal["kernel", "userspace"]
UAPI_DIR = Path("/var/run/wireguard")


@dataclass(frozen=True)
class PeerChange:
    """A peer to add or update (`remove=False`) or to remove."""

    public_key: str
    preshared_key: str | None = None
    allowed_ips: frozenset[str] = frozenset()
    remove: bool = False


@dataclass(frozen=True)
class WireguardReading:
    interface: InterfaceState
    peers: dict[str, PeerState]
    rx_bytes: int = 0
    tx_bytes: int = 0


class WireguardDriver(Protocol):
    """What the agent needs from a WireGuard backend."""

    @property
    def mode(self) -> InterfaceMode | None: ...

    def ensure_interface(self) -> InterfaceMode: ...

    def read(self) -> WireguardReading: ...

    def configure_interface(
        self, private_key: str | None, listen_port: int | None, addresses: frozenset[str]
    ) -> None: ...

    def apply_peers(self, changes: Sequence[PeerChange]) -> None: ...

    def delete_interface(self) -> None: ...


@dataclass
class WireguardInterface:
    """The one real WireGuard driver: creates, reads and configures one interface."""

    runner: Runner
    name: str
    userspace_only: bool = False
    uapi_dir: Path = UAPI_DIR
    socket_timeout_s: float = 10.0
    _mode: InterfaceMode | None = field(default=None, init=False)

    @property
    def mode(self) -> InterfaceMode | None:
        return self._mode

    @property
    def uapi_path(self) -> Path:
        return self.uapi_dir / f"{self.name}.sock"

    # -- lifecycle ---------------------------------------------------------------------------

    def _link_kind(self) -> str | None:
        """`wireguard`, `tun`, another kind, or None when the link does not exist."""
        try:
            out = self.runner(["ip", "-d", "-j", "link", "show", "dev", self.name])
        except CommandError as exc:
            if "does not exist" in exc.stderr or "Cannot find device" in exc.stderr:
                return None
            raise
        links = json.loads(out or "[]")
        if not links:
            return None
        kind = links[0].get("linkinfo", {}).get("info_kind")
        return str(kind) if kind else "unknown"

    def ensure_interface(self) -> InterfaceMode:
        """Reuse the interface if it exists (agent restart keeps peers), else create it."""
        kind = self._link_kind()
        if kind == "wireguard":
            self._mode = "kernel"
            return self._mode
        if kind == "tun":
            if not self.uapi_path.exists():
                raise DriverError(
                    f"{self.name} exists but {self.uapi_path} does not: is wireguard-go running?"
                )
            self._mode = "userspace"
            return self._mode
        if kind is not None:
            raise DriverError(f"{self.name} exists and is a {kind} device, not WireGuard")
        if not self.userspace_only:
            try:
                self.runner(["ip", "link", "add", "dev", self.name, "type", "wireguard"])
            except CommandError:
                pass  # no kernel module: fall back to wireguard-go
            else:
                self._mode = "kernel"
                return self._mode
        # wireguard-go daemonizes; with LOG_LEVEL unset its child never holds our pipes open.
        self.runner(["env", "-u", "LOG_LEVEL", "wireguard-go", self.name])
        deadline = time.monotonic() + 5.0
        while not self.uapi_path.exists():
            if time.monotonic() > deadline:
                raise DriverError(f"wireguard-go started but {self.uapi_path} did not appear")
            time.sleep(0.02)
        self._mode = "userspace"
        return self._mode

    def delete_interface(self) -> None:
        """Remove the interface (wireguard-go exits when its TUN device goes away)."""
        with contextlib.suppress(CommandError):
            self.runner(["ip", "link", "del", "dev", self.name])
        self._mode = None

    # -- reading -----------------------------------------------------------------------------

    def _addresses(self) -> frozenset[str]:
        out = self.runner(["ip", "-j", "addr", "show", "dev", self.name])
        result: set[str] = set()
        for link in json.loads(out or "[]"):
            for info in link.get("addr_info", []):
                if info.get("scope") == "link":
                    continue
                result.add(str(ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}")))
        return frozenset(result)

    def read(self) -> WireguardReading:
        """Interface key/port/addresses and every peer (with its latest handshake)."""
        mode = self._mode or self.ensure_interface()
        reading = self._read_uapi() if mode == "userspace" else self._read_wg()
        interface = InterfaceState(
            reading.interface.private_key, reading.interface.listen_port, self._addresses()
        )
        return WireguardReading(interface, reading.peers, reading.rx_bytes, reading.tx_bytes)

    def _read_wg(self) -> WireguardReading:
        out = self.runner(["wg", "show", self.name, "dump"])
        lines = out.splitlines()
        if not lines:
            raise DriverError(f"`wg show {self.name} dump` printed nothing")
        head = lines[0].split("\t")
        private_key = None if head[0] == "(none)" else head[0]
        port = int(head[2]) if head[2].isdigit() and int(head[2]) else None
        peers: dict[str, PeerState] = {}
        rx_total = tx_total = 0
        for line in lines[1:]:
            cols = line.split("\t")
            if len(cols) < 8:
                continue
            key, psk, endpoint, allowed, handshake, rx, tx = cols[:7]
            peers[key] = PeerState(
                public_key=key,
                preshared_key=None if psk == "(none)" else psk,
                allowed_ips=frozenset(
                    normalize_allowed_ip(a) for a in allowed.split(",") if a and a != "(none)"
                ),
                latest_handshake=_handshake_time(int(handshake)),
                endpoint=None if endpoint == "(none)" else endpoint,
            )
            rx_total += int(rx)
            tx_total += int(tx)
        return WireguardReading(
            InterfaceState(private_key, port, frozenset()), peers, rx_total, tx_total
        )

    def _uapi(self, request: str) -> str:
        """One UAPI round trip; raises DriverError on a socket problem or a non-zero errno."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.socket_timeout_s)
                sock.connect(str(self.uapi_path))
                sock.sendall(request.encode())
                chunks: list[bytes] = []
                while True:
                    chunk = sock.recv(1 << 20)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    tail = b"".join(chunks[-2:])
                    if tail.endswith(b"\n\n") and b"errno=" in tail:
                        break
        except OSError as exc:
            raise DriverError(f"UAPI socket {self.uapi_path}: {exc}") from exc
        text = b"".join(chunks).decode()
        errno_line = next(
            (line for line in reversed(text.splitlines()) if line.startswith("errno=")), None
        )
        if errno_line is None:
            raise DriverError(f"UAPI {self.uapi_path}: no errno in answer")
        if errno_line != "errno=0":
            raise DriverError(f"UAPI {self.uapi_path}: {errno_line}")
        return text

    def _read_uapi(self) -> WireguardReading:
        private_key: str | None = None
        port: int | None = None
        peers: list[_UapiPeer] = []
        for line in self._uapi("get=1\n\n").splitlines():
            name, sep, value = line.partition("=")
            if not sep:
                continue
            if name == "public_key":
                peers.append(_UapiPeer(keys.from_hex(value)))
            elif not peers:
                if name == "private_key":
                    key = keys.from_hex(value)
                    private_key = None if keys.is_zero_key(key) else key
                elif name == "listen_port":
                    port = int(value) or None
            else:
                peers[-1].take(name, value)
        states = {peer.public_key: peer.state() for peer in peers}
        return WireguardReading(
            InterfaceState(private_key, port, frozenset()),
            states,
            sum(peer.rx_bytes for peer in peers),
            sum(peer.tx_bytes for peer in peers),
        )

    # -- writing -----------------------------------------------------------------------------

    def configure_interface(
        self, private_key: str | None, listen_port: int | None, addresses: frozenset[str]
    ) -> None:
        """Set key and port (one UAPI/wg call), the addresses, and bring the link up."""
        mode = self._mode or self.ensure_interface()
        if private_key is not None or listen_port is not None:
            if mode == "userspace":
                lines = ["set=1"]
                if private_key is not None:
                    lines.append(f"private_key={keys.to_hex(private_key)}")
                if listen_port is not None:
                    lines.append(f"listen_port={listen_port}")
                self._uapi("\n".join(lines) + "\n\n")
            else:
                self._wg_set_interface(private_key, listen_port)
        have = self._addresses()
        wanted = {str(ipaddress.ip_interface(a)) for a in addresses}
        for address in sorted(have - wanted):
            self.runner(["ip", "addr", "del", address, "dev", self.name])
        for address in sorted(wanted - have):
            self.runner(["ip", "addr", "replace", address, "dev", self.name])
        self.runner(["ip", "link", "set", "dev", self.name, "up"])

    def _wg_set_interface(self, private_key: str | None, listen_port: int | None) -> None:
        argv = ["wg", "set", self.name]
        if listen_port is not None:
            argv += ["listen-port", str(listen_port)]
        if private_key is not None:
            argv += ["private-key", "/dev/stdin"]
        self.runner(argv, input_text=(private_key or "") + "\n")

    def apply_peers(self, changes: Sequence[PeerChange]) -> None:
        """Apply all peer changes in one round trip, removals first."""
        if not changes:
            return
        ordered = sorted(changes, key=lambda c: not c.remove)
        mode = self._mode or self.ensure_interface()
        if mode == "userspace":
            self._uapi(_uapi_peer_request(ordered))
        else:
            self._wg_set_peers(ordered)

    def _wg_set_peers(self, changes: Iterable[PeerChange]) -> None:
        # `wg set` reads preshared keys from files: a private temporary directory, removed after.
        with tempfile.TemporaryDirectory(prefix="kswifi-psk-") as tmp:
            os.chmod(tmp, 0o700)
            argv = ["wg", "set", self.name]
            for index, change in enumerate(changes):
                argv += ["peer", change.public_key]
                if change.remove:
                    argv.append("remove")
                    continue
                if change.preshared_key is not None:
                    path = Path(tmp) / str(index)
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "w") as handle:
                        handle.write(change.preshared_key + "\n")
                    argv += ["preshared-key", str(path)]
                argv += ["allowed-ips", ",".join(host_cidr(a) for a in sorted(change.allowed_ips))]
            self.runner(argv)


def _uapi_peer_request(changes: Iterable[PeerChange]) -> str:
    lines = ["set=1"]
    for change in changes:
        lines.append(f"public_key={keys.to_hex(change.public_key)}")
        if change.remove:
            lines.append("remove=true")
            continue
        if change.preshared_key is not None:
            lines.append(f"preshared_key={keys.to_hex(change.preshared_key)}")
        lines.append("replace_allowed_ips=true")
        lines.extend(f"allowed_ip={host_cidr(a)}" for a in sorted(change.allowed_ips))
    return "\n".join(lines) + "\n\n"


def _handshake_time(seconds: int) -> datetime | None:
    return datetime.fromtimestamp(seconds, tz=UTC) if seconds > 0 else None


@dataclass
class _UapiPeer:
    """Accumulates the `key=value` lines of one peer in a UAPI `get` answer."""

    public_key: str
    preshared_key: str | None = None
    allowed_ips: set[str] = field(default_factory=set)
    handshake_s: int = 0
    endpoint: str | None = None
    rx_bytes: int = 0
    tx_bytes: int = 0

    def take(self, name: str, value: str) -> None:
        if name == "preshared_key":
            key = keys.from_hex(value)
            self.preshared_key = None if keys.is_zero_key(key) else key
        elif name == "allowed_ip":
            self.allowed_ips.add(normalize_allowed_ip(value))
        elif name == "last_handshake_time_sec":
            self.handshake_s = int(value)
        elif name == "endpoint":
            self.endpoint = value
        elif name == "rx_bytes":
            self.rx_bytes = int(value)
        elif name == "tx_bytes":
            self.tx_bytes = int(value)

    def state(self) -> PeerState:
        return PeerState(
            public_key=self.public_key,
            preshared_key=self.preshared_key,
            allowed_ips=frozenset(self.allowed_ips),
            latest_handshake=_handshake_time(self.handshake_s),
            endpoint=self.endpoint,
        )
