"""Business rules of the profiles domain."""
