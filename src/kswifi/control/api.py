"""All API routers under `/api`."""

from __future__ import annotations

from fastapi import APIRouter

from kswifi.control.accounts.endpoints import router as accounts_router
from kswifi.control.admin.endpoints import router as admin_router
from kswifi.control.config import Settings
from kswifi.control.gateways.endpoints import router as gateways_router
from kswifi.control.notify.endpoints import router as alerts_router
from kswifi.control.plans.endpoints import router as plans_router
from kswifi.control.profiles import endpoints as profiles_endpoints
from kswifi.control.profiles.endpoints import router as profiles_router
from kswifi.control.purchases.endpoints import router as purchases_router
from kswifi.control.purchases.endpoints import stripe_router
from kswifi.control.regions.endpoints import router as regions_router
from kswifi.control.sessions.endpoints import router as sessions_router
from kswifi.control.usage.endpoints import router as usage_router
from kswifi.control.users.endpoints import router as users_router

api_router = APIRouter(prefix="/api")
# Routes outside /api that the domains serve themselves (the phone's setup link page).
page_router = APIRouter()
_setup_router = getattr(profiles_endpoints, "setup_router", None)
if isinstance(_setup_router, APIRouter):
    page_router.include_router(_setup_router)
for router in (
    users_router,
    plans_router,
    purchases_router,
    sessions_router,
    usage_router,
    profiles_router,
    gateways_router,
    admin_router,
    regions_router,
    alerts_router,
    accounts_router,
):
    api_router.include_router(router)


@api_router.get("/health", tags=["health"])
async def health() -> dict[str, str]:
    return {"status": "ok"}


def optional_routers(settings: Settings) -> list[APIRouter]:
    """Routers served only when configured (absent, so 404, otherwise): Stripe's webhook."""
    routers = []
    if settings.stripe_webhook_secret.get_secret_value():
        routers.append(stripe_router)
    return routers
