"""Jinja2 environment of the web app: template loading, filters and the page renderer."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from kswifi.control.models import SessionStatus
from kswifi.control.sessions import service as sessions
from kswifi.control.sessions.service import ENDED_MESSAGES
from kswifi.web import auth

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent / "static"

# What a person reads for each session state (never the technical words).
STATUS_LABELS: dict[str, str] = {
    SessionStatus.QUEUED: "Next in line",
    SessionStatus.ACTIVE: "Ready to connect",
    SessionStatus.CONNECTED: "Connect Profile Active",
    SessionStatus.EXHAUSTED: "Data used up",
    SessionStatus.EXPIRED: "Expired",
    SessionStatus.REVOKED: "Cancelled",
}


def status_label(status: str) -> str:
    return STATUS_LABELS.get(status, status.capitalize())


def time_left_text(seconds: int | None) -> str:
    """ "6 days 3 h", "2 h 14 min", "45 min", "under a minute"; `None` before first use."""
    if seconds is None:
        return "Starts when your phone first connects"
    if seconds <= 0:
        return "No time left"
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes = rest // 60
    if days:
        return f"{days} day{'s' if days != 1 else ''} {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min"
    return "under a minute"


def datetime_text(value: datetime | None) -> Markup:
    """A moment as a `<time>`: UTC in the page, the person's own time zone once the page
    script runs (`time[data-local]`)."""
    if value is None:
        return Markup("—")
    moment = value.astimezone(UTC)
    return Markup('<time datetime="{}" data-local>{}</time>').format(
        moment.isoformat(), moment.strftime("%d %b %Y, %H:%M UTC")
    )


def iso(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).isoformat()


def rate_text(bits_per_second: int | float) -> str:
    """Throughput for the console: "12.5 Mbit/s"."""
    value = float(bits_per_second)
    for unit, size in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} bit/s"


templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
templates.env.filters.update(
    gb=sessions.format_gb,
    status_label=status_label,
    time_left=time_left_text,
    dt=datetime_text,
    iso=iso,
    rate=rate_text,
)
templates.env.globals.update(
    app_name="KSWiFi Connect", labels=STATUS_LABELS, ended_messages=ENDED_MESSAGES
)


def render(
    request: Request,
    name: str,
    context: dict[str, Any] | None = None,
    *,
    status_code: int = 200,
    no_store: bool = False,
) -> HTMLResponse:
    """Render a page with the common context (user, CSRF token) and pending cookies."""
    settings = request.app.state.ctx.settings
    values: dict[str, Any] = {
        "user": auth.identity(request),
        "csrf_token": auth.csrf_token(request),
        "support_url": settings.support_url,
        "support_email": settings.support_email,
    }
    values.update(context or {})
    response = templates.TemplateResponse(request, name, values, status_code=status_code)
    if no_store:
        response.headers["Cache-Control"] = "no-store"
    auth.apply_cookies(request, response)
    return response
