"""Connect QR Codes: the config (or a setup link) as a PNG data URI and as SVG (pure)."""

from __future__ import annotations

import base64
import io

import segno

# Error correction M (15 %): what the WireGuard apps scan reliably; no boost, so the code stays
# as small as M allows. Scale 6 px per module with the standard 4-module quiet zone prints a
# ~400 px image for a typical config: sharp on a phone screen, light in a JSON response.
ERROR_CORRECTION = "m"
PNG_SCALE = 6
SVG_SCALE = 4
BORDER = 4


def _make(text: str) -> segno.QRCode:
    if not text:
        raise ValueError("nothing to encode")
    return segno.make(text, error=ERROR_CORRECTION, boost_error=False, micro=False)


def _png(code: segno.QRCode, scale: int) -> bytes:
    buffer = io.BytesIO()
    code.save(buffer, kind="png", scale=scale, border=BORDER)
    return buffer.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _svg(code: segno.QRCode, scale: int) -> str:
    buffer = io.BytesIO()
    code.save(
        buffer,
        kind="svg",
        scale=scale,
        border=BORDER,
        xmldecl=False,
        svgns=True,
        title="KSWiFi Connect QR Code",
        encoding="utf-8",
    )
    return buffer.getvalue().decode("utf-8")


def png_bytes(text: str, *, scale: int = PNG_SCALE) -> bytes:
    return _png(_make(text), scale)


def png_data_uri(text: str, *, scale: int = PNG_SCALE) -> str:
    """`data:image/png;base64,…` of `text` as a QR code."""
    return _data_uri(png_bytes(text, scale=scale))


def svg(text: str, *, scale: int = SVG_SCALE) -> str:
    """A standalone SVG document of `text` as a QR code (no XML declaration, UTF-8)."""
    return _svg(_make(text), scale)


def png_data_uri_and_svg(text: str) -> tuple[str, str]:
    """Both renderings of one code; encoding is the costly part (tens of ms), so it runs once."""
    code = _make(text)
    return _data_uri(_png(code, PNG_SCALE)), _svg(code, SVG_SCALE)
