"""Business rules of the gateways domain."""
