"""Installable-app pieces: the web manifest, the service worker and the app icons.

The PNG icons are drawn here (a tiny pure-Python rasteriser with anti-aliasing, no image
library at runtime) from the same geometry as the SVG icon, once per size.
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
import zlib
from functools import lru_cache
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from kswifi import __version__

BRAND_RGB = (10, 79, 214)
INK_HEX = "#14182b"
BRAND_HEX = "#0a4fd6"
PNG_SIZES = (192, 512)

# Icon geometry in a 512-unit square: three signal arcs and a dot under them.
_CENTER = (256.0, 350.0)
_DOT_RADIUS = 38.0
_ARCS = ((120.0, 26.0), (200.0, 26.0))  # (radius, half width)
_HALF_ANGLE = math.radians(46)


def manifest() -> dict[str, Any]:
    return {
        "name": "KSWiFi Connect",
        "short_name": "KSWiFi",
        "description": "Prepaid data sessions with secure internet access, usage live.",
        "id": "/",
        "start_url": "/sessions",
        "scope": "/",
        "display": "standalone",
        "orientation": "portrait",
        "background_color": "#f5f7fc",
        "theme_color": INK_HEX,
        "icons": [
            {"src": "/icons/icon.svg", "sizes": "any", "type": "image/svg+xml"},
            {"src": "/icons/icon-192.png", "sizes": "192x192", "type": "image/png"},
            {"src": "/icons/icon-512.png", "sizes": "512x512", "type": "image/png"},
            {
                "src": "/icons/icon-maskable-512.png",
                "sizes": "512x512",
                "type": "image/png",
                "purpose": "maskable",
            },
        ],
    }


# Pages and assets kept for offline use; the API and event streams are never cached.
_PRECACHE = ["/offline", "/static/app.css", "/static/app.js", "/icons/icon.svg"]

SERVICE_WORKER = """// KSWiFi Connect service worker: app shell cache, an offline page, and alerts
// pushed by the server (Web Push): shown as notifications; a tap opens their page.
const CACHE = "kswifi-%(version)s";
const PRECACHE = %(precache)s;

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(PRECACHE)));
  self.skipWaiting();
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches.keys().then((keys) =>
      Promise.all(keys.filter((key) => key !== CACHE).map((key) => caches.delete(key)))
    ).then(() => self.clients.claim())
  );
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET") return;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin || url.pathname.startsWith("/api/")) return;
  if (request.mode === "navigate") {
    event.respondWith(fetch(request).catch(() => caches.match("/offline")));
    return;
  }
  if (url.pathname.startsWith("/static/") || url.pathname.startsWith("/icons/")) {
    event.respondWith(
      fetch(request).then((response) => {
        const copy = response.clone();
        caches.open(CACHE).then((cache) => cache.put(request, copy));
        return response;
      }).catch(() => caches.match(request))
    );
  }
});

self.addEventListener("push", (event) => {
  let message = {};
  try { message = event.data ? event.data.json() : {}; } catch (error) { message = {}; }
  const title = message.title || "KSWiFi Connect";
  event.waitUntil(self.registration.showNotification(title, {
    body: message.body || "",
    tag: message.tag || undefined,
    icon: "/icons/icon-192.png",
    badge: "/icons/icon-192.png",
    data: { url: message.url || "/plans" },
  }));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const target = new URL((event.notification.data && event.notification.data.url) || "/plans",
    self.location.origin);
  if (target.origin !== self.location.origin) return;
  event.waitUntil(
    self.clients.matchAll({ type: "window", includeUncontrolled: true }).then((windows) => {
      for (const client of windows) {
        if (client.url === target.href && "focus" in client) return client.focus();
      }
      return self.clients.openWindow(target.href);
    })
  );
});
"""


def service_worker() -> str:
    precache = "[" + ", ".join(f'"{path}"' for path in _PRECACHE) + "]"
    return SERVICE_WORKER % {"version": __version__, "precache": precache}


def icon_svg() -> str:
    cx, cy = _CENTER
    parts = [
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 512 512" role="img" '
        'aria-label="KSWiFi Connect">',
        f'<rect width="512" height="512" rx="112" fill="{BRAND_HEX}"/>',
        f'<circle cx="{cx:g}" cy="{cy:g}" r="{_DOT_RADIUS:g}" fill="#fff"/>',
    ]
    for radius, half_width in _ARCS:
        dx = radius * math.sin(_HALF_ANGLE)
        dy = radius * math.cos(_HALF_ANGLE)
        parts.append(
            f'<path d="M {cx - dx:.1f} {cy - dy:.1f} A {radius:g} {radius:g} 0 0 1 '
            f'{cx + dx:.1f} {cy - dy:.1f}" fill="none" stroke="#fff" '
            f'stroke-width="{2 * half_width:g}" stroke-linecap="round"/>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _coverage(distance: float) -> float:
    """Anti-aliased coverage of a pixel whose centre is `distance` outside a shape's edge."""
    return min(1.0, max(0.0, 0.5 - distance))


def _glyph_distance(x: float, y: float) -> float:
    """Signed distance (512 units) from the dot-and-arcs glyph; negative inside."""
    cx, cy = _CENTER
    dx, dy = x - cx, y - cy
    r = math.hypot(dx, dy)
    best = r - _DOT_RADIUS
    angle = math.atan2(dx, -dy)  # 0 points straight up
    for radius, half_width in _ARCS:
        if abs(angle) <= _HALF_ANGLE:
            distance = abs(r - radius) - half_width
        else:  # round caps: distance to the arc's end points
            side = math.copysign(_HALF_ANGLE, angle)
            ex, ey = cx + radius * math.sin(side), cy - radius * math.cos(side)
            distance = math.hypot(x - ex, y - ey) - half_width
        best = min(best, distance)
    return best


def _rounded_square_distance(x: float, y: float, size: float, corner: float) -> float:
    half = size / 2
    qx = abs(x - half) - (half - corner)
    qy = abs(y - half) - (half - corner)
    outside = math.hypot(max(qx, 0.0), max(qy, 0.0))
    return outside + min(max(qx, qy), 0.0) - corner


@lru_cache(maxsize=8)
def icon_png(size: int, maskable: bool = False) -> bytes:
    """The icon as PNG (RGBA). Maskable: full-bleed background, glyph inside the safe zone."""
    if not 16 <= size <= 1024:
        raise ValueError("icon size out of range")
    scale = 512.0 / size
    glyph_scale = 1.0 / 0.72 if maskable else 1.0  # shrink the glyph into the safe zone
    rows = bytearray()
    red, green, blue = BRAND_RGB
    for py in range(size):
        rows.append(0)  # filter: none
        for px in range(size):
            x, y = (px + 0.5) * scale, (py + 0.5) * scale
            if maskable:
                background = 1.0
            else:
                background = _coverage(_rounded_square_distance(x, y, 512.0, 112.0) / scale)
            gx = 256.0 + (x - 256.0) * glyph_scale
            gy = 256.0 + (y - 256.0) * glyph_scale
            glyph = _coverage(_glyph_distance(gx, gy) / (scale * glyph_scale))
            # White glyph over the brand colour, both inside the background's alpha.
            r = round(red + (255 - red) * glyph)
            g = round(green + (255 - green) * glyph)
            b = round(blue + (255 - blue) * glyph)
            rows += bytes((r, g, b, round(255 * background)))
    return _png(size, size, bytes(rows))


def _png(width: int, height: int, raw_rows: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw_rows, 9))
        + chunk(b"IEND", b"")
    )


router = APIRouter(include_in_schema=False)
_CACHE_DAY = {"Cache-Control": "public, max-age=86400"}


@router.get("/manifest.webmanifest")
async def manifest_file() -> Response:
    return Response(
        json.dumps(manifest()),
        media_type="application/manifest+json",
        headers={"Cache-Control": "public, max-age=3600"},
    )


@router.get("/sw.js")
async def service_worker_file() -> Response:
    # Served from the root so that its scope is the whole app.
    return Response(
        service_worker(),
        media_type="text/javascript",
        headers={"Cache-Control": "no-cache", "Service-Worker-Allowed": "/"},
    )


@router.get("/icons/icon.svg")
async def icon_svg_file() -> Response:
    return Response(icon_svg(), media_type="image/svg+xml", headers=_CACHE_DAY)


@router.get("/icons/icon-maskable-512.png")
async def icon_maskable_file() -> Response:
    data = await asyncio.to_thread(icon_png, 512, True)
    return Response(data, media_type="image/png", headers=_CACHE_DAY)


@router.get("/icons/icon-{size}.png")
async def icon_png_file(size: str) -> Response:
    if not size.isdigit() or int(size) not in PNG_SIZES:
        return Response("Not found", status_code=404, media_type="text/plain")
    data = await asyncio.to_thread(icon_png, int(size))
    return Response(data, media_type="image/png", headers=_CACHE_DAY)
