"""KSWiFi Connect: prepaid, metered, speed-tiered Secure Internet Access."""

__version__ = "0.1.0"
