"""Business rules of the sessions domain."""
