"""`create_app`: the control plane's FastAPI application."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kswifi import __version__
from kswifi.control import metrics
from kswifi.control.api import api_router, optional_routers, page_router
from kswifi.control.config import Settings, get_settings
from kswifi.control.db import Database
from kswifi.control.deps import AppContext
from kswifi.control.errors import KSWiFiError
from kswifi.control.events import EventBus, InProcessEventBus
from kswifi.control.http_headers import ResponseHeaders
from kswifi.control.security import SecretBox
from kswifi.logs import configure_logging, get_logger

log = get_logger("kswifi.control")

Startup = Callable[[AppContext], Awaitable[None]]


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def _http_error_code(status: int) -> str:
    return {
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
        415: "unsupported_media_type",
        429: "rate_limited",
    }.get(status, "bad_request" if status < 500 else "internal_error")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(KSWiFiError)
    async def _kswifi_error(_request: Request, exc: KSWiFiError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.code, exc.message, **exc.extra),
            status_code=exc.status_code,
            headers=exc.headers or None,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [
            {
                "field": ".".join(str(part) for part in err.get("loc", ()) if part != "body"),
                "message": str(err.get("msg", "invalid")),
            }
            for err in exc.errors()
        ]
        first = fields[0] if fields else {"field": "", "message": "invalid request"}
        message = f"{first['field'] or 'request'}: {first['message']}"
        return JSONResponse(error_body("validation_error", message, fields=fields), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return JSONResponse(
            error_body(_http_error_code(exc.status_code), message),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled_error", path=request.url.path, error_type=type(exc).__name__)
        return JSONResponse(error_body("internal_error", "Something went wrong on our side"), 500)

    def _unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database_unavailable", path=request.url.path, error_type=type(exc).__name__)
        return JSONResponse(
            error_body("unavailable", "The service is briefly unavailable; please try again"),
            503,
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(DBAPIError)
    async def _database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        # A lost or refused database connection (server restart, failover, terminated backend)
        # is not a bug: the transaction rolled back, so "try again" is the true answer.
        if not is_connection_loss(exc):
            return await _unexpected(request, exc)
        return _unavailable(request, exc)

    @app.exception_handler(ConnectionError)
    async def _connection_refused(request: Request, exc: ConnectionError) -> JSONResponse:
        return _unavailable(request, exc)

    @app.exception_handler(PoolTimeout)
    async def _pool_exhausted(request: Request, exc: PoolTimeout) -> JSONResponse:
        return _unavailable(request, exc)


def is_connection_loss(exc: DBAPIError) -> bool:
    """Whether a database error means "no connection" rather than a failed statement."""
    if exc.connection_invalidated:
        return True
    for cause in (exc.orig, getattr(exc.orig, "__cause__", None)):
        if isinstance(cause, OSError | ConnectionError | TimeoutError):
            return True
        # SQLSTATE class 08 (connection exception), 57P01-57P03 (shutdown, cannot connect now)
        code = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        if isinstance(code, str) and (code.startswith("08") or code.startswith("57P0")):
            return True
    return False


class BodySizeLimit:
    """Refuses request bodies over `max_bytes` with 413 before they reach a handler."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send)
            return
        received = 0
        too_large = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            if too_large:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        response = JSONResponse(
            error_body("payload_too_large", f"Request body over {self.max_bytes} bytes"), 413
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": response.raw_headers,
            }
        )
        await send({"type": "http.response.body", "body": response.body})


class _BodyTooLarge(Exception):
    pass


def create_app(
    settings: Settings | None = None,
    *,
    events: EventBus | None = None,
    on_startup: list[Startup] | None = None,
    with_worker: bool = False,
) -> FastAPI:
    """The ASGI app. The database must already be migrated (`kswifi db upgrade`)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_json)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        database = Database(settings.resolved_database_url)
        bus = events or _make_event_bus(settings)
        ctx = AppContext(
            settings=settings,
            db=database,
            secrets=SecretBox(settings.ensure_secret_key()),
            events=bus,
        )
        app.state.ctx = ctx
        await bus.start()
        for hook in on_startup or []:
            await hook(ctx)
        log.info(
            "control_plane_started", version=__version__, database=database.engine.url.drivername
        )
        try:
            async with contextlib.AsyncExitStack() as stack:
                if with_worker:
                    from kswifi.control.worker import background_worker

                    await stack.enter_async_context(background_worker(ctx))
                yield
        finally:
            await bus.stop()
            await database.dispose()

    app = FastAPI(
        title="KSWiFi Connect",
        version=__version__,
        lifespan=lifespan,
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    install_error_handlers(app)
    _document_error_shape(app)
    app.include_router(api_router)
    for router in optional_routers(settings):
        app.include_router(router, prefix="/api")
    app.include_router(page_router)
    metrics.install(app)  # /metrics and request counters
    _mount_web(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(ResponseHeaders)
    return app


# What `install_error_handlers` sends for 422 (and every other error), in place of FastAPI's
# default `{"detail": [...]}`, so that the schema tells clients the truth.
ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "examples": ["validation_error"]},
                "message": {"type": "string"},
                "fields": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "field": {"type": "string"},
                            "message": {"type": "string"},
                        },
                    },
                },
            },
        }
    },
}


def _document_error_shape(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        schemas = schema.get("components", {}).get("schemas", {})
        if "HTTPValidationError" in schemas:
            schemas["HTTPValidationError"] = ERROR_SCHEMA
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _make_event_bus(settings: Settings) -> EventBus:
    url = settings.resolved_events_url
    if not url:
        return InProcessEventBus()
    from kswifi.control.events_remote import remote_event_bus

    return remote_event_bus(url)


def _mount_web(app: FastAPI) -> None:
    try:
        from kswifi.web import mount  # the web app is optional for API-only deployments
    except ImportError:
        return
    mount(app)
