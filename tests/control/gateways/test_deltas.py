"""Desired-state deltas from the control plane (`changes=true`): the whole state first, then
only what changed since the answer the agent names; the whole state again whenever that answer
is not the one this process last sent (a restarted control plane, an old or unknown tag, an
agent that restarted and names none). What the agent builds from the deltas is what a whole
state says at the same revision."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlalchemy import update

from kswifi.control.deps import AppContext
from kswifi.control.gateways import answers
from kswifi.control.gateways import desired as gateway_desired
from kswifi.control.models import DataSession, Device, DeviceStatus, utcnow
from kswifi.protocol import DesiredState, DesiredUpdate
from kswifi.protocol.deltas import PeerBook, peers_by_key
from tests.control.gateways.conftest import World


async def _ask(client: httpx.AsyncClient, headers: dict[str, str], **params: Any) -> DesiredUpdate:
    response = await client.get(
        "/api/gateway/v1/desired-state", headers=headers, params={"changes": "true", **params}
    )
    assert response.status_code == 200, response.text
    return DesiredUpdate.model_validate_json(response.content)


async def _whole(client: httpx.AsyncClient, headers: dict[str, str]) -> DesiredState:
    response = await client.get("/api/gateway/v1/desired-state", headers=headers)
    assert response.status_code == 200, response.text
    return DesiredState.model_validate_json(response.content)


async def test_deltas_follow_each_change_and_rebuild_the_whole_state(
    client: httpx.AsyncClient, ctx: AppContext, world: World
) -> None:
    gateway = await world.gateway()
    first = await world.device(await world.session(), gateway.id)
    update_ = await _ask(client, gateway.headers)
    assert update_.kind == "full" and update_.state is not None
    book = PeerBook.of(update_.state, update_.tag)

    async def follow() -> DesiredUpdate:
        answer = await _ask(client, gateway.headers, since=book.state.revision, known=book.tag)
        assert answer.kind == "delta" and answer.delta is not None, answer
        book.apply(answer.delta, answer.tag)
        # At every step, the deltas rebuilt exactly what the whole state says now.
        whole = await _whole(client, gateway.headers)
        assert book.state.revision == whole.revision
        assert peers_by_key(book.state) == peers_by_key(whole)
        assert book.state.garden == whole.garden and book.state.interface == whole.interface
        return answer

    added = await world.device(await world.session(), gateway.id)
    answer = await follow()
    assert answer.delta is not None
    assert [peer.public_key for peer in answer.delta.upsert] == [added.public_key]
    assert answer.delta.remove == [] and answer.delta.base_revision < answer.delta.revision

    # A session ending moves its device to the garden: one peer changed, no one else.
    async with ctx.db.transaction() as db:
        await db.execute(
            update(DataSession)
            .where(DataSession.id == first.session_id)
            .values(status="exhausted", ended_at=utcnow())
        )
        await gateway_desired.bump_revision(db, [gateway.id], ctx.events)
    answer = await follow()
    assert answer.delta is not None
    [changed] = answer.delta.upsert
    assert changed.public_key == first.public_key and changed.session_id is None

    async with ctx.db.transaction() as db:
        await db.execute(
            update(Device)
            .where(Device.id == added.id)
            .values(status=DeviceStatus.REMOVED, removed_at=utcnow())
        )
        await gateway_desired.bump_revision(db, [gateway.id], ctx.events)
    answer = await follow()
    assert answer.delta is not None
    assert answer.delta.upsert == [] and answer.delta.remove == [added.public_key]


async def test_the_whole_state_when_the_answer_named_is_not_the_last_one_sent(
    client: httpx.AsyncClient, world: World
) -> None:
    gateway = await world.gateway()
    await world.device(await world.session(), gateway.id)
    first = await _ask(client, gateway.headers)
    revision = first.revision
    second = await _ask(client, gateway.headers, since=revision, known=first.tag)
    assert second.kind == "delta" and second.delta is not None
    assert second.delta.upsert == [] and second.delta.remove == []  # nothing changed
    # An old answer (the agent missed `second`), one never sent, or none (a restarted agent).
    for params in (
        {"since": revision, "known": first.tag},
        {"since": revision, "known": "not-a-tag"},
        {},
        {"known": second.tag},  # without `since` the tag means nothing
    ):
        again = await _ask(client, gateway.headers, **params)
        assert again.kind == "full" and again.state is not None, params
    # A restarted control plane remembers nothing it sent.
    last = await _ask(client, gateway.headers)
    answers._SENT.clear()
    after_restart = await _ask(client, gateway.headers, since=last.revision, known=last.tag)
    assert after_restart.kind == "full"


async def test_a_new_revision_wakes_a_waiting_delta(
    client: httpx.AsyncClient, world: World
) -> None:
    """The long-poll holds a delta ask like any other until something changes."""
    gateway = await world.gateway()
    first = await _ask(client, gateway.headers)

    async def add_later() -> str:
        await asyncio.sleep(0.3)
        return (await world.device(await world.session(), gateway.id)).public_key

    adding = asyncio.create_task(add_later())
    answer = await _ask(client, gateway.headers, since=first.revision, known=first.tag)
    added = await adding
    assert answer.kind == "delta" and answer.delta is not None
    assert [peer.public_key for peer in answer.delta.upsert] == [added]
