"""The gateways domain."""
