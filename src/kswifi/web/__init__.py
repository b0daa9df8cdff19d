"""The KSWiFi Connect web app and operator console (server-rendered pages)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from kswifi.web import auth, console, pages, pwa
from kswifi.web.deps import LoginRequired, PageNotFound, login_redirect
from kswifi.web.templating import STATIC_DIR, render


def mount(app: FastAPI) -> None:
    """Attach the web pages, the console, the PWA files and static assets to the app."""
    app.include_router(pages.router)
    app.include_router(console.router)
    app.include_router(pwa.router)
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(PageNotFound, _not_found)
    app.add_exception_handler(auth.CsrfRefused, _csrf_refused)


async def _login_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    return login_redirect(request, exc.next_path)


async def _not_found(request: Request, _exc: Exception) -> Response:
    context = {"heading": "Page not found", "message": "There is nothing at this address."}
    return render(request, "error.html", context, status_code=404)


async def _csrf_refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, auth.CsrfRefused)
    context = {"heading": "Please try again", "message": exc.message, "back_url": "/"}
    return render(request, "error.html", context, status_code=403)
