"""HTTP endpoints of the usage domain: the live stream and the history of a session."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import StreamingResponse

from kswifi.control import sse
from kswifi.control.deps import BrowserOrBearerUserId, Ctx
from kswifi.control.sessions import service as sessions
from kswifi.control.usage import service
from kswifi.control.usage.schemas import UsageHistory

router = APIRouter(tags=["usage"])


@router.get(
    "/sessions/{session_id}/usage/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-sent events"}},
)
async def usage_stream(
    session_id: str,
    user_id: BrowserOrBearerUserId,
    ctx: Ctx,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Live usage of one of your sessions (server-sent events; resumes with Last-Event-ID)."""
    async with ctx.db.transaction() as db:
        await sessions.get_for_user(db, user_id, session_id)
    events = service.stream(
        ctx.db,
        ctx.events,
        session_id,
        last_event_id=sse.parse_last_event_id(last_event_id),
        max_seconds=ctx.settings.sse_max_seconds,
    )
    return sse.response(events)


@router.get("/sessions/{session_id}/usage/history", response_model=UsageHistory)
async def usage_history(session_id: str, user_id: BrowserOrBearerUserId, ctx: Ctx) -> UsageHistory:
    """Bytes per minute of one of your sessions, for the usage chart."""
    async with ctx.db.transaction() as db:
        session = await sessions.get_for_user(db, user_id, session_id)
    return await service.history(ctx.db, session)
