"""HTTP endpoints of the sessions domain: a user's own data sessions."""

from __future__ import annotations

from fastapi import APIRouter

from kswifi.control.deps import CurrentUserId, DbSession
from kswifi.control.models import utcnow
from kswifi.control.sessions import service
from kswifi.control.sessions.schemas import SessionList, SessionOut

router = APIRouter(tags=["sessions"])


@router.get("/sessions", response_model=SessionList)
async def list_sessions(user_id: CurrentUserId, db: DbSession) -> SessionList:
    now = utcnow()
    sessions = await service.list_for_user(db, user_id)
    return SessionList(sessions=[service.to_out(session, now) for session in sessions])


@router.get("/sessions/{session_id}", response_model=SessionOut)
async def get_session(session_id: str, user_id: CurrentUserId, db: DbSession) -> SessionOut:
    session = await service.get_for_user(db, user_id, session_id)
    return service.to_out(session, utcnow())
