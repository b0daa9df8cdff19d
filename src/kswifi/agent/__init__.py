"""Gateway agent: turns the control plane's desired state into a real WireGuard data plane."""

AGENT_VERSION = "0.1.0"
