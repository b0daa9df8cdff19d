"""WireguardKey value type and key generation, checked against `wg` when it is installed."""

from __future__ import annotations

import base64
import shutil
import subprocess

import pytest

from kswifi.control.profiles.keys import (
    WireguardKey,
    generate_keypair,
    generate_preshared_key,
)

WG = shutil.which("wg")


def wg(*args: str, stdin: str = "") -> str:
    assert WG is not None
    result = subprocess.run(
        [WG, *args], input=stdin, capture_output=True, text=True, timeout=10, check=True
    )
    return result.stdout.strip()


class TestWireguardKey:
    def test_round_trips_base64(self) -> None:
        text = base64.b64encode(bytes(range(32))).decode()
        key = WireguardKey.from_base64(text)
        assert str(key) == text
        assert key.raw == bytes(range(32))

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "not base64 at all, not base64 at all, not b=",
            base64.b64encode(b"\x00" * 31).decode(),
            base64.b64encode(b"\x00" * 33).decode(),
            base64.b64encode(b"\x00" * 32).decode()[:-1] + "!",
        ],
    )
    def test_rejects_anything_but_32_bytes_of_base64(self, text: str) -> None:
        with pytest.raises(ValueError):
            WireguardKey.from_base64(text)

    def test_rejects_wrong_raw_length(self) -> None:
        with pytest.raises(ValueError):
            WireguardKey(b"short")

    def test_is_frozen_and_hashable(self) -> None:
        key = generate_preshared_key()
        with pytest.raises(AttributeError):
            key.raw = b"\x00" * 32  # type: ignore[misc]
        assert {key, WireguardKey(key.raw)} == {key}

    def test_repr_hides_the_key(self) -> None:
        key = generate_preshared_key()
        assert str(key) not in repr(key)


class TestGeneration:
    def test_keypair_public_matches_private(self) -> None:
        pair = generate_keypair()
        assert pair.private_key.public_key() == pair.public_key
        assert len(str(pair.public_key)) == 44

    def test_keys_are_fresh(self) -> None:
        assert len({str(generate_keypair().private_key) for _ in range(20)}) == 20
        assert len({str(generate_preshared_key()) for _ in range(20)}) == 20

    @pytest.mark.skipif(WG is None, reason="wireguard-tools (wg) not installed")
    def test_public_key_matches_wg_pubkey(self) -> None:
        for _ in range(5):
            pair = generate_keypair()
            assert wg("pubkey", stdin=str(pair.private_key) + "\n") == str(pair.public_key)

    @pytest.mark.skipif(WG is None, reason="wireguard-tools (wg) not installed")
    def test_derivation_of_a_wg_genkey_key(self) -> None:
        private = wg("genkey")
        expected = wg("pubkey", stdin=private + "\n")
        assert str(WireguardKey.from_base64(private).public_key()) == expected
