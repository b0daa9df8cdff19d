"""KSWiFi Connect: prepaid, metered, speed-tiered Secure Internet Access."""

__version__ = "0.1.0"
"""The one version string: the package metadata, `kswifi --version`, the agent's User-Agent
and heartbeat, and the web app's service worker all read it."""
