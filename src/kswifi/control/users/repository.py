"""Queries of the users domain."""
