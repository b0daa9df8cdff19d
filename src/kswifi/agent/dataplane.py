"""The kernel data plane: reads WireGuard + nftables + tc into one ActualState and applies
reconcile actions to them (one nf_tables batch then one peer batch, with the tc batch side by
side).

`apply` returns the Observation the kernel holds afterwards, computed in memory: the agent
diffs the next desired state against it instead of reading 10,000 peers back every time, and
re-reads the kernel only at start and on the periodic resync."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Protocol

from kswifi.agent.actions import (
    Action,
    AddPeer,
    ConfigureInterface,
    CreateSession,
    DeleteSession,
    RemovePeer,
    UpdatePeer,
    apply_actions,
)
from kswifi.agent.drivers.command import Runner
from kswifi.agent.drivers.loop import DownloadLoop, tunnel_networks
from kswifi.agent.drivers.nftables import NftablesDriver, NftReading
from kswifi.agent.drivers.tc import TcDriver
from kswifi.agent.drivers.tc_layout import TcReading
from kswifi.agent.drivers.wireguard import (
    InterfaceMode,
    PeerChange,
    WireguardDriver,
    WireguardReading,
)
from kswifi.agent.firewall import FirewallPolicy, Garden, onlink_networks
from kswifi.agent.model import ActualState, InterfaceState

ORPHAN_PREFIX = "#tc:"


@dataclass(frozen=True)
class Observation:
    """One read of the whole data plane (before a reconcile)."""

    wireguard: WireguardReading
    nft: NftReading
    tc: TcReading
    session_minors: dict[str, int] = field(default_factory=dict)
    tc_view: tuple[dict[str, int], dict[str, str]] | None = field(default=None, compare=False)
    """(rates, shaped) by session, when an apply already knows them (else derived from tc)."""
    peer_owners: dict[str, str] | None = field(default=None, compare=False)
    """allowed IP -> peer key, when an apply already built it."""

    def with_usage(self, reading: NftReading) -> Observation:
        """The same observation with fresher quota and counter values (a usage read)."""
        nft = NftReading(
            sessions=reading.sessions,
            addresses=self.nft.addresses,
            counters=reading.counters,
            table_present=reading.table_present,
        )
        return replace(self, nft=nft)

    def actual(self, served: Mapping[str, int]) -> ActualState:
        rates, shaped = self.tc_view or self._tc_view()
        return ActualState(
            interface=self.wireguard.interface,
            peers=self.wireguard.peers,
            sessions=self.nft.sessions,
            addresses=self.nft.addresses,
            rates=rates,
            shaped=shaped,
            served=served,
        )

    def _tc_view(self) -> tuple[dict[str, int], dict[str, str]]:
        minors = self.tc.minors()
        by_minor = {minor: session for session, minor in self.session_minors.items()}
        rates = {session: minors[minor] for session, minor in self.session_minors.items()}
        shaped = {
            address: by_minor[minor]
            for address, minor in self.tc.shaped().items()
            if minor in by_minor
        }
        return rates, shaped


class Dataplane(Protocol):
    """What the agent loop needs from the data plane (the kernel one, or a fake in tests)."""

    @property
    def mode(self) -> InterfaceMode | None: ...

    def prepare(self) -> InterfaceMode: ...

    def observe(self) -> Observation: ...

    def apply(self, actions: Sequence[Action], observation: Observation) -> Observation:
        """Apply `actions` computed against `observation`; the state after them (the
        observation passed in is used up: its dictionaries may become the result's)."""
        ...

    def read_usage(self) -> NftReading: ...

    def read_peers(self) -> WireguardReading: ...

    def use_garden(self, garden: Garden | None) -> None:
        """Enforce the walled garden of peers without a session (None: drop their traffic)."""
        ...


def session_minors(nft: NftReading, tc: TcReading) -> dict[str, int]:
    """Which tc class belongs to which session, learnt from the filters' addresses.

    A class no mapped address points at is an orphan, named `#tc:MINOR` so the diff deletes it.
    """
    result: dict[str, int] = {}
    claimed: set[int] = set()
    for address, minor in sorted(tc.shaped().items()):
        session = nft.addresses.get(address)
        if session is not None and session not in result and minor not in claimed:
            result[session] = minor
            claimed.add(minor)
    for minor in tc.minors():
        if minor not in claimed:
            result[f"{ORPHAN_PREFIX}{minor}"] = minor
    return result


@dataclass
class KernelDataplane:
    """WireGuard, nftables and tc drivers and the download loop composed; forwarding and the
    firewall are switched on in `prepare`."""

    runner: Runner
    wireguard: WireguardDriver
    nft: NftablesDriver
    tc: TcDriver
    loop: DownloadLoop
    policy: FirewallPolicy = field(default_factory=FirewallPolicy)
    """The operator's part of the firewall (the WAN's on-link networks are read here)."""
    garden: Garden | None = None
    """The control plane's part: the walled garden (from the desired state)."""

    @property
    def mode(self) -> InterfaceMode | None:
        return self.wireguard.mode

    def prepare(self) -> InterfaceMode:
        mode = self.wireguard.ensure_interface()
        self.runner(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        self.runner(["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"])
        self.loop.ensure()
        self.tc.ensure_structure()
        self.refresh_firewall()
        return mode

    def refresh_firewall(self) -> None:
        """The firewall with the WAN's on-link networks as the kernel has them now."""
        onlink = onlink_networks(self.runner, self.loop.wan_interface)
        self.nft.use_policy(self.policy.with_onlink(onlink).with_garden(self.garden))

    def use_garden(self, garden: Garden | None) -> None:
        if garden == self.garden:
            return
        self.garden = garden
        self.refresh_firewall()
        if garden is not None:
            self.tc.use_garden(garden.rate_kbit)

    def observe(self) -> Observation:
        wireguard = self.wireguard.read()
        self.loop.route(tunnel_networks(wireguard.interface.addresses))
        nft = self.nft.read()
        self.refresh_firewall()
        tc = self.tc.read()
        return Observation(wireguard, nft, tc, session_minors(nft, tc))

    def apply(self, actions: Sequence[Action], observation: Observation) -> Observation:
        """Apply `actions` (computed against `observation`); returns the state after them,
        made from `observation`'s own dictionaries (not to be used again)."""
        if not actions:
            return observation
        interface = observation.wireguard.interface
        for action in actions:
            if isinstance(action, ConfigureInterface):
                self.wireguard.configure_interface(
                    action.private_key, action.listen_port, action.addresses
                )
                interface = InterfaceState(action.private_key, action.listen_port, action.addresses)
                self.loop.route(tunnel_networks(action.addresses))
        changes: list[PeerChange] = []
        for action in actions:
            match action:
                case RemovePeer(key, _):
                    changes.append(PeerChange(key, remove=True))
                case AddPeer(key, psk, allowed, _) | UpdatePeer(key, psk, allowed):
                    changes.append(PeerChange(key, psk, allowed))
                case _:
                    pass
        # tc (one `tc -batch` per device, mostly kernel time) runs beside the nf_tables batch
        # and the peer write: shaping grants nothing, so it depends on neither. The peers go
        # in only after the nf_tables batch: accounting and quotas are in place first.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tc-apply") as pool:
            shaping = pool.submit(
                self.tc.apply, actions, observation.tc, observation.session_minors
            )
            self.nft.apply(actions, observation.nft.addresses)
            self.wireguard.apply_peers(changes)
            tc, minors = shaping.result()
        return predict(observation, actions, interface, tc, minors)

    def read_usage(self) -> NftReading:
        return self.nft.read_usage()

    def read_peers(self) -> WireguardReading:
        return self.wireguard.read()


def predict(
    observation: Observation,
    actions: Sequence[Action],
    interface: InterfaceState,
    tc: TcReading,
    minors: Mapping[str, int],
) -> Observation:
    """The observation after `actions` were applied (WireGuard and nftables through the same
    model the tests check the drivers against; tc as its driver rendered it).

    The observation's dictionaries are updated in place and become the result's (a change to
    a gateway holding 10,000 sessions copies none of them): `observation` is used up."""
    rates, shaped = observation.tc_view or observation._tc_view()
    peers, nft = observation.wireguard.peers, observation.nft
    before = ActualState(
        interface=observation.wireguard.interface,
        peers=peers,
        sessions=nft.sessions,
        addresses=nft.addresses,
        rates=rates,
        shaped=shaped,
    )
    owners = observation.peer_owners
    if owners is None:
        owners = {ip: key for key, peer in peers.items() for ip in peer.allowed_ips}
    apply_actions(before, actions, owners=owners, in_place=True)
    for action in actions:
        if isinstance(action, DeleteSession | CreateSession):
            nft.counters.pop((action.session_id, "up"), None)
            nft.counters.pop((action.session_id, "down"), None)
    wireguard = WireguardReading(interface, peers)
    after = NftReading(sessions=nft.sessions, addresses=nft.addresses, counters=nft.counters)
    owned_minors = minors if isinstance(minors, dict) else dict(minors)
    return Observation(
        wireguard, after, tc, owned_minors, tc_view=(rates, shaped), peer_owners=owners
    )
