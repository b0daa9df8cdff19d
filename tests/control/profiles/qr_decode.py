"""Test helper: decode Connect QR Codes (PNG data URIs and our SVGs) with a real decoder."""

from __future__ import annotations

import base64
import io
import re
import xml.etree.ElementTree as ET

import zxingcpp
from PIL import Image, ImageDraw

PNG_PREFIX = "data:image/png;base64,"


def decode_image(image: Image.Image) -> tuple[str, str]:
    """(text, error-correction level) of the single QR code in `image`."""
    # Only QR codes, as a phone's scanner looks for: a 1D reader may see a bogus Codabar in
    # the modules of a dense code (about 1 config in 400).
    results = zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode)
    assert len(results) == 1, f"expected one QR code, found {len(results)}"
    return results[0].text, results[0].ec_level


def decode_data_uri(uri: str) -> tuple[str, str]:
    assert uri.startswith(PNG_PREFIX)
    image = Image.open(io.BytesIO(base64.b64decode(uri[len(PNG_PREFIX) :], validate=True)))
    assert image.format == "PNG"
    return decode_image(image)


def decode_svg(svg: str) -> tuple[str, str]:
    """Draw the path of a Connect SVG (M/m moves and h runs of dark modules), then decode it."""
    root = ET.fromstring(svg)  # noqa: S314 - our own output
    ns = {"svg": "http://www.w3.org/2000/svg"}
    path = root.find("svg:path", ns)
    assert path is not None
    scale_match = re.search(r"scale\((\d+)\)", path.get("transform", "scale(1)"))
    scale = int(scale_match.group(1)) if scale_match else 1
    width, height = int(root.get("width", "0")), int(root.get("height", "0"))
    image = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(image)
    x = y = 0.0
    for command, a, b in re.findall(r"([MmHh])\s*(-?[\d.]+)(?:\s+(-?[\d.]+))?", path.get("d", "")):
        if command == "M":
            x, y = float(a), float(b)
        elif command == "m":
            x, y = x + float(a), y + float(b)
        else:
            end = float(a) if command == "H" else x + float(a)
            top = (y - 0.5) * scale
            draw.rectangle([x * scale, top, end * scale - 1, top + scale - 1], fill=0)
            x = end
    return decode_image(image)
