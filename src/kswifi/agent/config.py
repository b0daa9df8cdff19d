"""Gateway agent settings (`KSWIFI_GATEWAY_*` environment variables or CLI options)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kswifi.agent.drivers.loop import DEFAULT_ROUTE_TABLE, loop_names
from kswifi.agent.firewall import (
    DEFAULT_BLOCKED_PORTS,
    DEFAULT_MAX_CONNECTIONS,
    FirewallPolicy,
    parse_network,
    parse_port,
)

# Linux limits interface names to 15 bytes; keep to the characters `ip` accepts everywhere.
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


def check_interface_name(value: str) -> str:
    """Validate a Linux interface name (1-15 characters, no slash or space)."""
    if not _IFNAME.fullmatch(value):
        raise ValueError(f"invalid interface name {value!r} (1-15 of A-Z a-z 0-9 _ . -)")
    return value


DEFAULT_GARDEN_PORT = 28080


class GatewaySettings(BaseSettings):
    """Everything the agent needs to know that the control plane does not tell it."""

    model_config = SettingsConfigDict(env_prefix="KSWIFI_GATEWAY_", extra="ignore")

    control_url: str = Field(description="http(s)://host[:port] or unix:/path/to.sock")
    token: SecretStr | None = Field(
        default=None,
        description="Gateway bearer token from `kswifi admin gateways add` (or a token file)",
    )
    token_file: Path | None = Field(
        default=None, description="File holding the gateway token (`--token-file`)"
    )
    endpoint: str = Field(description="HOST:PORT phones dial (reported to the control plane)")
    wan_interface: str = Field(description="Interface towards the Internet (NAT masquerade)")
    interface: str = Field(default="kswifi0", description="WireGuard interface the agent owns")
    ifb_interface: str | None = Field(
        default=None, description="IFB device for upload shaping; default derived from interface"
    )
    listen_port: int = Field(default=51820, ge=1, le=65535, description="WireGuard UDP port")
    state_dir: Path = Field(
        default=Path("/var/lib/kswifi/gateway"),
        description="Last desired state, counters and the usage spool (mode 0700)",
    )
    address_v4: str = Field(
        default="100.64.0.1/10", description="Interface IPv4 when the control plane names none"
    )
    address_v6: str | None = Field(
        default="fd6b:7377:6966::1/48",
        description="Interface IPv6 when the control plane names none",
    )
    poll_timeout_s: float = Field(default=30.0, gt=0, description="Desired-state long-poll wait")
    usage_interval_s: float = Field(default=1.0, gt=0, description="Counter read and report period")
    heartbeat_interval_s: float = Field(default=5.0, gt=0, description="Health report period")
    resync_interval_s: float = Field(
        default=30.0, gt=0, description="Full read of the data plane against drift"
    )
    lease_refill_fraction: float = Field(
        default=0.9, gt=0, le=1, description="Ask for more lease once this share is served"
    )
    command_timeout_s: float = Field(
        default=20.0, gt=0, description="Longest wait for one ip/nft/tc/wg command"
    )
    metrics_listen: str | None = Field(
        default=None,
        description="HOST:PORT for Prometheus /metrics, e.g. 127.0.0.1:9587 (off when unset)",
    )
    userspace_only: bool = Field(
        default=False, description="Skip the kernel module probe and always use wireguard-go"
    )
    blocked_networks: str = Field(
        default="",
        description="More networks phones may not reach, comma-separated (non-global ranges"
        " and the WAN's on-link networks always are)",
    )
    allowed_networks: str = Field(
        default="", description="Networks phones may reach even where blocked, comma-separated"
    )
    blocked_ports: str = Field(
        default=",".join(DEFAULT_BLOCKED_PORTS),
        description="Outbound ports refused, comma-separated (`tcp/25`, `udp/137`; a bare"
        " number is TCP); empty: none",
    )
    max_connections_per_device: int = Field(
        default=DEFAULT_MAX_CONNECTIONS,
        ge=1,
        description="Connections one device may have open; past it new ones are refused",
    )
    garden_port: int = Field(
        default=DEFAULT_GARDEN_PORT,
        ge=1024,
        le=65535,
        description="Port, on the tunnel addresses, of the page that sends walled-garden"
        " phones' plain-HTTP requests to the shop",
    )
    route_table: int = Field(
        default=DEFAULT_ROUTE_TABLE,
        ge=1,
        lt=2**31,
        description="Routing table that sends downloads through the tier shaper before they"
        " are counted",
    )

    @field_validator("interface", "wan_interface")
    @classmethod
    def _interface_name(cls, value: str) -> str:
        return check_interface_name(value)

    @field_validator("ifb_interface")
    @classmethod
    def _ifb_name(cls, value: str | None) -> str | None:
        return None if value is None else check_interface_name(value)

    @field_validator("control_url")
    @classmethod
    def _control_url(cls, value: str) -> str:
        if value.startswith("unix:"):
            if len(value) <= len("unix:"):
                raise ValueError("unix: needs a socket path, e.g. unix:/run/kswifi.sock")
            return value
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("control_url must be http(s)://host[:port] or unix:/path/to.sock")
        return value.rstrip("/")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError("endpoint must be HOST:PORT, e.g. gw1.example.net:51820")
        return value

    @field_validator("address_v4")
    @classmethod
    def _address_v4(cls, value: str) -> str:
        interface = ipaddress.ip_interface(value)
        if interface.version != 4:
            raise ValueError("address_v4 must be an IPv4 CIDR such as 100.64.0.1/10")
        return str(interface)

    @field_validator("address_v6")
    @classmethod
    def _address_v6(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        interface = ipaddress.ip_interface(value)
        if interface.version != 6:
            raise ValueError("address_v6 must be an IPv6 CIDR such as fd00::1/64")
        return str(interface)

    @field_validator("blocked_networks", "allowed_networks")
    @classmethod
    def _networks(cls, value: str) -> str:
        return ",".join(str(parse_network(item)) for item in _items(value))

    @field_validator("blocked_ports")
    @classmethod
    def _ports(cls, value: str) -> str:
        return ",".join(f"{proto}/{port}" for proto, port in map(parse_port, _items(value)))

    @field_validator("route_table")
    @classmethod
    def _route_table(cls, value: int) -> int:
        if value in (253, 254, 255):
            raise ValueError("253, 254 and 255 are the kernel's default, main and local tables")
        return value

    @model_validator(mode="after")
    def _distinct_interfaces(self) -> GatewaySettings:
        names = [self.interface, self.wan_interface, self.ifb_name, *loop_names(self.interface)]
        if len(set(names)) != len(names):
            raise ValueError(
                "interface, wan_interface, the IFB device and the download loop"
                f" ({', '.join(loop_names(self.interface))}) must all differ"
            )
        return self

    @model_validator(mode="after")
    def _token_from_file(self) -> GatewaySettings:
        if self.token_file is not None:
            if self.token is not None:
                raise ValueError("give the token either in a file or in the environment")
            try:
                text = self.token_file.read_text().strip()
            except OSError as exc:
                raise ValueError(
                    f"cannot read token file {self.token_file}: {exc.strerror}"
                ) from None
            if not text:
                raise ValueError(f"token file {self.token_file} is empty")
            self.token = SecretStr(text)
        if self.token is None or not self.token.get_secret_value():
            raise ValueError("a gateway token is needed: --token-file or KSWIFI_GATEWAY_TOKEN")
        return self

    @property
    def token_value(self) -> str:
        assert self.token is not None  # the validator above guarantees it
        return self.token.get_secret_value()

    @property
    def firewall(self) -> FirewallPolicy:
        """The operator's part of the firewall policy."""
        return FirewallPolicy.build(
            extra_blocked=_items(self.blocked_networks),
            allowed=_items(self.allowed_networks),
            blocked_ports=_items(self.blocked_ports),
            max_connections=self.max_connections_per_device,
        )

    @property
    def ifb_name(self) -> str:
        """The IFB device used for upload shaping (derived from the WireGuard interface)."""
        if self.ifb_interface:
            return self.ifb_interface
        return ("ifb-" + self.interface)[:15]

    @property
    def addresses(self) -> list[str]:
        """Default interface addresses when the desired state does not name them."""
        return [a for a in (self.address_v4, self.address_v6) if a]


def _items(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]
