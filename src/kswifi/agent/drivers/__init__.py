"""Data-plane drivers: WireGuard, nftables, tc and links, each behind a small Protocol."""
