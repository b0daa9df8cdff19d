"""A local Web Push service for the tests: a real HTTP server that checks each request's
VAPID signature (RFC 8292) and decrypts its body (RFC 8291, aes128gcm) with the keys of a
subscription it made, as a browser's push service and the browser would."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import http_ece
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Browser:
    """One subscription's keys, kept by the 'browser' that decrypts what arrives."""

    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes

    def subscription(self) -> dict[str, Any]:
        point = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {"endpoint": self.endpoint, "keys": {"p256dh": b64(point), "auth": b64(self.auth)}}


@dataclass
class Delivered:
    endpoint: str
    headers: dict[str, str]
    claims: dict[str, Any]
    message: dict[str, Any]


@dataclass
class PushService:
    base: str
    browsers: dict[str, Browser] = field(default_factory=dict)
    delivered: list[Delivered] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def new_browser(self) -> Browser:
        name = b64(os.urandom(9))
        browser = Browser(
            f"{self.base}/push/{name}", ec.generate_private_key(ec.SECP256R1()), os.urandom(16)
        )
        self.browsers[f"/push/{name}"] = browser
        return browser

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Delivered]:
        deadline = time.monotonic() + timeout
        while len(self.delivered) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} pushes, got {len(self.delivered)}")
            time.sleep(0.02)
        return list(self.delivered)

    def receive(self, path: str, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            if self.answers:
                return self.answers.pop(0)
        browser = self.browsers.get(path)
        if browser is None:
            return 404
        scheme, _, params = headers.get("authorization", "").partition(" ")
        fields = dict(part.strip().split("=", 1) for part in params.split(",") if "=" in part)
        if scheme.lower() != "vapid" or "t" not in fields or "k" not in fields:
            self.refused.append("no VAPID authorization")
            return 401
        server_key = ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), unb64(fields["k"])
        )
        try:
            claims = jwt.decode(fields["t"], server_key, algorithms=["ES256"], audience=self.base)
        except jwt.PyJWTError as exc:
            self.refused.append(f"bad VAPID token: {exc}")
            return 403
        if headers.get("content-encoding") != "aes128gcm" or "ttl" not in headers:
            self.refused.append("not aes128gcm or no TTL")
            return 400
        plain = http_ece.decrypt(
            body, private_key=browser.private_key, auth_secret=browser.auth, version="aes128gcm"
        )
        with self.lock:
            self.delivered.append(
                Delivered(browser.endpoint, headers, claims, json.loads(plain.decode()))
            )
        return 201


@contextmanager
def push_service() -> Iterator[PushService]:
    service = PushService(base="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            status = service.receive(self.path, headers, body)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    service.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield service
    finally:
        server.shutdown()
        server.server_close()
