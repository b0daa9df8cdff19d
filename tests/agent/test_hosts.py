"""The agent's fast host-address text gives `ipaddress`'s answers, whatever the input."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kswifi.agent.hosts import canonical_host, host_cidr, normalize_allowed_ip


def _expected(function: object, value: str) -> str | type[ValueError]:
    try:
        if function is canonical_host:
            return str(ipaddress.ip_interface(value).ip)
        network = ipaddress.ip_network(value, strict=False)
        if function is normalize_allowed_ip and network.prefixlen == network.max_prefixlen:
            return str(network.network_address)
        return str(network)
    except ValueError:
        return ValueError


# Written as a person or a buggy control plane might: any case, zeros, prefixes, noise.
addresses = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses().map(lambda a: a.exploded),
    st.ip_addresses().map(lambda a: str(a).upper()),
    st.tuples(st.ip_addresses(), st.integers(0, 130)).map(lambda t: f"{t[0]}/{t[1]}"),
    st.ip_addresses(v=6).map(lambda a: f"::ffff:{ipaddress.IPv4Address(int(a) & 0xFFFFFFFF)}"),
    st.text(alphabet="0123456789abcdefABCDEF:./%x ", max_size=45),
)


@settings(max_examples=2000, deadline=None)
@given(addresses)
def test_the_same_answers_as_ipaddress(value: str) -> None:
    for function in (canonical_host, host_cidr, normalize_allowed_ip):
        expected = _expected(function, value)
        if expected is ValueError:
            with pytest.raises(ValueError):
                function(value)
        else:
            assert function(value) == expected, (function.__name__, value)


def test_the_usual_forms() -> None:
    assert canonical_host("100.64.0.2/32") == canonical_host("100.64.0.2") == "100.64.0.2"
    assert canonical_host("FD4B:5357:4946:0:0:0:0:2/128") == "fd4b:5357:4946::2"
    assert canonical_host("::ffff:1.2.3.4") == "::ffff:102:304"  # as ipaddress writes it
    assert host_cidr("100.64.0.2") == "100.64.0.2/32"
    assert host_cidr("fd4b:5357:4946::2") == "fd4b:5357:4946::2/128"
    assert host_cidr("10.1.2.3/8") == "10.0.0.0/8"
    assert normalize_allowed_ip("fd4b:5357:4946:0::2/128") == "fd4b:5357:4946::2"
    assert normalize_allowed_ip("10.1.2.3/8") == "10.0.0.0/8"
    with pytest.raises(ValueError):
        canonical_host("100.64.0.256")
