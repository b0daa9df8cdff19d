"""Business rules of the users domain."""
