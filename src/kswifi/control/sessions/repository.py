"""Queries of the sessions domain."""
