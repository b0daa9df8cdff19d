"""Connect QR Codes decode, with a real QR decoder, to exactly the text they were made from."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from kswifi.control.profiles import qr
from kswifi.control.profiles.config_render import render_config
from tests.control.profiles.qr_decode import decode_data_uri, decode_segno_svg
from tests.control.profiles.test_config_render import sample


class TestPng:
    def test_config_round_trips_through_the_decoder(self) -> None:
        text = render_config(sample())
        uri = qr.png_data_uri(text)
        assert uri.startswith("data:image/png;base64,")
        decoded, level = decode_data_uri(uri)
        assert decoded == text
        assert level == "M"

    def test_setup_link_round_trips(self) -> None:
        url = "https://connect.example/setup/" + "A" * 43
        assert decode_data_uri(qr.png_data_uri(url))[0] == url

    def test_empty_text_refused(self) -> None:
        with pytest.raises(ValueError):
            qr.png_data_uri("")


class TestSvg:
    def test_is_a_standalone_svg_with_a_title(self) -> None:
        document = qr.svg(render_config(sample()))
        root = ET.fromstring(document)  # noqa: S314 - our own output
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        assert "KSWiFi Connect QR Code" in document
        assert "<?xml" not in document

    def test_draws_the_same_code(self) -> None:
        text = render_config(sample())
        decoded, level = decode_segno_svg(qr.svg(text))
        assert decoded == text
        assert level == "M"
