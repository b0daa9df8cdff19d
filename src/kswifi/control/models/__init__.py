"""ORM models of the control plane (SQLAlchemy 2)."""

from kswifi.control.models.base import Base, new_id, utcnow
from kswifi.control.models.catalog import Plan, Region
from kswifi.control.models.commerce import ProviderEvent, Purchase, Voucher
from kswifi.control.models.network import (
    AddressRelease,
    AuditEntry,
    Device,
    Gateway,
    GatewayLease,
    SetupLink,
    UsageBatch,
)
from kswifi.control.models.sessions import LIVE_STATES, SESSION_STATES, DataSession, UsageRollup
from kswifi.control.models.users import RefreshToken, User

__all__ = [
    "LIVE_STATES",
    "SESSION_STATES",
    "AddressRelease",
    "AuditEntry",
    "Base",
    "DataSession",
    "Device",
    "Gateway",
    "GatewayLease",
    "Plan",
    "ProviderEvent",
    "Purchase",
    "RefreshToken",
    "Region",
    "SetupLink",
    "UsageBatch",
    "UsageRollup",
    "User",
    "Voucher",
    "new_id",
    "utcnow",
]
