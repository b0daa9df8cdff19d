"""The KSWiFi Connect web app and operator console (server-rendered pages)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import cast

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from kswifi.web import account, auth, console, devices, pages, pwa, receipts, shop_pages
from kswifi.web.deps import LoginRequired, PageNotFound, login_redirect
from kswifi.web.templating import STATIC_DIR, render


def mount(app: FastAPI) -> None:
    """Attach the web pages, the console, the PWA files and static assets to the app."""
    app.include_router(pages.router)
    app.include_router(devices.router)
    app.include_router(account.router)
    app.include_router(receipts.router)
    app.include_router(shop_pages.router)
    app.include_router(console.router)
    app.include_router(pwa.router)
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(PageNotFound, _not_found)
    app.add_exception_handler(auth.CsrfRefused, _csrf_refused)
    api_errors = app.exception_handlers.get(StarletteHTTPException)
    if api_errors is not None:
        handler = cast(ErrorHandler, api_errors)  # the control plane's handlers are async
        app.add_exception_handler(StarletteHTTPException, _people_get_pages(handler))


ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


def _people_get_pages(api_errors: ErrorHandler) -> ErrorHandler:
    """A browser asking for an unknown path gets the branded 404 page; the API (and any
    client that does not ask for HTML) keeps the JSON error shape."""

    async def handler(request: Request, exc: Exception) -> Response:
        wants_html = "text/html" in request.headers.get("accept", "")
        if (
            isinstance(exc, StarletteHTTPException)
            and exc.status_code == 404
            and wants_html
            and not request.url.path.startswith("/api/")
        ):
            return await _not_found(request, exc)
        return await api_errors(request, exc)

    return handler


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
