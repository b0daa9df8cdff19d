"""Pydantic models of the gateway protocol (`/api/gateway/v1/...`)."""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import socket
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

PROTOCOL_VERSION = 3
"""2: peers without a session (the walled garden) and the garden's spec in the desired state.
3: desired-state deltas (`changes=true`, answered with a `DesiredUpdate`).
Every agent request names its version in `PROTOCOL_HEADER`; the control plane refuses
versions it does not serve (426) rather than have an agent misread a state it does not know."""
SERVED_PROTOCOL_VERSIONS = (2, 3)
"""What the control plane serves: agents of version 2 keep getting whole states, so gateways
upgrade one at a time after the control plane."""
PROTOCOL_HEADER = "X-KSWiFi-Protocol"
PACKET_BYTES = 1500
"""What one full-size packet counts (an Ethernet-MTU IP packet). A quota or lease with less
than this left cannot carry one: the kernel quota drops the next full packet."""
MAX_PEERS = 100_000  # like a usage report's deltas: far above any gateway's capacity
INT64_MAX = 2**63 - 1  # what the database stores: larger numbers are refused, not a 500
MAX_DELTA_BYTES = 2**40  # 1 TiB per direction in one report (one second of counting)


# A gateway's desired state is parsed whole on every change: 10,000 peers' keys and addresses
# again, nearly all of them seen before. Both checks are pure, so valid values are remembered
# (ipaddress alone took about half of parsing 10,000 peers).
_SEEN = 1 << 17


@functools.lru_cache(maxsize=_SEEN)
def _check_wireguard_key(value: str) -> str:
    """A WireGuard key is 32 bytes, base64 with padding (44 characters)."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not a base64 WireGuard key") from exc
    if len(raw) != 32:
        raise ValueError("a WireGuard key is 32 bytes")
    return value


@functools.lru_cache(maxsize=_SEEN)
def _check_host_network(value: str) -> str:
    network = ipaddress.ip_network(value, strict=True)
    if network.prefixlen != network.max_prefixlen:
        raise ValueError("allowed_ips entries are single addresses (/32 or /128)")
    return str(network)


WireguardKeyText = Annotated[str, AfterValidator(_check_wireguard_key)]
HostNetwork = Annotated[str, AfterValidator(_check_host_network)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PeerSpec(_Model):
    """One device (WireGuard peer) the gateway must carry: drawing from a session, or, with
    no `session_id`, in the walled garden (see `GardenSpec`; no quota, no expiry)."""

    public_key: WireguardKeyText
    preshared_key: WireguardKeyText
    allowed_ips: list[HostNetwork] = Field(min_length=1, max_length=2)
    session_id: str | None = Field(None, min_length=1, max_length=64)
    quota_bytes: int = Field(
        0,
        ge=0,
        description=(
            "Lease, cumulative: total bytes (upload + download) this gateway may serve the"
            " session over its whole life, counting bytes it already served and reported."
            " With one gateway it is the session's whole data limit. The agent keeps what it"
            " served across counter resets and sets the kernel quota to quota_bytes - served."
        ),
    )
    speed_mbps: int = Field(0, ge=0, le=100_000)
    expires_at: datetime | None = None

    @model_validator(mode="after")
    def _garden_peers_carry_no_session_limits(self) -> PeerSpec:
        if self.session_id is None:
            if self.quota_bytes or self.speed_mbps or self.expires_at is not None:
                raise ValueError("a peer without a session has no quota, speed or expiry")
        elif self.speed_mbps <= 0:
            raise ValueError("a session's speed_mbps is positive")
        return self


class GardenSpec(_Model):
    """What a peer without a session may reach: DNS at its resolvers and the KSWiFi app (its
    addresses and the operator's networks), at a small shared rate, counted for the operator
    and billed to nobody. Any other plain-HTTP request is answered with a redirect to
    `redirect_url`; every other connection is refused at once."""

    allow: list[str] = Field(default_factory=list, max_length=256)
    dns: list[str] = Field(default_factory=list, max_length=8)
    redirect_url: str = Field(min_length=8, max_length=2048, pattern=r"^https?://[^\s]+$")
    rate_kbit: int = Field(256, ge=8, le=1_000_000)

    @model_validator(mode="after")
    def _addresses_parse(self) -> GardenSpec:
        for network in self.allow:
            ipaddress.ip_network(network, strict=False)
        for address in self.dns:
            ipaddress.ip_address(address)
        return self


class GatewayInterface(_Model):
    """The gateway's own WireGuard interface: its key pair is made by the control plane."""

    private_key: WireguardKeyText
    public_key: WireguardKeyText
    listen_port: int = Field(ge=1, le=65535)
    addresses: list[str] = Field(
        min_length=1, max_length=2, description="Interface CIDRs, e.g. 100.64.0.1/16, fd..::1/64"
    )


class DesiredState(_Model):
    """Everything a gateway should carry at one revision of the control plane."""

    revision: int = Field(ge=0)
    interface: GatewayInterface | None = None
    peers: list[PeerSpec] = Field(max_length=MAX_PEERS)
    report_applied: bool = Field(
        default=False,
        description="This revision lowers a lease; the bytes it gives back go to other "
        "gateways once a heartbeat reports it applied, so send one as soon as it is",
    )
    garden: GardenSpec | None = Field(
        None, description="The walled garden of peers without a session (none: dropped)"
    )

    @model_validator(mode="after")
    def _no_peer_takes_another_ones_traffic(self) -> DesiredState:
        """Refused as a whole (the agent keeps its last good state): two peers with one key
        or one address, or an address outside the interface's blocks, would route one
        person's traffic to another peer."""
        check_peers(self.interface, self.peers)
        return self


def check_peers(interface: GatewayInterface | None, peers: list[PeerSpec]) -> None:
    """No two of `peers` share a key or an address, and every address lies in the
    interface's blocks (ValueError otherwise)."""
    blocks: dict[int, list[tuple[int, int]]] = {}  # IP version -> (network, netmask)
    for cidr in interface.addresses if interface is not None else []:
        network = ipaddress.ip_interface(cidr).network
        blocks.setdefault(network.version, []).append(
            (int(network.network_address), int(network.netmask))
        )
    keys: set[str] = set()
    addresses: set[str] = set()
    for peer in peers:
        if peer.public_key in keys:
            raise ValueError(f"two peers share the public key {peer.public_key[:8]}…")
        keys.add(peer.public_key)
        for address in peer.allowed_ips:
            if address in addresses:
                raise ValueError(f"two peers share the address {address}")
            addresses.add(address)
            host = address.partition("/")[0]
            version = 6 if ":" in host else 4
            family = socket.AF_INET6 if version == 6 else socket.AF_INET
            value = int.from_bytes(socket.inet_pton(family, host))  # already validated
            own = blocks.get(version)
            if own and not any(value & mask == net for net, mask in own):
                raise ValueError(f"{address} is outside the gateway's address blocks")


class DesiredDelta(_Model):
    """What changed in a gateway's desired state since the state the agent holds
    (`base_revision`, named by the `tag` it came with): peers added or changed, in full;
    peers removed, by public key; the interface and the garden as they are now (small)."""

    base_revision: int = Field(ge=0)
    revision: int = Field(ge=0)
    interface: GatewayInterface | None = None
    upsert: list[PeerSpec] = Field(default_factory=list, max_length=MAX_PEERS)
    remove: list[WireguardKeyText] = Field(default_factory=list, max_length=MAX_PEERS)
    report_applied: bool = False
    garden: GardenSpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> DesiredDelta:
        if self.revision < self.base_revision:
            raise ValueError("a delta never goes back to an older revision")
        if set(self.remove) & {peer.public_key for peer in self.upsert}:
            raise ValueError("a peer is both changed and removed")
        check_peers(self.interface, self.upsert)
        return self


class DesiredUpdate(_Model):
    """The answer to an agent that takes changes (`changes=true`): the whole state
    (`kind` `full`: the first answer, or the agent's state is unknown here or too old) or
    what changed since it (`delta`). `tag` names this answer: the agent sends it back as
    `known`, and only a control plane that sent it answers with a delta from it."""

    kind: Literal["full", "delta"]
    tag: str = Field(min_length=1, max_length=64)
    state: DesiredState | None = None
    delta: DesiredDelta | None = None

    @model_validator(mode="after")
    def _one_body(self) -> DesiredUpdate:
        if (self.state is not None) != (self.kind == "full") or (self.delta is not None) != (
            self.kind == "delta"
        ):
            raise ValueError("a full answer carries `state`, a delta `delta`, never both")
        return self

    @property
    def revision(self) -> int:
        body = self.state if self.state is not None else self.delta
        assert body is not None  # the validator makes sure
        return body.revision


class SessionUsageDelta(_Model):
    """Bytes a gateway counted for one session since its previous report."""

    session_id: str = Field(min_length=1, max_length=64)
    rx_bytes: int = Field(ge=0, le=MAX_DELTA_BYTES, description="Bytes from the device (upload)")
    tx_bytes: int = Field(ge=0, le=MAX_DELTA_BYTES, description="Bytes to the device (download)")
    quota_exhausted: bool = False


class UsageReport(_Model):
    """A batch of usage deltas; `sequence` increases by one per batch and gateway."""

    sequence: int = Field(ge=1, le=INT64_MAX)
    sent_at: datetime
    deltas: list[SessionUsageDelta] = Field(max_length=100_000)


class UsageAck(_Model):
    accepted: bool
    duplicate: bool
    last_sequence: int
    leases: list[LeaseGrant] = []


class LeaseRequest(_Model):
    session_ids: list[str] = Field(max_length=100_000)


class LeaseGrant(_Model):
    session_id: str
    quota_bytes: int = Field(ge=0)


class LeaseResponse(_Model):
    revision: int
    leases: list[LeaseGrant]


class GatewayHeartbeat(_Model):
    agent_version: str = Field(max_length=64)
    protocol_version: int = PROTOCOL_VERSION
    interface_mode: Literal["kernel", "userspace"]
    peer_count: int = Field(ge=0, le=INT64_MAX)
    rx_bps: int = Field(ge=0, le=INT64_MAX, default=0)
    tx_bps: int = Field(ge=0, le=INT64_MAX, default=0)
    applied_revision: int = Field(ge=0, le=INT64_MAX, default=0)
    handshakes: dict[str, datetime] = Field(
        default_factory=dict, description="Latest handshake per peer public key"
    )
    garden_rx_bytes: int = Field(
        0, ge=0, le=INT64_MAX, description="Bytes from garden peers forwarded (kernel counter)"
    )
    garden_tx_bytes: int = Field(
        0, ge=0, le=INT64_MAX, description="Bytes to garden peers forwarded (kernel counter)"
    )


class HeartbeatAck(_Model):
    ok: bool
    server_time: datetime


UsageAck.model_rebuild()
