"""One error type per failure, each with its HTTP status and a stable machine-readable code."""

from __future__ import annotations

from typing import Any, ClassVar


class KSWiFiError(Exception):
    """Base of every error a client may see; rendered as `{"error": {"code", "message"}}`."""

    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.extra = extra


class BadRequest(KSWiFiError):
    status_code = 400
    code = "bad_request"


class Unauthorized(KSWiFiError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str = "Authentication required", **extra: Any):
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"}, **extra)


class Forbidden(KSWiFiError):
    status_code = 403
    code = "forbidden"


class NotFound(KSWiFiError):
    status_code = 404
    code = "not_found"


class Conflict(KSWiFiError):
    status_code = 409
    code = "conflict"


class Gone(KSWiFiError):
    status_code = 410
    code = "gone"


class Unprocessable(KSWiFiError):
    status_code = 422
    code = "validation_error"


class SessionNotUsable(KSWiFiError):
    """The data session is exhausted, expired or revoked."""

    status_code = 409
    code = "session_not_usable"


class UpgradeRequired(KSWiFiError):
    """A gateway agent speaking another protocol version than this control plane."""

    status_code = 426
    code = "protocol_version"


class TooManyRequests(KSWiFiError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int):
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after))})


class ServiceUnavailable(KSWiFiError):
    status_code = 503
    code = "unavailable"
