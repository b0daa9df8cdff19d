"""Tests of the users domain: accounts, auth, rate limits, CLI."""
