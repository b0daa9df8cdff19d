"""Gateways, devices (Connect Profiles), address allocations, leases and usage batches."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from kswifi.control.models.base import UPDATED_TABLE_OPTIONS, Base, new_id, utcnow


class DeviceStatus(StrEnum):
    """A Connect Profile's device: its keys work (`active`) or were retired (`removed`)."""

    ACTIVE = "active"
    REMOVED = "removed"


class Gateway(Base):
    __tablename__ = "gateways"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    region_code: Mapped[str] = mapped_column(ForeignKey("regions.code"), index=True)
    endpoint: Mapped[str] = mapped_column(String(255))  # host:port the phones dial
    listen_port: Mapped[int] = mapped_column(default=51820)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    public_key: Mapped[str] = mapped_column(String(44))
    private_key_encrypted: Mapped[str] = mapped_column(String(512))
    ipv4_pool: Mapped[str] = mapped_column(String(64), unique=True)
    ipv6_pool: Mapped[str] = mapped_column(String(64), unique=True)
    capacity: Mapped[int] = mapped_column(default=10_000)
    next_host_index: Mapped[int] = mapped_column(BigInteger, default=2)
    # Devices installed on it (its peers), kept up where a device's address is taken and
    # given back (`gateways.addresses`): placement reads it instead of counting devices.
    installed_devices: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    revision: Mapped[int] = mapped_column(BigInteger, default=1)
    is_enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    is_online: Mapped[bool] = mapped_column(default=False)
    agent_version: Mapped[str | None] = mapped_column(String(64), default=None)
    interface_mode: Mapped[str | None] = mapped_column(String(16), default=None)
    peer_count: Mapped[int] = mapped_column(default=0)
    rx_bps: Mapped[int] = mapped_column(BigInteger, default=0)
    tx_bps: Mapped[int] = mapped_column(BigInteger, default=0)
    # Walled-garden bytes forwarded (the agent's kernel counters, billed to no session).
    garden_rx_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    garden_tx_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    applied_revision: Mapped[int] = mapped_column(BigInteger, default=0)
    last_usage_sequence: Mapped[int] = mapped_column(BigInteger, default=0)


class Device(Base):
    """One Connect Profile: a person's device, a WireGuard peer on a gateway for as long as
    the person keeps it. `id` is `connect_id`. `session_id` is the session it draws data from
    now (None: no usable session, or beyond the current one's device limit: the garden)."""

    __tablename__ = "devices"
    __table_args__ = (
        Index("ix_devices_gateway_status", "gateway_id", "status"),
        UniqueConstraint("public_key"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    session_id: Mapped[str | None] = mapped_column(
        ForeignKey("data_sessions.id"), index=True, default=None
    )
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    gateway_id: Mapped[str] = mapped_column(ForeignKey("gateways.id"))
    device_name: Mapped[str] = mapped_column(String(64), default="My device")
    status: Mapped[str] = mapped_column(String(16), default=DeviceStatus.ACTIVE.value)
    public_key: Mapped[str] = mapped_column(String(44))
    preshared_key_encrypted: Mapped[str] = mapped_column(String(512))
    # Kept (encrypted) so the person can show the same profile again without new keys; None
    # for profiles made before it was kept (showing those again rotates their keys).
    private_key_encrypted: Mapped[str | None] = mapped_column(String(512), default=None)
    host_index: Mapped[int] = mapped_column(BigInteger)
    ipv4: Mapped[str] = mapped_column(String(64))
    ipv6: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    rotated_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_handshake_at: Mapped[datetime | None] = mapped_column(default=None)
    removed_at: Mapped[datetime | None] = mapped_column(default=None)


class AddressRelease(Base):
    """A host index given back by a removed device; reusable after the cool-down."""

    __tablename__ = "address_releases"

    gateway_id: Mapped[str] = mapped_column(
        ForeignKey("gateways.id", ondelete="CASCADE"), primary_key=True
    )
    host_index: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    released_at: Mapped[datetime] = mapped_column(default=utcnow)


class DesiredChange(Base):
    """Whose peers a desired-state revision of a gateway changed: a person (`user_id`), or
    everything (`EVERYONE`). A control plane that sent the gateway an earlier revision reads
    these to build the next answer from the changed people alone (see
    `kswifi.control.gateways.desired`); rows older than an hour are purged."""

    __tablename__ = "desired_changes"

    EVERYONE = ""

    gateway_id: Mapped[str] = mapped_column(
        ForeignKey("gateways.id", ondelete="CASCADE"), primary_key=True
    )
    revision: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class GatewayLease(Base):
    """Bytes a gateway may serve a session over its life (cumulative) and what it reported."""

    __tablename__ = "gateway_leases"
    __table_args__ = {"postgresql_with": UPDATED_TABLE_OPTIONS}

    gateway_id: Mapped[str] = mapped_column(
        ForeignKey("gateways.id", ondelete="CASCADE"), primary_key=True
    )
    session_id: Mapped[str] = mapped_column(
        ForeignKey("data_sessions.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    granted_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    used_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # A lowered grant frees nothing until the gateway applied it: the higher grant it may
    # still enforce, counted as reserved until it reports `applied_revision` >= the revision.
    held_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    held_until_revision: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # When the gateway last served the session (or took the lease): idle leases are reclaimed.
    served_at: Mapped[datetime | None] = mapped_column(default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class UsageBatch(Base):
    """Each applied usage report: (gateway, sequence) is unique, so a replay applies nothing."""

    __tablename__ = "usage_batches"

    gateway_id: Mapped[str] = mapped_column(
        ForeignKey("gateways.id", ondelete="CASCADE"), primary_key=True
    )
    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    delta_count: Mapped[int] = mapped_column(default=0)
    total_bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class SetupLink(Base):
    """A single-use, short-lived link that opens the phone's setup page for one device."""

    __tablename__ = "setup_links"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    config_encrypted: Mapped[str] = mapped_column(String(4096))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None] = mapped_column(default=None)


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    actor: Mapped[str] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(255), default="")
    detail: Mapped[str] = mapped_column(String(2048), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
