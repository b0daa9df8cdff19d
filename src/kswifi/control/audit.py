"""The audit log: who did what to what, written in the same transaction as the change."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.models import AuditEntry

DETAIL_LIMIT = 2048


def add_audit(db: AsyncSession, *, actor: str, action: str, target: str, detail: str) -> None:
    """One audit entry; `detail` is cut to what the column holds."""
    db.add(AuditEntry(actor=actor, action=action, target=target, detail=detail[:DETAIL_LIMIT]))
