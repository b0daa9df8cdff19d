"""Typed errors raised by the agent and its drivers."""

from __future__ import annotations

from collections.abc import Sequence


class AgentError(Exception):
    """Base class of every error the agent raises on purpose."""


class CommandError(AgentError):
    """An external command failed, timed out or is missing; carries its stderr."""

    def __init__(
        self, argv: Sequence[str], returncode: int | None, stderr: str, reason: str = "failed"
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        self.reason = reason
        detail = f": {self.stderr}" if self.stderr else ""
        super().__init__(f"`{' '.join(self.argv[:4])}` {reason} (rc={returncode}){detail}")


class DriverError(AgentError):
    """A driver found the data plane in a state it cannot work with."""


class ControlPlaneError(AgentError):
    """The control plane answered with an error or could not be reached."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        self.status_code = status_code
        super().__init__(message)


class AuthenticationError(ControlPlaneError):
    """The control plane refused the gateway token (401/403): retrying will not help."""


class ProtocolMismatch(AuthenticationError):
    """The control plane speaks another gateway protocol version (426): retrying will not help
    until one of the two is upgraded."""
