"""Request and response models of the regions domain."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Continent = Literal["AF", "AN", "AS", "EU", "NA", "OC", "SA"]
CODE_PATTERN = r"^[a-z][a-z0-9-]{1,31}$"
MAX_DNS_SERVERS = 4
RegionHealth = Literal["online", "full", "offline", "no_gateways"]


def _dns_list(values: list[str]) -> list[str]:
    """DNS servers as IP addresses (what wg-quick's `DNS =` takes), normalised, no repeats."""
    if not 1 <= len(values) <= MAX_DNS_SERVERS:
        raise ValueError(f"give 1 to {MAX_DNS_SERVERS} DNS server addresses")
    seen: list[str] = []
    for value in values:
        try:
            text = str(ipaddress.ip_address(value.strip()))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IP address") from exc
        if text not in seen:
            seen.append(text)
    return seen


class RegionCreate(BaseModel):
    """An operator adding a region (gateways are registered into it afterwards)."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(pattern=CODE_PATTERN, examples=["sa-east"])
    name: str = Field(min_length=1, max_length=64, examples=["South America"])
    location: str = Field("", max_length=64, examples=["São Paulo"])
    continent: Continent = Field(description="Where the region's gateways stand")
    dns_servers: list[str] = Field(
        default_factory=lambda: ["1.1.1.1", "2606:4700:4700::1111"],
        description="Resolvers put in the profiles of this region",
    )
    is_active: bool = True

    @field_validator("name", "location")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @field_validator("dns_servers")
    @classmethod
    def _dns(cls, values: list[str]) -> list[str]:
        return _dns_list(values)


class RegionUpdate(BaseModel):
    """Fields to change; absent fields stay as they are. The code never changes."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=64)
    location: str | None = Field(None, max_length=64)
    continent: Continent | None = None
    dns_servers: list[str] | None = None
    is_active: bool | None = Field(None, description="An inactive region gets no new profiles")

    @field_validator("dns_servers")
    @classmethod
    def _dns(cls, values: list[str] | None) -> list[str] | None:
        return None if values is None else _dns_list(values)


class AdminRegionOut(BaseModel):
    code: str
    name: str
    location: str
    continent: str
    dns_servers: list[str]
    is_active: bool
    created_at: datetime


class AdminRegionList(BaseModel):
    regions: list[AdminRegionOut]


class RegionStatus(BaseModel):
    """A region as the app shows it: where it is, whether it can take a device, how far."""

    code: str
    name: str
    location: str
    continent: str
    status: RegionHealth = Field(
        description="online: can take devices; full: healthy but no room; offline: gateways "
        "registered but none healthy; no_gateways: none registered"
    )
    online: bool
    healthy_gateways: int = Field(description="Enabled gateways with a recent heartbeat")
    gateways: int = Field(description="Enabled gateways")
    capacity_left: int = Field(description="Devices the healthy gateways can still take")
    distance: int | None = Field(
        description="0 same continent … 3 far away; null when the caller's location is unknown"
    )
    latency_hint: str = Field(examples=["Same continent: 20–50 ms"])
    probe_url: str = Field(description="GET it a few times and time the answers")
    recommended: bool = Field(description="Where a profile goes when no region is asked for")


class RegionList(BaseModel):
    """Active regions, nearest first when the caller's location is known."""

    regions: list[RegionStatus]
    client_country: str | None
    client_continent: str | None
    recommended_region: str | None


class RegionProbe(BaseModel):
    region: str
