"""Queries of the profiles domain."""
