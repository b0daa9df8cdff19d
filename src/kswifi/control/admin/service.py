"""Business rules of the admin domain."""
