"""Queries of the purchases domain."""
