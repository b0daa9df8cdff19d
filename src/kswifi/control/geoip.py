"""Where a client is: country and continent from its address (offline GeoIP) or a proxy header.

The country comes from `iptocc`, whose wheel embeds the Regional Internet Registries' allocation
data (no network call, no file to download); the continent from the table below. Addresses that
are not routable on the Internet (loopback, private, CGNAT, documentation ranges) have no
country. Behind a proxy the operator may name a header that carries the client's address or
its country; both are off by default, because a client could otherwise choose its own.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache

import iptocc

CONTINENTS = ("AF", "AN", "AS", "EU", "NA", "OC", "SA")
CONTINENT_NAMES = {
    "AF": "Africa",
    "AN": "Antarctica",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "OC": "Oceania",
    "SA": "South America",
}

# ISO 3166-1 alpha-2 -> continent. Transcontinental countries go where most of their people
# and networks are (RU, CY -> EU; TR, GE, AM, AZ, KZ -> AS; EG -> AF); the Caribbean and
# Central America count as North America.
_COUNTRIES_BY_CONTINENT = {
    "AF": (
        "AO BF BI BJ BW CD CF CG CI CM CV DJ DZ EG EH ER ET GA GH GM GN GQ GW IO KE KM LR LS "
        "LY MA MG ML MR MU MW MZ NA NE NG RE RW SC SD SH SL SN SO SS ST SZ TD TF TG TN TZ UG "
        "YT ZA ZM ZW"
    ),
    "AN": "AQ BV GS HM",
    "AS": (
        "AE AF AM AZ BD BH BN BT CC CN CX GE HK ID IL IN IQ IR JO JP KG KH KP KR KW KZ LA LB "
        "LK MM MN MO MV MY NP OM PH PK PS QA SA SG SY TH TJ TL TM TR TW UZ VN YE"
    ),
    "EU": (
        "AD AL AT AX BA BE BG BY CH CY CZ DE DK EE ES FI FO FR GB GG GI GR HR HU IE IM IS IT "
        "JE LI LT LU LV MC MD ME MK MT NL NO PL PT RO RS RU SE SI SJ SK SM UA VA XK"
    ),
    "NA": (
        "AG AI AW BB BL BM BQ BS BZ CA CR CU CW DM DO GD GL GP GT HN HT JM KN KY LC MF MQ MS "
        "MX NI PA PM PR SV SX TC TT US VC VG VI"
    ),
    "OC": "AS AU CK FJ FM GU KI MH MP NC NF NR NU NZ PF PG PN PW SB TK TO TV UM VU WF WS",
    "SA": "AR BO BR CL CO EC FK GF GY PE PY SR UY VE",
}
COUNTRY_CONTINENT: dict[str, str] = {
    country: continent
    for continent, countries in _COUNTRIES_BY_CONTINENT.items()
    for country in countries.split()
}

# Non-country codes some proxies send: unknown, Tor, anonymous proxy, satellite, EU/AP blocks.
_NOT_A_COUNTRY = {"XX", "T1", "A1", "A2", "O1", "ZZ", "EU", "AP"}


@dataclass(frozen=True)
class ClientLocation:
    """Where a client seems to be; every field None when that is not known."""

    country: str | None = None
    continent: str | None = None
    source: str = "unknown"  # "geoip", "header" or "unknown"

    @property
    def known(self) -> bool:
        return self.continent is not None


UNKNOWN = ClientLocation()


def continent_of(country: str | None) -> str | None:
    """The continent code of an ISO country code, or None."""
    if not country:
        return None
    return COUNTRY_CONTINENT.get(country.strip().upper())


def is_public(address: str) -> bool:
    """True for an address routable on the Internet (the only kind GeoIP can place)."""
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global


@lru_cache(maxsize=65_536)
def country_of_address(address: str) -> str | None:
    """The ISO country code the address's block is assigned to, from the embedded data."""
    text = address.strip().strip("[]")
    if not is_public(text):
        return None
    ip = ipaddress.ip_address(text)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        text = str(ip.ipv4_mapped)
    code = iptocc.country_code(str(ipaddress.ip_address(text)))
    return code.upper() if isinstance(code, str) and len(code) == 2 else None


def locate_address(address: str | None) -> ClientLocation:
    """Country and continent of an address (unknown for private, loopback and bad input)."""
    if not address:
        return UNKNOWN
    country = country_of_address(address)
    continent = continent_of(country)
    if continent is None:
        return UNKNOWN
    return ClientLocation(country=country, continent=continent, source="geoip")


def locate_country(country: str | None) -> ClientLocation:
    """A country code as a proxy sends it (e.g. `CF-IPCountry`); unknown codes are unknown."""
    code = (country or "").strip().upper()
    if len(code) != 2 or code in _NOT_A_COUNTRY:
        return UNKNOWN
    continent = continent_of(code)
    if continent is None:
        return UNKNOWN
    return ClientLocation(country=code, continent=continent, source="header")


def forwarded_address(header_value: str | None) -> str | None:
    """The address a trusted proxy appended to `X-Forwarded-For`-style headers: the last entry
    (earlier entries are whatever the client sent and prove nothing)."""
    if not header_value:
        return None
    last = header_value.split(",")[-1].strip()
    if last.startswith("[") and "]" in last:  # "[2001:db8::1]:1234"
        last = last[1 : last.index("]")]
    elif last.count(":") == 1:  # "198.51.100.7:1234"
        last = last.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(last))
    except ValueError:
        return None


def locate(
    *,
    peer_address: str | None,
    headers: dict[str, str] | None = None,
    address_header: str = "",
    country_header: str = "",
) -> ClientLocation:
    """Where the caller of a request is.

    A configured country header wins when it carries a real country; then the address from a
    configured address header; then the connection's peer address.
    """
    lowered = {key.lower(): value for key, value in (headers or {}).items()}
    if country_header:
        located = locate_country(lowered.get(country_header.lower()))
        if located.known:
            return located
    address = peer_address
    if address_header:
        address = forwarded_address(lowered.get(address_header.lower())) or peer_address
    return locate_address(address)
