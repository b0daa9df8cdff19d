"""Business rules of the purchases domain."""
