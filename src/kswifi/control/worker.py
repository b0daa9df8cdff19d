"""Periodic jobs of the control plane: expiry, offline gateways, address cool-down, rollups."""

from __future__ import annotations
