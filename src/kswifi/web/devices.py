"""The person's devices (installed Connect Profiles): list, rename, remove, show the code
again (same keys), new keys (behind a warning), set up a new phone.

Forms work without JavaScript and check the CSRF token first; a refused action comes back as
the same page with its message and nothing written.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from kswifi.control.deps import Ctx, DbSession, abandon
from kswifi.control.errors import KSWiFiError, Unprocessable
from kswifi.control.models import utcnow
from kswifi.control.profiles import notices
from kswifi.control.profiles import service as profiles
from kswifi.control.sessions import service as sessions
from kswifi.web import copy
from kswifi.web.deps import RequiredUser
from kswifi.web.pages import form_fields, ready_context, redirect, say
from kswifi.web.templating import render

router = APIRouter(include_in_schema=False)

STATE_LABELS = {
    "active": "On: drawing from your current session",
    "waiting": "Waiting: your session's device limit is reached",
    "garden": "No data: reaches only the KSWiFi app until you buy more",
}
NEW_KEYS_WARNING = (
    "New keys replace this device's profile: the one installed on it stops working until you "
    "set it up again with the new code."
)


async def _page(request: Request, user_id: str, db: DbSession, **extra: Any) -> dict[str, Any]:
    now = utcnow()
    listed = await profiles.list_profiles(db, user_id, now)
    usable = await sessions.usable_sessions(db, user_id, now)
    return {
        "nav": "devices",
        "devices": listed.profiles,
        "device_keys": await notices.device_keys(db, user_id),
        "state_labels": STATE_LABELS,
        "new_keys_warning": NEW_KEYS_WARNING,
        "current": sessions.to_out(usable[0], now) if usable else None,
        "copy": copy,
        **extra,
    }


async def _refused(request: Request, db: DbSession, user_id: str, exc: KSWiFiError) -> Response:
    """The devices page with the refusal's message, nothing of the action written."""
    await abandon(db)
    context = await _page(request, user_id, db, error=say(exc))
    return render(request, "devices.html", context, status_code=exc.status_code)


@router.get("/devices", response_class=HTMLResponse)
async def devices_page(request: Request, user: RequiredUser, db: DbSession) -> Response:
    context = await _page(request, user.id, db, notice=_notice(request))
    return render(request, "devices.html", context)


def _notice(request: Request) -> str | None:
    return {
        "renamed": "Device renamed.",
        "removed": "Device removed. Its profile no longer works.",
    }.get(request.query_params.get("notice", ""))


@router.post("/devices/{device_id}/rename", response_class=HTMLResponse)
async def rename(
    device_id: str, request: Request, user: RequiredUser, ctx: Ctx, db: DbSession
) -> Response:
    fields = await form_fields(request)
    user_id = user.id  # read before a rollback expires it
    name = fields.get("device_name", "").strip()
    try:
        if not name or len(name) > 64 or not name.isprintable():
            raise Unprocessable("Give the device a name of 1 to 64 characters.")
        await profiles.rename_profile(
            db, ctx.events, user_id=user_id, device_id=device_id, device_name=name, now=utcnow()
        )
    except KSWiFiError as exc:
        return await _refused(request, db, user_id, exc)
    return redirect(request, "/devices?notice=renamed")


@router.post("/devices/{device_id}/remove", response_class=HTMLResponse)
async def remove(
    device_id: str, request: Request, user: RequiredUser, ctx: Ctx, db: DbSession
) -> Response:
    await form_fields(request)
    user_id = user.id  # read before a rollback expires it
    try:
        await profiles.remove_profile(
            db, ctx.events, user_id=user_id, device_id=device_id, now=utcnow()
        )
    except KSWiFiError as exc:
        return await _refused(request, db, user_id, exc)
    return redirect(request, "/devices?notice=removed")


@router.post("/devices/{device_id}/code", response_class=HTMLResponse)
async def show_code(
    device_id: str, request: Request, user: RequiredUser, ctx: Ctx, db: DbSession
) -> Response:
    """The device's code again (same keys), or with `rotate` and the warning confirmed, new
    keys."""
    fields = await form_fields(request)
    user_id = user.id  # read before a rollback expires it
    rotate = fields.get("rotate") == "1"
    try:
        if rotate and fields.get("confirm") != "1":
            raise Unprocessable(NEW_KEYS_WARNING + " Tick the box to confirm.")
        device = await profiles.get_profile(db, user_id, device_id, utcnow())
        generated = await profiles.generate_for_request(
            db,
            ctx,
            user_id=user_id,
            session_id=None,
            region=None,
            device_name=device.device_name,
            peer_address=request.client.host if request.client else None,
            headers=request.headers,
            rotate=rotate,
        )
        profile = profiles.to_response(generated, ctx.settings)
    except KSWiFiError as exc:
        return await _refused(request, db, user_id, exc)
    context = await ready_context(db, profile, None)
    context["nav"] = "devices"
    return render(request, "setup_ready.html", context, no_store=True)
