"""The installable-app pieces: manifest, service worker, icons."""

from __future__ import annotations

import io

import httpx
from PIL import Image

from kswifi.web import pwa


class TestManifest:
    async def test_manifest_is_installable(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/manifest.webmanifest")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/manifest+json")
        manifest = response.json()
        assert manifest["name"] == "KSWiFi Connect"
        assert manifest["display"] == "standalone"
        assert manifest["start_url"] == "/sessions"
        sizes = {icon["sizes"] for icon in manifest["icons"] if icon["type"] == "image/png"}
        assert {"192x192", "512x512"} <= sizes
        assert any(icon.get("purpose") == "maskable" for icon in manifest["icons"])

    async def test_every_page_links_the_manifest(self, client: httpx.AsyncClient) -> None:
        page = await client.get("/")
        assert '<link rel="manifest" href="/manifest.webmanifest">' in page.text


class TestServiceWorker:
    async def test_served_from_the_root_with_no_cache(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/sw.js")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/javascript")
        assert response.headers["service-worker-allowed"] == "/"
        assert "no-cache" in response.headers["cache-control"]
        # It never caches the API (live usage must be live) and keeps an offline page.
        assert '"/api/"' in response.text
        assert '"/offline"' in response.text

    async def test_precached_urls_exist(self, client: httpx.AsyncClient) -> None:
        for path in ("/offline", "/static/app.css", "/static/app.js", "/icons/icon.svg"):
            assert (await client.get(path)).status_code == 200, path


class TestIcons:
    async def test_png_icons_are_real_images(self, client: httpx.AsyncClient) -> None:
        for path, size in (
            ("/icons/icon-192.png", 192),
            ("/icons/icon-512.png", 512),
            ("/icons/icon-maskable-512.png", 512),
        ):
            response = await client.get(path)
            assert response.status_code == 200
            assert response.headers["content-type"] == "image/png"
            image = Image.open(io.BytesIO(response.content))
            assert image.size == (size, size)
            assert image.mode == "RGBA"

    async def test_unknown_icon_size(self, client: httpx.AsyncClient) -> None:
        assert (await client.get("/icons/icon-77.png")).status_code == 404

    def test_icon_has_brand_background_and_white_glyph(self) -> None:
        image = Image.open(io.BytesIO(pwa.icon_png(192))).convert("RGBA")
        assert image.getpixel((0, 0))[3] == 0  # rounded corner: transparent
        assert image.getpixel((20, 96))[:3] == pwa.BRAND_RGB
        centre_x, centre_y = 96, round(pwa._CENTER[1] * 192 / 512)
        assert image.getpixel((centre_x, centre_y))[:3] == (255, 255, 255)  # the dot
        maskable = Image.open(io.BytesIO(pwa.icon_png(192, maskable=True)))
        assert maskable.getpixel((0, 0))[3] == 255  # full bleed

    def test_svg_icon(self) -> None:
        svg = pwa.icon_svg()
        assert svg.startswith("<svg") and svg.endswith("</svg>")
        assert pwa.BRAND_HEX in svg
