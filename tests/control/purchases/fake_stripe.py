"""A fake Stripe API on loopback, spoken to by the real `stripe` library, and webhook signing.

Only what the purchase flow uses is implemented: `POST /v1/checkout/sessions`, with Stripe's
idempotency-key behaviour and error shape. Webhook signatures are computed here from the
documented scheme (`t=<unix time>,v1=<hex HMAC-SHA256 of "t.payload">`), independently of the
library that verifies them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

API_KEY = "sk_test_kswifi_fake_0123456789"
WEBHOOK_SECRET = "whsec_kswifi_test_0123456789abcdef"


class FakeStripe:
    """Records every request; `fail_with` makes the next calls answer a Stripe error."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.sessions: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self.by_idempotency_key: dict[str, str] = {}
        self.fail_with: int | None = None
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.sessions.clear()
            self.refunds.clear()
            self.by_idempotency_key.clear()
            self.fail_with = None

    def _create_session(self, form: dict[str, str], idempotency_key: str | None) -> dict[str, Any]:
        with self.lock:
            if idempotency_key and idempotency_key in self.by_idempotency_key:
                return self.sessions[self.by_idempotency_key[idempotency_key]]
            session_id = f"cs_test_{uuid.uuid4().hex}"
            amount = int(form["line_items[0][price_data][unit_amount]"]) * int(
                form["line_items[0][quantity]"]
            )
            session = {
                "id": session_id,
                "object": "checkout.session",
                "mode": form["mode"],
                "status": "open",
                "payment_status": "unpaid",
                "amount_total": amount,
                "currency": form["line_items[0][price_data][currency]"],
                "client_reference_id": form.get("client_reference_id"),
                "customer_email": form.get("customer_email"),
                "metadata": {
                    key[len("metadata[") : -1]: value
                    for key, value in form.items()
                    if key.startswith("metadata[")
                },
                "success_url": form["success_url"],
                "cancel_url": form["cancel_url"],
                "url": f"https://checkout.stripe.test/c/pay/{session_id}",
                "livemode": False,
            }
            self.sessions[session_id] = session
            if idempotency_key:
                self.by_idempotency_key[idempotency_key] = session_id
            return session

    def _refund(self, form: dict[str, str], idempotency_key: str | None) -> dict[str, Any]:
        with self.lock:
            if idempotency_key and idempotency_key in self.by_idempotency_key:
                return self.refunds[self.by_idempotency_key[idempotency_key]]
            refund_id = f"re_test_{uuid.uuid4().hex}"
            refund = {
                "id": refund_id,
                "object": "refund",
                "payment_intent": form["payment_intent"],
                "reason": form.get("reason"),
                "status": "succeeded",
            }
            self.refunds[refund_id] = refund
            if idempotency_key:
                self.by_idempotency_key[idempotency_key] = refund_id
            return refund

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Request-Id", f"req_{uuid.uuid4().hex[:14]}")
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = dict(parse_qsl(self.rfile.read(length).decode(), keep_blank_values=True))
                record = {
                    "path": self.path,
                    "form": form,
                    "authorization": self.headers.get("Authorization"),
                    "idempotency_key": self.headers.get("Idempotency-Key"),
                    "stripe_version": self.headers.get("Stripe-Version"),
                }
                with fake.lock:
                    fake.requests.append(record)
                if self.headers.get("Authorization") != f"Bearer {API_KEY}":
                    self._reply(
                        401,
                        {"error": {"type": "invalid_request_error", "message": "Invalid API Key"}},
                    )
                    return
                if fake.fail_with is not None:
                    self._reply(
                        fake.fail_with,
                        {
                            "error": {
                                "type": "invalid_request_error",
                                "message": "Something about this request is wrong",
                            }
                        },
                    )
                    return
                if self.path == "/v1/refunds":
                    self._reply(200, fake._refund(form, record["idempotency_key"]))
                    return
                if self.path != "/v1/checkout/sessions":
                    self._reply(404, {"error": {"type": "invalid_request_error"}})
                    return
                self._reply(200, fake._create_session(form, record["idempotency_key"]))

        return Handler


def sign(payload: str, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """A `Stripe-Signature` header value for `payload`, as Stripe computes it."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(
        secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256
    ).hexdigest()
    return f"t={timestamp},v1={digest}"


def checkout_event(
    session: dict[str, Any],
    *,
    kind: str = "checkout.session.completed",
    payment_status: str = "paid",
    event_id: str | None = None,
    **changes: Any,
) -> str:
    """The JSON body of a Stripe event about `session`, as its webhook would send it."""
    obj = {**session, "status": "complete", "payment_status": payment_status, **changes}
    event = {
        "id": event_id or f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "api_version": "2024-06-20",
        "created": int(time.time()),
        "livemode": False,
        "pending_webhooks": 1,
        "type": kind,
        "data": {"object": obj},
    }
    return json.dumps(event)
