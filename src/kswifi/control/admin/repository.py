"""Queries of the admin domain."""
