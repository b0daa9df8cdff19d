"""Regions: where gateways stand, their health, and placing a new device in the nearest one."""
