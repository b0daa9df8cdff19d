"""Signed webhooks to operators: events recorded where they happen, delivered by the worker."""
