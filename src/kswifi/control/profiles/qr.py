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


def png_bytes(text: str, *, scale: int = PNG_SCALE) -> bytes:
    buffer = io.BytesIO()
    _make(text).save(buffer, kind="png", scale=scale, border=BORDER)
    return buffer.getvalue()


def png_data_uri(text: str, *, scale: int = PNG_SCALE) -> str:
    """`data:image/png;base64,…` of `text` as a QR code."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(text, scale=scale)).decode()


def svg(text: str, *, scale: int = SVG_SCALE) -> str:
    """A standalone SVG document of `text` as a QR code (no XML declaration, UTF-8)."""
    buffer = io.BytesIO()
    _make(text).save(
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
