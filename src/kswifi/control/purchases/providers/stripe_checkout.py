"""Stripe through its official library: Checkout Sessions out, signed webhook events in.

`settings.stripe_api_base` points the library at another API host (tests run a fake Stripe on
loopback); everything else is the library's own behaviour, request signing included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import stripe

from kswifi.control.config import Settings
from kswifi.control.errors import BadRequest, KSWiFiError, ServiceUnavailable
from kswifi.logs import get_logger

log = get_logger("kswifi.purchases.stripe")

REQUEST_TIMEOUT_SECONDS = 20.0


class PaymentsUnavailable(ServiceUnavailable):
    code = "payments_unavailable"


class PaymentProviderError(KSWiFiError):
    status_code = 502
    code = "payment_provider_error"


class InvalidWebhook(BadRequest):
    code = "invalid_signature"


@dataclass(frozen=True)
class CheckoutSession:
    id: str
    url: str


@dataclass(frozen=True)
class CheckoutRequest:
    purchase_id: str
    user_id: str
    customer_email: str
    plan_code: str
    product_name: str
    product_description: str
    amount_cents: int
    currency: str
    success_url: str
    cancel_url: str


def ensure_configured(settings: Settings) -> None:
    if not settings.stripe_api_key.get_secret_value():
        raise PaymentsUnavailable("Card payments are not set up on this service")


async def create_checkout_session(settings: Settings, request: CheckoutRequest) -> CheckoutSession:
    """A hosted Checkout page for one purchase; retried safely under Stripe's idempotency key."""
    ensure_configured(settings)
    http_client = stripe.HTTPXClient(timeout=REQUEST_TIMEOUT_SECONDS)
    client = stripe.StripeClient(
        settings.stripe_api_key.get_secret_value(),
        http_client=http_client,
        base_addresses={"api": settings.stripe_api_base} if settings.stripe_api_base else None,
        max_network_retries=2,
    )
    params: dict[str, Any] = {
        "mode": "payment",
        "client_reference_id": request.purchase_id,
        "customer_email": request.customer_email,
        "success_url": request.success_url,
        "cancel_url": request.cancel_url,
        "metadata": {
            "purchase_id": request.purchase_id,
            "user_id": request.user_id,
            "plan_code": request.plan_code,
        },
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": request.currency.lower(),
                    "unit_amount": request.amount_cents,
                    "product_data": {
                        "name": request.product_name,
                        "description": request.product_description,
                    },
                },
            }
        ],
    }
    try:
        session = await client.v1.checkout.sessions.create_async(
            params,  # type: ignore[arg-type]  # the TypedDict is stricter than a built dict
            {"idempotency_key": f"kswifi-purchase-{request.purchase_id}"},
        )
    except stripe.StripeError as exc:
        log.warning(
            "stripe_checkout_failed",
            purchase_id=request.purchase_id,
            error_type=type(exc).__name__,
            http_status=exc.http_status,
        )
        raise PaymentProviderError(
            "The card payment could not be started. Please try again in a moment."
        ) from exc
    finally:
        await http_client.close_async()  # type: ignore[no-untyped-call]
    if not session.id or not session.url:
        raise PaymentProviderError("The payment provider gave no checkout page")
    return CheckoutSession(id=session.id, url=session.url)


async def refund_payment(settings: Settings, payment_intent: str, purchase_id: str) -> str:
    """Refund a paid purchase in full; the refund's id. Retried safely: one refund per
    purchase whatever happens (Stripe's idempotency key)."""
    ensure_configured(settings)
    http_client = stripe.HTTPXClient(timeout=REQUEST_TIMEOUT_SECONDS)
    client = stripe.StripeClient(
        settings.stripe_api_key.get_secret_value(),
        http_client=http_client,
        base_addresses={"api": settings.stripe_api_base} if settings.stripe_api_base else None,
        max_network_retries=2,
    )
    try:
        refund = await client.v1.refunds.create_async(
            {"payment_intent": payment_intent, "reason": "requested_by_customer"},
            {"idempotency_key": f"kswifi-refund-{purchase_id}"},
        )
    except stripe.StripeError as exc:
        log.warning(
            "stripe_refund_failed",
            purchase_id=purchase_id,
            error_type=type(exc).__name__,
            http_status=exc.http_status,
        )
        raise PaymentProviderError("Stripe did not accept the refund; nothing was changed") from exc
    finally:
        await http_client.close_async()  # type: ignore[no-untyped-call]
    return str(refund.id)


def verify_event(settings: Settings, payload: bytes, signature: str | None) -> dict[str, Any]:
    """The event of a webhook whose `Stripe-Signature` verifies; InvalidWebhook (400) else."""
    secret = settings.stripe_webhook_secret.get_secret_value()
    if not secret:
        raise PaymentsUnavailable("Stripe webhooks are not set up on this service")
    try:
        event = stripe.Webhook.construct_event(payload, signature, secret)
    except stripe.SignatureVerificationError as exc:
        raise InvalidWebhook("The Stripe-Signature header does not verify") from exc
    except ValueError as exc:  # the signature held but the body is not an event
        raise BadRequest("The webhook body is not a Stripe event") from exc
    result: dict[str, Any] = event.to_dict()
    if not isinstance(result.get("id"), str) or not isinstance(result.get("type"), str):
        raise BadRequest("The webhook body is not a Stripe event")
    return result
