"""HTTP endpoints of the notify domain: the person's alert choices."""

from __future__ import annotations

from fastapi import APIRouter

from kswifi.control.deps import CurrentUser, DbSession
from kswifi.control.notify import service
from kswifi.control.notify.schemas import AlertChoices

router = APIRouter(prefix="/alerts", tags=["alerts"])


@router.get("")
async def get_alerts(user: CurrentUser) -> AlertChoices:
    """Alerts: usage_80, usage_95, data_used_up, expiring (a day before), expired,
    next_started; all on until turned off."""
    return AlertChoices.model_validate(service.choices(user))


@router.put("")
async def set_alerts(body: AlertChoices, user: CurrentUser, db: DbSession) -> AlertChoices:
    wanted = body.model_dump(exclude_unset=True)
    updated = await service.choose(db, user, wanted)
    return AlertChoices.model_validate(service.choices(updated))
