"""Value types for the data plane as the agent sees it (actual) and wants it (desired)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

Direction = Literal["up", "down"]


@dataclass(frozen=True)
class InterfaceState:
    """The gateway's own WireGuard interface: key, port and addresses."""

    private_key: str | None
    listen_port: int | None
    addresses: frozenset[str]

    def __repr__(self) -> str:  # never print a private key
        return (
            f"InterfaceState(private_key={'<set>' if self.private_key else None}, "
            f"listen_port={self.listen_port}, addresses={sorted(self.addresses)})"
        )


@dataclass(frozen=True)
class PeerState:
    """One WireGuard peer on the interface."""

    public_key: str
    preshared_key: str | None
    allowed_ips: frozenset[str]
    latest_handshake: datetime | None = field(default=None, compare=False)
    endpoint: str | None = field(default=None, compare=False)

    def __repr__(self) -> str:
        return f"PeerState({self.public_key[:8]}…, allowed_ips={sorted(self.allowed_ips)})"


@dataclass(frozen=True)
class SessionObjects:
    """A session's nftables objects: its quota and its two byte counters."""

    quota_bytes: int
    used_bytes: int
    upload_bytes: int = 0
    download_bytes: int = 0

    @property
    def exhausted(self) -> bool:
        """The kernel drops every packet once `used >= quota` (nft_overquota uses >=)."""
        return self.used_bytes >= self.quota_bytes


@dataclass(frozen=True)
class ActualState:
    """What the kernel holds, read before every reconcile (plus what the agent has served)."""

    interface: InterfaceState | None
    peers: Mapping[str, PeerState] = field(default_factory=dict)
    sessions: Mapping[str, SessionObjects] = field(default_factory=dict)
    addresses: Mapping[str, str] = field(default_factory=dict)
    """nftables maps: device address -> session id."""
    rates: Mapping[str, int] = field(default_factory=dict)
    """tc: session id -> class rate in Mbit/s."""
    shaped: Mapping[str, str] = field(default_factory=dict)
    """tc filters: device address -> session id."""
    served: Mapping[str, int] = field(default_factory=dict)
    """Usage tracker: bytes served per session on this gateway, across counter resets."""


@dataclass(frozen=True)
class DesiredPeer:
    """A peer the interface must carry; without a session, in the walled garden (its
    addresses map to no session's objects)."""

    public_key: str
    preshared_key: str
    allowed_ips: frozenset[str]
    session_id: str | None

    def __repr__(self) -> str:
        return f"DesiredPeer({self.public_key[:8]}…, session={self.session_id})"


@dataclass(frozen=True)
class DesiredSession:
    """Limits of one session on this gateway."""

    quota_bytes: int
    speed_mbps: int
    expires_at: datetime | None = None


@dataclass(frozen=True)
class Desired:
    """The data plane the agent aims at (derived from a DesiredState at a given time)."""

    interface: InterfaceState | None
    peers: Mapping[str, DesiredPeer] = field(default_factory=dict)
    sessions: Mapping[str, DesiredSession] = field(default_factory=dict)
    addresses: Mapping[str, str] = field(default_factory=dict)
    expired_peers: frozenset[str] = frozenset()
    """Peers the control plane still lists but whose session has expired (cut by the agent)."""
