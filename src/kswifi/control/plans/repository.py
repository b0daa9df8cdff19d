"""Queries of the plans domain."""
