"""Payment providers that talk to the outside world (Stripe)."""
