"""Queries of the usage domain."""
