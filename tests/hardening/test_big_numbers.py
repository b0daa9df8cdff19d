"""Integers past what the database holds (2**63 and up) are refused with 422, never a 500.

Found by the soak fuzzing: a heartbeat with `rx_bps` ≥ 2**63 reached SQLite and raised
OverflowError. Every integer a client or an agent sends is bounded to a signed 64-bit value.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.hardening.conftest import World

HUGE = [2**63, 2**64 + 1, 10**30]


def _usage(world: World, **delta: int) -> dict[str, Any]:
    return {
        "sequence": delta.pop("sequence", 1),
        "sent_at": "2026-01-01T00:00:00Z",
        "deltas": [{"session_id": world.owner_session, "rx_bytes": 1, "tx_bytes": 1, **delta}],
    }


def _heartbeat(**fields: int) -> dict[str, Any]:
    return {"agent_version": "t", "interface_mode": "userspace", "peer_count": 1, **fields}


CASES = {
    "usage sequence": lambda w, n: ("/api/gateway/v1/usage", _usage(w, sequence=n)),
    "usage rx_bytes": lambda w, n: ("/api/gateway/v1/usage", _usage(w, rx_bytes=n)),
    "usage tx_bytes": lambda w, n: ("/api/gateway/v1/usage", _usage(w, tx_bytes=n)),
    "heartbeat peer_count": lambda _w, n: ("/api/gateway/v1/heartbeat", _heartbeat(peer_count=n)),
    "heartbeat rx_bps": lambda _w, n: ("/api/gateway/v1/heartbeat", _heartbeat(rx_bps=n)),
    "heartbeat tx_bps": lambda _w, n: ("/api/gateway/v1/heartbeat", _heartbeat(tx_bps=n)),
    "heartbeat applied_revision": lambda _w, n: (
        "/api/gateway/v1/heartbeat",
        _heartbeat(applied_revision=n),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_gateway_protocol(client: httpx.AsyncClient, world: World, case: str) -> None:
    for number in HUGE:
        path, body = CASES[case](world, number)
        response = await client.post(path, json=body, headers=world.gw_a.headers)
        assert response.status_code == 422, (case, number, response.text)


@pytest.mark.parametrize("path", ["/api/admin/users", "/api/admin/sessions", "/api/admin/audit"])
async def test_operator_paging(client: httpx.AsyncClient, world: World, path: str) -> None:
    for number in HUGE:
        response = await client.get(
            path, params={"offset": str(number)}, headers=world.admin.headers
        )
        assert response.status_code == 422, (path, number, response.text)
    since = await client.get(
        "/api/gateway/v1/desired-state", params={"since": str(2**64)}, headers=world.gw_a.headers
    )
    assert since.status_code in (200, 422)
