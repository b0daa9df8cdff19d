"""HTTP endpoints of the profiles domain: `/api/connect/...` and the phone's `/setup/{token}`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import HTMLResponse, StreamingResponse

from kswifi.control import sse
from kswifi.control.deps import (
    BearerCredentials,
    BrowserOrBearerUserId,
    Ctx,
    CurrentUserId,
    DbSession,
    get_current_user_id,
)
from kswifi.control.errors import KSWiFiError
from kswifi.control.profiles import mobileconfig, notices, qr, service, setup_page
from kswifi.control.profiles.schemas import (
    ConnectProfileList,
    ConnectProfileOut,
    ConnectProfileResponse,
    GenerateConnectRequest,
    RenameProfile,
)
from kswifi.control.security import utcnow

router = APIRouter(prefix="/connect", tags=["connect profiles"])
# Outside /api: the page a phone opens from a setup link (mounted by the app next to /api).
setup_router = APIRouter()

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache", "Referrer-Policy": "no-referrer"}

ConnectId = Annotated[str, Path(min_length=1, max_length=64)]
DownloadToken = Annotated[
    str | None,
    Query(
        alias="t",
        max_length=256,
        description="Download token from the generate response or the setup page",
    ),
]


def _error(status: int, code: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/json": {
                "example": {"error": {"code": code, "message": description}},
            }
        },
    }


@router.post(
    "/generate-profile",
    response_model=ConnectProfileResponse,
    status_code=200,
    summary="Generate Connect Code",
    responses={
        401: _error(401, "unauthorized", "No valid access token"),
        404: _error(404, "not_found", "No such session (or not yours)"),
        409: _error(
            409,
            "session_not_usable",
            "Session exhausted/expired/revoked (`session_not_usable`), all devices in use "
            "(`device_limit_reached`), or the device is in another region",
        ),
    },
)
async def generate_connect_profile(
    request: GenerateConnectRequest,
    current_user_id: CurrentUserId,
    ctx: Ctx,
    http: Request,
) -> ConnectProfileResponse:
    """Generate the KSWiFi Connect Profile of one of your devices, installed once: asking
    again with the same device name shows it again (same keys) unless `rotate` is set. Extra
    fields such as `data_limit_mb` are ignored: the response carries the session's own
    limit."""
    # Our own transaction instead of `DbSession`: it commits before the QR codes are drawn, so
    # the encoding never holds a row lock (or SQLite's write lock).
    async with ctx.db.transaction() as db:
        generated = await service.generate_for_request(
            db,
            ctx,
            user_id=current_user_id,
            session_id=request.session_id,
            region=request.region,
            device_name=request.device_name,
            peer_address=http.client.host if http.client else None,
            headers=http.headers,
            rotate=request.rotate,
        )
    # A few milliseconds of C and zlib: cheaper on the loop than a hand-off to a thread.
    return service.to_response(generated, ctx.settings)


@router.get("/profiles", response_model=ConnectProfileList)
async def list_connect_profiles(user_id: CurrentUserId, db: DbSession) -> ConnectProfileList:
    """The caller's active Connect Profiles (devices), newest first."""
    return await service.list_profiles(db, user_id, utcnow())


@router.get(
    "/profiles/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-sent events"}},
)
async def device_notices(
    user_id: BrowserOrBearerUserId,
    ctx: Ctx,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Notices about your devices for an open page (server-sent events): first `devices`,
    `{connect_id: key}` as they are now, then a `device` event when one gets new keys
    (`rotated`), is `removed` or `renamed` anywhere."""
    events = notices.stream(
        ctx.db,
        ctx.events,
        user_id,
        last_event_id=sse.parse_last_event_id(last_event_id),
        max_seconds=ctx.settings.sse_max_seconds,
    )
    return sse.response(events)


@router.get(
    "/profiles/{connect_id}",
    response_model=ConnectProfileOut,
    responses={404: _error(404, "not_found", "No such Connect Profile")},
)
async def get_connect_profile(
    connect_id: ConnectId, user_id: CurrentUserId, db: DbSession
) -> ConnectProfileOut:
    return await service.get_profile(db, user_id, connect_id, utcnow())


@router.patch(
    "/profiles/{connect_id}",
    response_model=ConnectProfileOut,
    responses={
        404: _error(404, "not_found", "No such Connect Profile"),
        409: _error(409, "conflict", "Another of your devices has that name"),
    },
)
async def rename_connect_profile(
    connect_id: ConnectId, body: RenameProfile, user_id: CurrentUserId, db: DbSession, ctx: Ctx
) -> ConnectProfileOut:
    """Rename a device (its keys and profile stay as they are)."""
    return await service.rename_profile(
        db,
        ctx.events,
        user_id=user_id,
        device_id=connect_id,
        device_name=body.device_name,
        now=utcnow(),
    )


@router.delete(
    "/profiles/{connect_id}",
    status_code=204,
    responses={404: _error(404, "not_found", "No such Connect Profile")},
)
async def delete_connect_profile(
    connect_id: ConnectId, user_id: CurrentUserId, db: DbSession, ctx: Ctx
) -> Response:
    """Remove a device: its gateway drops it and its address returns after a cool-down."""
    await service.remove_profile(
        db, ctx.events, user_id=user_id, device_id=connect_id, now=utcnow()
    )
    return Response(status_code=204)


_DOWNLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _error(401, "unauthorized", "Neither a download token nor an access token"),
    404: _error(404, "not_found", "No such Connect Profile (or not yours, or a forged token)"),
    410: _error(410, "gone", "The download link expired; generate the Connect Code again"),
}


async def _download(
    ctx: Ctx,
    db: DbSession,
    credentials: BearerCredentials,
    connect_id: str,
    token: str | None,
) -> service.ProfileDownload:
    # A valid token is enough (the phone has no access token); without one, the owner's is.
    user_id = None if token is not None else get_current_user_id(ctx, credentials)
    return await service.get_download(
        db,
        ctx.secrets,
        device_id=connect_id,
        download_token=token,
        user_id=user_id,
        now=utcnow(),
    )


@router.get(
    "/profiles/{connect_id}/config",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "The profile (kswifi-XXXX.conf)"},
        **_DOWNLOAD_ERRORS,
    },
)
async def download_config(
    connect_id: ConnectId,
    ctx: Ctx,
    db: DbSession,
    credentials: BearerCredentials,
    t: DownloadToken = None,
) -> Response:
    """The wg-quick config, while its setup link lives; its file name (`kswifi-XXXX.conf`,
    fresh per download) stays a valid tunnel name when saved twice."""
    download = await _download(ctx, db, credentials, connect_id, t)
    return Response(
        download.config_text,
        media_type="text/plain; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{setup_page.tunnel_filename()}"',
            **NO_STORE,
        },
    )


@router.get(
    "/profiles/{connect_id}/mobileconfig",
    response_class=Response,
    responses={
        200: {"content": {mobileconfig.MEDIA_TYPE: {}}, "description": "Apple profile"},
        **_DOWNLOAD_ERRORS,
    },
)
async def download_mobileconfig(
    connect_id: ConnectId,
    ctx: Ctx,
    db: DbSession,
    credentials: BearerCredentials,
    t: DownloadToken = None,
    os: Annotated[
        Literal["ios", "macos"], Query(description="iPhone and iPad (`ios`) or a Mac")
    ] = "ios",
) -> Response:
    """The Apple configuration profile that installs "KSWiFi Connect" on iOS or macOS."""
    download = await _download(ctx, db, credentials, connect_id, t)
    body = mobileconfig.build_mobileconfig(
        device_id=download.device_id,
        config_text=download.config_text,
        endpoint=download.endpoint,
        system=os,
    )
    return Response(
        body,
        media_type=mobileconfig.MEDIA_TYPE,
        headers={
            "Content-Disposition": f'attachment; filename="{mobileconfig.FILENAME}"',
            **NO_STORE,
        },
    )


@setup_router.get("/setup/{token}", include_in_schema=False, response_class=HTMLResponse)
async def setup_link_page(
    token: Annotated[str, Path(max_length=256)],
    ctx: Ctx,
    db: DbSession,
    user_agent: Annotated[str | None, Header()] = None,
) -> HTMLResponse:
    """The single-use setup page (HTML, also for errors: a phone's browser shows it)."""
    headers = {**NO_STORE, "Content-Security-Policy": setup_page.CONTENT_SECURITY_POLICY}
    app_url = ctx.settings.public_url.rstrip("/") + "/"
    support = setup_page.Support(ctx.settings.support_url, ctx.settings.support_email)
    try:
        opened = await service.open_setup_link(db, ctx.secrets, token, utcnow())
    except KSWiFiError as exc:
        return HTMLResponse(
            setup_page.render_setup_error(exc.message, app_url, support),
            status_code=exc.status_code,
            headers=headers,
        )
    urls = service.links(ctx.settings, opened.device_id, token, opened.download_token)
    config_qr, _ = qr.png_data_uri_and_svg(opened.config_text)
    return HTMLResponse(
        setup_page.render_setup_page(
            platform=setup_page.detect_platform(user_agent),
            config_url=urls["config_url"],
            mobileconfig_url=urls["mobileconfig_url"],
            mac_mobileconfig_url=service.mac_mobileconfig_url(urls["mobileconfig_url"]),
            config_qr=config_qr,
            app_url=app_url,
            expires_at=opened.expires_at,
            support=support,
        ),
        headers=headers,
    )
