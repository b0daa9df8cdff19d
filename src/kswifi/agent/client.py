"""httpx client for the control plane's gateway protocol (`/api/gateway/v1/...`).

`control_url` is `http(s)://host[:port]` or `unix:/path/to.sock` (the control plane served
with `kswifi serve --uds PATH`). Every call carries the gateway's bearer token and the
protocol version it speaks.
"""

from __future__ import annotations

from typing import TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from kswifi.agent import AGENT_VERSION
from kswifi.agent.errors import AuthenticationError, ControlPlaneError, ProtocolMismatch
from kswifi.protocol import (
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    DesiredUpdate,
    GatewayHeartbeat,
    HeartbeatAck,
    LeaseRequest,
    LeaseResponse,
    UsageAck,
    UsageReport,
)

API = "/api/gateway/v1"
Model = TypeVar("Model", bound=BaseModel)


def make_transport(control_url: str) -> tuple[str, httpx.AsyncBaseTransport | None]:
    """(base_url, transport) for an http(s) URL or a `unix:` socket path."""
    if control_url.startswith("unix:"):
        path = control_url[len("unix:") :]
        return "http://kswifi-control", httpx.AsyncHTTPTransport(uds=path, retries=0)
    return control_url.rstrip("/"), None


class ControlPlaneClient:
    """Typed calls of the gateway protocol; errors become ControlPlaneError."""

    def __init__(
        self,
        control_url: str,
        token: str,
        *,
        poll_timeout_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        base_url, default_transport = make_transport(control_url)
        self.poll_timeout_s = poll_timeout_s
        self._http = httpx.AsyncClient(
            base_url=base_url,
            transport=transport or default_transport,
            headers={
                "Authorization": f"Bearer {token}",
                "User-Agent": f"kswifi-gateway/{AGENT_VERSION}",
                PROTOCOL_HEADER: str(PROTOCOL_VERSION),
            },
            timeout=httpx.Timeout(10.0),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        model: type[Model],
        *,
        body: BaseModel | None = None,
        params: dict[str, int | str] | None = None,
        read_timeout_s: float | None = None,
    ) -> Model:
        try:
            response = await self._http.request(
                method,
                API + path,
                content=body.model_dump_json() if body is not None else None,
                headers={"Content-Type": "application/json"} if body is not None else None,
                params=params,
                timeout=read_timeout_s if read_timeout_s is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError as exc:
            raise ControlPlaneError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 426:
            raise ProtocolMismatch(
                f"{method} {path}: the control plane refused this agent's gateway protocol "
                f"version {PROTOCOL_VERSION}: {_message(response)} Upgrade the agent (or the "
                "control plane) so both speak the same version.",
                426,
            )
        if response.status_code in (401, 403):
            raise AuthenticationError(
                f"{method} {path}: the control plane refused the gateway token "
                f"({response.status_code})",
                response.status_code,
            )
        if response.status_code >= 400:
            raise ControlPlaneError(
                f"{method} {path}: HTTP {response.status_code}: {response.text[:300]}",
                response.status_code,
            )
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise ControlPlaneError(f"{method} {path}: unexpected answer: {exc}") from exc

    async def desired_update(
        self, since: int | None = None, known: str | None = None
    ) -> DesiredUpdate:
        """The desired state or, when the control plane still knows the answer tagged
        `known` (the state held, at revision `since`), what changed since (a delta); with
        `since` the server holds the answer until something changed."""
        params: dict[str, int | str] = {"changes": "true"}
        if since is not None:
            params["since"] = since
            if known is not None:
                params["known"] = known
        wait = self.poll_timeout_s + 15.0 if since is not None else None
        return await self._call(
            "GET", "/desired-state", DesiredUpdate, params=params, read_timeout_s=wait
        )

    async def post_usage(self, report: UsageReport) -> UsageAck:
        return await self._call("POST", "/usage", UsageAck, body=report)

    async def heartbeat(self, heartbeat: GatewayHeartbeat) -> HeartbeatAck:
        return await self._call("POST", "/heartbeat", HeartbeatAck, body=heartbeat)

    async def leases(self, session_ids: list[str]) -> LeaseResponse:
        return await self._call(
            "POST", "/leases", LeaseResponse, body=LeaseRequest(session_ids=session_ids)
        )


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:300]
