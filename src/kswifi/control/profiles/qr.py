"""Connect QR Codes: the config (or a setup link) as a PNG data URI and as SVG (pure).

The symbol is encoded once by zxing-cpp's writer (C++: segments, Reed-Solomon and the choice
of the best of the eight masks take about a millisecond for a config); the PNG and the SVG are
then drawn here from the same module matrix, so one encoding serves both renderings.
"""

from __future__ import annotations

import base64
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import zxingcpp

# Error correction M (15 %): what the WireGuard apps scan reliably; no boost, so the code stays
# as small as M allows. Scale 6 px per module with the standard 4-module quiet zone prints a
# ~500 px image for a typical config: sharp on a phone screen, light in a JSON response.
ERROR_CORRECTION = "M"
PNG_SCALE = 6
SVG_SCALE = 4
BORDER = 4
SVG_TITLE = "KSWiFi Connect QR Code"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# One byte of the module matrix (0x00 dark, 0xff light) → one bit of a 1-bit grayscale PNG row
# (0 black, 1 white), and → one character of a row for the SVG runs ("1" dark).
_TO_PNG_BIT = bytes.maketrans(b"\x00\xff", b"01")
_TO_SVG_CHAR = bytes.maketrans(b"\x00\xff\x02", b"102")
_DARK_RUNS = re.compile(r"1+")


def _widen_table(scale: int) -> list[bytes]:
    """For each byte of 8 pixels, the `scale` bytes of the same pixels each `scale` wide."""
    table = []
    for value in range(256):
        bits = "".join(("1" if value & (0x80 >> bit) else "0") * scale for bit in range(8))
        table.append(int(bits, 2).to_bytes(scale, "big"))
    return table


_WIDEN: dict[int, list[bytes]] = {}


@dataclass(frozen=True, slots=True)
class QrMatrix:
    """The modules of one QR symbol, without quiet zone: `size` rows of `size` bytes, each
    0x00 (dark) or 0xff (light)."""

    size: int
    rows: tuple[bytes, ...]

    def is_dark(self, x: int, y: int) -> bool:
        return self.rows[y][x] == 0


def encode(text: str) -> QrMatrix:
    """The QR code (not Micro QR) of `text` at error correction M; ValueError when empty."""
    if not text:
        raise ValueError("nothing to encode")
    barcode = zxingcpp.create_barcode(
        text, zxingcpp.BarcodeFormat.QRCode, ec_level=ERROR_CORRECTION
    )
    # One byte per module; the stubs do not declare the buffer protocol the image exports.
    bitmap: Any = zxingcpp.write_barcode_to_image(barcode, scale=1, add_quiet_zones=False)
    image = memoryview(bitmap)
    height, width = image.shape or (0, 0)
    if width != height or width < 21:  # pragma: no cover - the writer's contract
        raise ValueError(f"unexpected QR matrix {width}x{height}")
    data = image.tobytes()
    return QrMatrix(width, tuple(data[y * width : (y + 1) * width] for y in range(height)))


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_from_matrix(matrix: QrMatrix, scale: int = PNG_SCALE) -> bytes:
    """A 1-bit grayscale PNG: `scale` pixels per module, a `BORDER`-module white quiet zone."""
    widen = _WIDEN.get(scale)
    if widen is None:
        widen = _WIDEN[scale] = _widen_table(scale)
    modules = matrix.size + 2 * BORDER
    pixels = modules * scale
    row_bytes = (pixels + 7) // 8
    packed_bytes = (modules + 7) // 8
    padding = "1" * (packed_bytes * 8 - modules)  # white past the right edge
    quiet = "1" * BORDER
    lines = []
    blank = b"\x00" + b"\xff" * row_bytes  # filter byte 0, then an all-white row
    lines.extend([blank] * (BORDER * scale))
    for row in matrix.rows:
        bits = quiet + row.translate(_TO_PNG_BIT).decode("ascii") + quiet + padding
        packed = int(bits, 2).to_bytes(packed_bytes, "big")
        line = b"\x00" + b"".join([widen[byte] for byte in packed])[:row_bytes]
        lines.extend([line] * scale)
    lines.extend([blank] * (BORDER * scale))
    header = struct.pack(">IIBBBBB", pixels, pixels, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return b"".join(
        (
            _PNG_SIGNATURE,
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(b"".join(lines), 6)),
            _png_chunk(b"IEND", b""),
        )
    )


def svg_from_matrix(matrix: QrMatrix, scale: int = SVG_SCALE) -> str:
    """A standalone SVG document (no XML declaration): one path of horizontal runs of dark
    modules, stroked one module thick, so it stays small and scales without seams."""
    size = (matrix.size + 2 * BORDER) * scale
    # All rows in one string ("2" between rows, so no run crosses a row), scanned once.
    text = b"\x02".join(matrix.rows).translate(_TO_SVG_CHAR).decode("ascii")
    stride = matrix.size + 1
    commands: list[str] = []
    x, y = 0, 0.0
    for run in _DARK_RUNS.finditer(text):
        row, column = divmod(run.start(), stride)
        start, row_y = column + BORDER, row + BORDER + 0.5
        length = run.end() - run.start()
        if commands:
            commands.append(f"m{start - x} {row_y - y:g}h{length}")
        else:
            commands.append(f"M{start} {row_y:g}h{length}")
        x, y = start + length, row_y
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}">'
        f"<title>{SVG_TITLE}</title>"
        f'<path transform="scale({scale})" stroke="#000" d="{"".join(commands)}"/></svg>'
    )


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def png_bytes(text: str, *, scale: int = PNG_SCALE) -> bytes:
    return png_from_matrix(encode(text), scale)


def png_data_uri(text: str, *, scale: int = PNG_SCALE) -> str:
    """`data:image/png;base64,…` of `text` as a QR code."""
    return _data_uri(png_bytes(text, scale=scale))


def svg(text: str, *, scale: int = SVG_SCALE) -> str:
    """A standalone SVG document of `text` as a QR code (no XML declaration, UTF-8)."""
    return svg_from_matrix(encode(text), scale)


def png_data_uri_and_svg(text: str) -> tuple[str, str]:
    """Both renderings of one code, drawn from a single encoding."""
    matrix = encode(text)
    return _data_uri(png_from_matrix(matrix, PNG_SCALE)), svg_from_matrix(matrix, SVG_SCALE)


def terminal_text(text: str) -> str:
    """The code drawn with block characters for a terminal (two modules per character row,
    dark on a light quiet zone), so a phone's camera can scan it off the screen."""
    matrix = encode(text)
    size = matrix.size + 2 * BORDER

    def dark(x: int, y: int) -> bool:
        x, y = x - BORDER, y - BORDER
        return 0 <= x < matrix.size and 0 <= y < matrix.size and matrix.is_dark(x, y)

    glyphs = {(False, False): "\u2588", (True, False): "\u2584", (False, True): "\u2580"}
    lines = []
    for y in range(0, size, 2):
        lines.append("".join(glyphs.get((dark(x, y), dark(x, y + 1)), " ") for x in range(size)))
    return "\n".join(lines)
