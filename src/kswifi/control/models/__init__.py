"""ORM models of the control plane (SQLAlchemy 2)."""

from kswifi.control.models.base import Base, new_id, utcnow
from kswifi.control.models.catalog import Plan, Region
from kswifi.control.models.commerce import ProviderEvent, Purchase, Voucher
from kswifi.control.models.messages import (
    DeliveryStatus,
    MailStatus,
    OutgoingMail,
    PushMessage,
    PushSubscription,
    WebhookDelivery,
    WebhookEvent,
)
from kswifi.control.models.network import (
    AddressRelease,
    AuditEntry,
    DesiredChange,
    Device,
    DeviceStatus,
    Gateway,
    GatewayLease,
    SetupLink,
    UsageBatch,
)
from kswifi.control.models.sessions import (
    ALERT_KINDS,
    ENDED_STATES,
    LIVE_STATES,
    SESSION_STATES,
    USABLE_STATES,
    AlertKind,
    DataSession,
    SessionAlert,
    SessionStatus,
    UsageRollup,
)
from kswifi.control.models.users import AccountToken, RefreshToken, TokenPurpose, User

__all__ = [
    "ALERT_KINDS",
    "ENDED_STATES",
    "LIVE_STATES",
    "SESSION_STATES",
    "USABLE_STATES",
    "AccountToken",
    "AddressRelease",
    "AlertKind",
    "AuditEntry",
    "Base",
    "DataSession",
    "DeliveryStatus",
    "DesiredChange",
    "Device",
    "DeviceStatus",
    "Gateway",
    "GatewayLease",
    "MailStatus",
    "OutgoingMail",
    "Plan",
    "ProviderEvent",
    "Purchase",
    "PushMessage",
    "PushSubscription",
    "RefreshToken",
    "Region",
    "SessionAlert",
    "SessionStatus",
    "SetupLink",
    "TokenPurpose",
    "UsageBatch",
    "UsageRollup",
    "User",
    "Voucher",
    "WebhookDelivery",
    "WebhookEvent",
    "new_id",
    "utcnow",
]
