"""The usage domain."""
