"""The control plane: users, plans, purchases, sessions, profiles, gateways and usage."""
