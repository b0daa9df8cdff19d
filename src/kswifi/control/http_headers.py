"""Headers every response carries, and HEAD for every GET route (one ASGI middleware).

- HTML: a Content-Security-Policy that forbids framing (the console's buttons cannot be
  clickjacked) and any script not served by us; a response that sets its own keeps it.
- Everything: `X-Content-Type-Options: nosniff` and a Referrer-Policy.
- The API: `Cache-Control: no-store` unless the endpoint says otherwise (tokens, profiles and
  private keys must never sit in a cache).
- HEAD: answered as GET without the body, so every GET route answers it (FastAPI registers
  GET routes for GET alone).
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline';"
    " img-src 'self' data:; connect-src 'self'; worker-src 'self'; object-src 'none';"
    " base-uri 'none'; frame-ancestors 'none'"
)
DOCS_PATHS = ("/api/docs",)
DOCS_CONTENT_SECURITY_POLICY = (
    # FastAPI's Swagger UI page loads its script and style from a CDN and starts inline.
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net;"
    " style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net;"
    " img-src 'self' data: https://fastapi.tiangolo.com; object-src 'none'; base-uri 'none';"
    " frame-ancestors 'none'"
)
REFERRER_POLICY = "same-origin"


class ResponseHeaders:
    """The middleware (added last, so it wraps every route, mount and error handler)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        head = scope["method"] == "HEAD"
        if head:
            scope = {**scope, "method": "GET"}
        path: str = scope["path"]
        api = path.startswith("/api/") and not path.startswith(DOCS_PATHS)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", REFERRER_POLICY)
                if headers.get("content-type", "").startswith("text/html"):
                    policy = (
                        DOCS_CONTENT_SECURITY_POLICY
                        if path.startswith(DOCS_PATHS)
                        else CONTENT_SECURITY_POLICY
                    )
                    headers.setdefault("Content-Security-Policy", policy)
                    headers.setdefault("X-Frame-Options", "DENY")
                if api:
                    headers.setdefault("Cache-Control", "no-store")
            elif message["type"] == "http.response.body" and head:
                message = {**message, "body": b""}
            await send(message)

        await self.app(scope, receive, send_with_headers)
