"""Connect QR Codes decode, with a real QR decoder, to exactly the text they were made from."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET

import pytest
from PIL import Image

from kswifi.control.profiles import qr
from kswifi.control.profiles.config_render import render_config
from kswifi.control.profiles.keys import generate_keypair, generate_preshared_key
from tests.control.profiles.qr_decode import decode_data_uri, decode_svg
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
        decoded, level = decode_svg(qr.svg(text))
        assert decoded == text
        assert level == "M"


class TestOneEncodingTwoDrawings:
    def test_fresh_configs_round_trip_in_both_drawings(self) -> None:
        # Fresh keys each time: different data, different masks chosen by the encoder.
        for _ in range(25):
            text = render_config(
                sample(
                    private_key=generate_keypair().private_key,
                    preshared_key=generate_preshared_key(),
                )
            )
            png_uri, document = qr.png_data_uri_and_svg(text)
            assert decode_data_uri(png_uri) == (text, "M")
            assert decode_svg(document) == (text, "M")

    def test_png_draws_the_matrix_with_its_quiet_zone(self) -> None:
        text = render_config(sample())
        matrix = qr.encode(text)
        image = Image.open(io.BytesIO(qr.png_from_matrix(matrix, 3)))
        side = (matrix.size + 2 * qr.BORDER) * 3
        assert image.mode == "1"
        assert image.size == (side, side)
        pixels = image.load()
        assert pixels is not None
        for y in range(side):
            for x in range(side):
                mx, my = x // 3 - qr.BORDER, y // 3 - qr.BORDER
                inside = 0 <= mx < matrix.size and 0 <= my < matrix.size
                dark = inside and matrix.is_dark(mx, my)
                assert (pixels[x, y] == 0) == dark, (x, y)

    def test_too_much_text_is_a_value_error(self) -> None:
        with pytest.raises(ValueError):
            qr.encode("A" * 5000)
