"""Business rules of the usage domain."""
