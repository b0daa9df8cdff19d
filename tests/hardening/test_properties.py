"""Property tests that join pieces the unit properties test alone.

Already covered elsewhere (not repeated): IPAM index ↔ address and block carving
(tests/control/gateways/test_ipam.py), lease arithmetic (test_leases.py), config render ↔ parse
(tests/control/profiles/test_config_render.py), the reconcile diff reaching any desired state
and the incremental (scoped) reconcile equal to the full one over any history of changes
(tests/agent/test_reconcile.py), and the agent's usage tracker against a fake control plane
(tests/agent/test_usage.py).

Here:
- address allocation through the real service and database, with releases, cool-downs and a
  small pool: no address is ever held twice, none leaves the gateway's block, none comes back
  before its cool-down, and "exhausted" is said only when every address is held or cooling;
- the agent's usage tracker delivering to the real control plane (sequence numbers, duplicate
  detection, gaps) through arbitrary counter resets, agent crashes, lost acknowledgements and
  replays: the session is billed exactly the bytes the kernel counted, never more or less;
- a Connect Profile's config read back from the Apple profile: the same values as the .conf.
"""

from __future__ import annotations

import ipaddress
import plistlib
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from kswifi.agent.usage import UsageTracker
from kswifi.control.deps import AppContext
from kswifi.control.gateways import addresses as gateway_addresses
from kswifi.control.gateways import ipam
from kswifi.control.models import DataSession, Device, Gateway, utcnow
from kswifi.control.profiles.config_render import parse_config
from kswifi.control.profiles.mobileconfig import build_mobileconfig
from kswifi.protocol import UsageAck
from tests.hardening.conftest import buy, make_actor, make_gateway

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

FIXTURES_REUSED = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
COOLDOWN = 60

# -- addresses: allocate / release / wait, through the service --------------------------------

address_ops = st.lists(
    st.one_of(
        st.tuples(st.just("allocate"), st.just(0)),
        st.tuples(st.just("release"), st.integers(0, 7)),
        st.tuples(st.just("wait"), st.sampled_from([1, COOLDOWN // 2, COOLDOWN + 1])),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=25, deadline=None, suppress_health_check=FIXTURES_REUSED)
@given(ops=address_ops)
async def test_allocation_never_hands_out_an_address_twice(
    ctx: AppContext, ops: list[tuple[str, int]]
) -> None:
    ctx.settings.address_pool_v4_prefix = 29  # the gateway and 5 devices: exhaustion is near
    ctx.settings.default_gateway_capacity = 5
    ctx.settings.address_cooldown_seconds = COOLDOWN
    gateway = await make_gateway(ctx, "eu-west")
    async with ctx.db.transaction() as db:
        row = await db.get(Gateway, gateway.id)
        assert row is not None
        blocks = ipam.GatewayBlocks.parse(row.ipv4_pool, row.ipv6_pool)
    now = utcnow()
    held: dict[int, tuple[str, str]] = {}
    cooling: dict[int, object] = {}  # host index -> released at
    for op, argument in ops:
        if op == "wait":
            now += timedelta(seconds=argument)
        elif op == "release" and held:
            index = sorted(held)[argument % len(held)]
            async with ctx.db.transaction() as db:
                await gateway_addresses.release_host(db, gateway.id, index, now)
            del held[index]
            cooling[index] = now
        elif op == "allocate":
            try:
                async with ctx.db.transaction() as db:
                    locked = await db.get(Gateway, gateway.id)
                    assert locked is not None
                    index, v4, v6 = await gateway_addresses.allocate_host(
                        db, locked, ctx.settings, now
                    )
            except gateway_addresses.AddressPoolExhausted:
                reusable = [i for i, t in cooling.items() if now - t >= timedelta(seconds=COOLDOWN)]  # type: ignore[operator]
                never_used = set(range(2, blocks.max_host_index + 1)) - set(held) - set(cooling)
                assert not reusable and not never_used, (held, cooling)
                continue
            assert index not in held, f"{index} handed out twice"
            assert ipaddress.ip_address(v4) in blocks.ipv4
            assert ipaddress.ip_address(v6) in blocks.ipv6
            assert (v4, v6) == blocks.device_addresses(index)
            assert v4 not in (str(blocks.ipv4.network_address), str(blocks.ipv4.broadcast_address))
            assert index != ipam.GATEWAY_HOST_INDEX
            if index in cooling:
                assert now - cooling.pop(index) >= timedelta(seconds=COOLDOWN)  # type: ignore[operator]
            held[index] = (v4, v6)
    assert len({v4 for v4, _ in held.values()}) == len(held)


# -- usage: the agent's tracker against the real control plane ---------------------------------

usage_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from(["up", "down"]), st.integers(1, 50_000)),
        st.tuples(st.just("reset"), st.sampled_from(["up", "down"]), st.just(0)),
        st.tuples(st.just("observe"), st.just(""), st.just(0)),
        st.tuples(st.just("crash"), st.just(""), st.just(0)),
        st.tuples(st.just("deliver"), st.just(""), st.just(0)),
        st.tuples(st.just("ack_lost"), st.just(""), st.just(0)),
        st.tuples(st.just("replay"), st.just(""), st.integers(1, 3)),
    ),
    max_size=40,
)


@settings(max_examples=30, deadline=None, suppress_health_check=FIXTURES_REUSED)
@given(ops=usage_ops)
async def test_usage_is_billed_exactly_once_through_resets_crashes_and_replays(
    client: httpx.AsyncClient, ctx: AppContext, ops: list[tuple[str, str, int]]
) -> None:
    ctx.settings.address_pool_v4_prefix = 24  # a gateway per example: many small blocks
    ctx.settings.default_gateway_capacity = 100
    gateway = await make_gateway(ctx, "eu-west")
    owner = await make_actor(ctx, label="meter")
    session_id = (await buy(client, owner, "ultra"))["session_id"]
    async with ctx.db.transaction() as db:
        locked = await db.get(Gateway, gateway.id)
        session = await db.get(DataSession, session_id)
        assert locked is not None and session is not None
        index, v4, v6 = await gateway_addresses.allocate_host(db, locked, ctx.settings, utcnow())
        db.add(
            Device(
                session_id=session_id,
                user_id=owner.id,
                gateway_id=gateway.id,
                public_key=f"k{uuid.uuid4().hex}",
                preshared_key_encrypted=ctx.secrets.encrypt("x"),
                host_index=index,
                ipv4=v4,
                ipv6=v6,
            )
        )

    async def post(report: object) -> UsageAck:
        response = await client.post(
            "/api/gateway/v1/usage",
            content=report.model_dump_json(),  # type: ignore[attr-defined]
            headers={**gateway.headers, "Content-Type": "application/json"},
        )
        assert response.status_code == 200, response.text
        return UsageAck.model_validate(response.json())

    with tempfile.TemporaryDirectory() as tmp:
        state_dir = Path(tmp)
        tracker = UsageTracker(state_dir, checkpoint_interval_s=0)
        kernel: dict[tuple[str, str], tuple[int, int]] = {}
        handles = iter(range(100, 10_000))
        truth = 0
        delivered: list[object] = []
        for op, direction, amount in ops:
            key = (session_id, direction)
            if op == "add":
                handle, value = kernel.get(key, (next(handles), 0))
                kernel[key] = (handle, value + amount)
                truth += amount
            elif op == "reset" and key in kernel:
                tracker.observe(dict(kernel))  # type: ignore[arg-type]  # the final read
                kernel[key] = (next(handles), 0)
            elif op == "observe":
                tracker.observe(dict(kernel))  # type: ignore[arg-type]
            elif op == "crash":  # kill -9: memory gone, the state directory stays
                tracker = UsageTracker(state_dir, checkpoint_interval_s=0)
            elif op == "deliver":
                for report in tracker.pending():
                    ack = await post(report)
                    delivered.append(report)
                    if not tracker.acknowledge(report, ack):
                        break
            elif op == "ack_lost":  # the control plane applied it; the answer never arrived
                for report in tracker.pending()[:1]:
                    await post(report)
                    delivered.append(report)
            elif op == "replay":
                for report in delivered[-amount:]:
                    await post(report)
        tracker.observe(dict(kernel))  # type: ignore[arg-type]
        for _ in range(5):
            for report in tracker.pending():
                if not tracker.acknowledge(report, await post(report)):
                    break
        assert tracker.pending() == []
    async with ctx.db.transaction() as db:
        billed = await db.scalar(select(DataSession.used_bytes).where(DataSession.id == session_id))
    assert billed == truth, ops


# -- the Apple profile carries the same config ---------------------------------------------------


async def test_mobileconfig_carries_the_same_config(
    client: httpx.AsyncClient, ctx: AppContext
) -> None:
    await make_gateway(ctx, "eu-west")
    owner = await make_actor(ctx, label="apple")
    session_id = (await buy(client, owner, "ultra"))["session_id"]
    for device in ("a", "b", "c"):
        profile = (
            await client.post(
                "/api/connect/generate-profile",
                json={"session_id": session_id, "device_name": device},
                headers=owner.headers,
            )
        ).json()
        base = f"/api/connect/profiles/{profile['connect_id']}"
        token = profile["config_url"].split("?t=", 1)[1]
        conf = (await client.get(f"{base}/config?t={token}")).text
        apple = plistlib.loads((await client.get(f"{base}/mobileconfig?t={token}")).content)
        [payload] = apple["PayloadContent"]
        embedded = payload["VendorConfig"]["WgQuickConfig"]
        assert parse_config(embedded) == parse_config(conf)
        rebuilt = build_mobileconfig(
            device_id=profile["connect_id"], config_text=conf, endpoint="x.example:51820"
        )
        assert plistlib.loads(rebuilt)["PayloadContent"][0]["VendorConfig"]["WgQuickConfig"] == (
            embedded
        )
