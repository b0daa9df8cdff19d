"""Queries of the gateways domain."""
