"""Client location: the embedded GeoIP data, the continent table and the proxy headers."""

from __future__ import annotations

import pytest

from kswifi.control import geoip
from tests.control.regions.conftest import GB_ADDRESS, JP_ADDRESS, US_ADDRESS


class TestAddresses:
    @pytest.mark.parametrize(
        ("address", "country", "continent"),
        [
            (US_ADDRESS, "US", "NA"),
            (GB_ADDRESS, "GB", "EU"),
            (JP_ADDRESS, "JP", "AS"),
            ("2001:4860:4860::8888", "US", "NA"),
            (f"::ffff:{GB_ADDRESS}", "GB", "EU"),
        ],
    )
    def test_public_addresses_have_a_country_and_continent(
        self, address: str, country: str, continent: str
    ) -> None:
        located = geoip.locate_address(address)
        assert (located.country, located.continent, located.source) == (
            country,
            continent,
            "geoip",
        )

    @pytest.mark.parametrize(
        "address",
        [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.9",
            "100.64.0.1",
            "192.0.2.1",
            "::1",
            "fd00::1",
            "not an address",
            "",
            None,
        ],
    )
    def test_unroutable_or_bad_addresses_are_unknown(self, address: str | None) -> None:
        assert geoip.locate_address(address) == geoip.UNKNOWN
        assert not geoip.UNKNOWN.known


class TestContinents:
    def test_every_assigned_country_has_exactly_one_continent(self) -> None:
        codes = [c for group in geoip._COUNTRIES_BY_CONTINENT.values() for c in group.split()]
        assert len(codes) == len(set(codes)) == len(geoip.COUNTRY_CONTINENT) == 250
        assert set(geoip.COUNTRY_CONTINENT.values()) == set(geoip.CONTINENTS)

    @pytest.mark.parametrize(
        ("country", "continent"),
        [("BR", "SA"), ("NG", "AF"), ("AU", "OC"), ("SG", "AS"), ("MX", "NA"), ("de", "EU")],
    )
    def test_continent_of(self, country: str, continent: str) -> None:
        assert geoip.continent_of(country) == continent

    def test_unknown_codes(self) -> None:
        assert geoip.continent_of("QQ") is None
        assert geoip.continent_of(None) is None


class TestHeaders:
    def test_headers_are_ignored_unless_configured(self) -> None:
        located = geoip.locate(
            peer_address="127.0.0.1",
            headers={"CF-IPCountry": "GB", "X-Forwarded-For": GB_ADDRESS},
        )
        assert located == geoip.UNKNOWN

    def test_country_header_wins_when_it_names_a_country(self) -> None:
        located = geoip.locate(
            peer_address=US_ADDRESS,
            headers={"cf-ipcountry": "sg"},
            country_header="CF-IPCountry",
        )
        assert (located.country, located.continent, located.source) == ("SG", "AS", "header")

    @pytest.mark.parametrize("value", ["XX", "T1", "", "GBR", "EU"])
    def test_non_country_values_fall_back_to_the_address(self, value: str) -> None:
        located = geoip.locate(
            peer_address=US_ADDRESS, headers={"CF-IPCountry": value}, country_header="CF-IPCountry"
        )
        assert located.country == "US"

    def test_forwarded_for_uses_the_entry_the_proxy_appended(self) -> None:
        # The first entry is whatever the client claimed; only the last is the proxy's word.
        located = geoip.locate(
            peer_address="127.0.0.1",
            headers={"X-Forwarded-For": f"{JP_ADDRESS}, {GB_ADDRESS}"},
            address_header="X-Forwarded-For",
        )
        assert located.country == "GB"

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (f"{GB_ADDRESS}:4431", GB_ADDRESS),
            ("[2001:db8::7]:443", "2001:db8::7"),
            ("2001:db8::7", "2001:db8::7"),
            ("garbage", None),
            (None, None),
        ],
    )
    def test_forwarded_address_forms(self, value: str | None, expected: str | None) -> None:
        assert geoip.forwarded_address(value) == expected

    def test_bad_forwarded_header_falls_back_to_the_peer(self) -> None:
        located = geoip.locate(
            peer_address=JP_ADDRESS,
            headers={"X-Forwarded-For": "nonsense"},
            address_header="X-Forwarded-For",
        )
        assert located.country == "JP"
