"""Gateway agent: turns the control plane's desired state into a real WireGuard data plane."""

from kswifi import __version__ as AGENT_VERSION  # the one version string

__all__ = ["AGENT_VERSION"]
