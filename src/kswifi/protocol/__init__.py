"""Wire models shared by the control plane and the gateway agent (a leaf package)."""

from kswifi.protocol.models import (
    PACKET_BYTES,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    DesiredState,
    GardenSpec,
    GatewayHeartbeat,
    GatewayInterface,
    HeartbeatAck,
    LeaseGrant,
    LeaseRequest,
    LeaseResponse,
    PeerSpec,
    SessionUsageDelta,
    UsageAck,
    UsageReport,
)

__all__ = [
    "PACKET_BYTES",
    "PROTOCOL_HEADER",
    "PROTOCOL_VERSION",
    "DesiredState",
    "GardenSpec",
    "GatewayHeartbeat",
    "GatewayInterface",
    "HeartbeatAck",
    "LeaseGrant",
    "LeaseRequest",
    "LeaseResponse",
    "PeerSpec",
    "SessionUsageDelta",
    "UsageAck",
    "UsageReport",
]
