"""Request and response models of the gateways domain (the agent's wire models are in
`kswifi.protocol`)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class GatewayCreate(BaseModel):
    """An operator registering a gateway."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, examples=["eu-west-1"])
    region: str = Field(min_length=1, max_length=32, examples=["eu-west"])
    endpoint: str = Field(
        min_length=3, max_length=255, description="HOST:PORT the phones dial; IPv6 as [addr]:port"
    )
    capacity: int | None = Field(None, ge=1, description="Devices at once; default from settings")
    listen_port: int | None = Field(
        None, ge=1, le=65535, description="WireGuard listen port; default: the endpoint's port"
    )


class GatewayEndpoint(BaseModel):
    """A gateway's new endpoint (what phones dial)."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str = Field(
        min_length=3, max_length=255, description="HOST:PORT the phones dial; IPv6 as [addr]:port"
    )


class GatewayOut(BaseModel):
    """A gateway as the operator console shows it (never its keys' private halves)."""

    id: str
    name: str
    region: str
    endpoint: str
    listen_port: int
    public_key: str
    ipv4_pool: str
    ipv6_pool: str
    capacity: int
    active_devices: int
    is_enabled: bool
    is_online: bool
    interface_mode: str | None
    agent_version: str | None
    peer_count: int
    rx_bps: int
    tx_bps: int
    garden_rx_bytes: int = Field(0, description="Walled-garden bytes from phones (billed to none)")
    garden_tx_bytes: int = Field(0, description="Walled-garden bytes to phones (billed to none)")
    revision: int
    applied_revision: int
    last_heartbeat_at: datetime | None
    created_at: datetime


class GatewayCreated(BaseModel):
    """The new gateway and its token; the token is shown this once and stored only hashed."""

    gateway: GatewayOut
    token: str = Field(description="Bearer token for the gateway agent; shown only once")
