"""Listing and removing Connect Profiles, cross-user 404s, and the worker's clean-up."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from kswifi.control.deps import AppContext
from kswifi.control.models import AddressRelease, DataSession, DesiredChange, Device, SetupLink
from kswifi.control.profiles import service
from kswifi.control.profiles.config_render import parse_config
from kswifi.control.worker import Worker
from tests.control.profiles.conftest import (
    MakeOwner,
    MakeSession,
    Owner,
    RegisteredGateway,
    desired_peers,
    gateway_row,
    generate,
)
from tests.control.profiles.qr_decode import decode_data_uri


async def make_profile(
    client: httpx.AsyncClient, owner: Owner, session_id: str, **fields: Any
) -> dict[str, Any]:
    response = await generate(client, owner, session_id, **fields)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


class TestList:
    async def test_lists_own_profiles_only(
        self,
        client: httpx.AsyncClient,
        owner: Owner,
        make_owner: MakeOwner,
        make_session: MakeSession,
        gateway: RegisteredGateway,
    ) -> None:
        session = await make_session(owner.id, "ultra")
        first = await make_profile(client, owner, session.id, device_name="Phone")
        await make_profile(client, owner, session.id, device_name="Tablet")
        stranger = await make_owner()
        await make_profile(client, stranger, (await make_session(stranger.id)).id)

        response = await client.get("/api/connect/profiles", headers=owner.headers)
        assert response.status_code == 200
        profiles = response.json()["profiles"]
        assert [p["device_name"] for p in profiles] == ["Tablet", "Phone"]
        phone = profiles[1]
        assert phone["state"] == "active" and phone["session_id"] == session.id
        assert set(phone) == {
            "connect_id",
            "session_id",
            "state",
            "device_name",
            "region",
            "gateway",
            "ipv4",
            "ipv6",
            "created_at",
            "last_handshake_at",
        }
        config = parse_config(decode_data_uri(first["config_qr"])[0])
        assert phone["connect_id"] == first["connect_id"]
        assert phone["session_id"] == session.id
        assert (phone["region"], phone["gateway"]) == ("eu-west", gateway.name)
        assert (phone["ipv4"], phone["ipv6"]) == (str(config.ipv4), str(config.ipv6))
        assert phone["last_handshake_at"] is None
        single = await client.get(
            f"/api/connect/profiles/{first['connect_id']}", headers=owner.headers
        )
        assert single.json() == phone

    async def test_needs_login(self, client: httpx.AsyncClient) -> None:
        assert (await client.get("/api/connect/profiles")).status_code == 401


class TestDelete:
    async def test_removes_the_device_and_releases_its_address(
        self,
        client: httpx.AsyncClient,
        ctx: AppContext,
        owner: Owner,
        make_session: MakeSession,
        gateway: RegisteredGateway,
    ) -> None:
        session = await make_session(owner.id)
        profile = await make_profile(client, owner, session.id)
        assert len(await desired_peers(client, gateway)) == 1
        revision = (await gateway_row(ctx, gateway.id)).revision
        response = await client.delete(
            f"/api/connect/profiles/{profile['connect_id']}", headers=owner.headers
        )
        assert response.status_code == 204
        assert await desired_peers(client, gateway) == []
        assert (await gateway_row(ctx, gateway.id)).revision > revision
        async with ctx.db.transaction() as db:
            device = await db.get(Device, profile["connect_id"])
            assert device is not None
            assert device.status == "removed" and device.removed_at is not None
            release = await db.get(AddressRelease, (gateway.id, device.host_index))
            assert release is not None
            assert await db.scalar(select(func.count()).select_from(SetupLink)) == 0
        listed = await client.get("/api/connect/profiles", headers=owner.headers)
        assert listed.json()["profiles"] == []
        # Its links are dead and deleting again is a 404.
        assert (await client.get(profile["config_url"])).status_code == 404
        again = await client.delete(
            f"/api/connect/profiles/{profile['connect_id']}", headers=owner.headers
        )
        assert again.status_code == 404
        # The session has room again; the cooled-down address is not handed out at once.
        new = await make_profile(client, owner, session.id)
        assert new["connect_id"] != profile["connect_id"]
        old_ip = parse_config(decode_data_uri(profile["config_qr"])[0]).ipv4
        assert parse_config(decode_data_uri(new["config_qr"])[0]).ipv4 != old_ip

    async def test_concurrent_removals_release_once(
        self,
        client: httpx.AsyncClient,
        ctx: AppContext,
        owner: Owner,
        make_session: MakeSession,
        gateway: RegisteredGateway,
    ) -> None:
        profile = await make_profile(client, owner, (await make_session(owner.id)).id)
        url = f"/api/connect/profiles/{profile['connect_id']}"
        responses = await asyncio.gather(
            *(client.delete(url, headers=owner.headers) for _ in range(4))
        )
        assert sorted(r.status_code for r in responses) == [204, 404, 404, 404]
        async with ctx.db.transaction() as db:
            assert await db.scalar(select(func.count()).select_from(AddressRelease)) == 1


class TestCrossUser:
    @pytest.mark.parametrize(
        ("method", "suffix"),
        [
            ("GET", ""),
            ("DELETE", ""),
            ("GET", "/config"),
            ("GET", "/mobileconfig"),
        ],
    )
    async def test_someone_elses_profile_is_404_like_a_missing_one(
        self,
        client: httpx.AsyncClient,
        ctx: AppContext,
        owner: Owner,
        make_owner: MakeOwner,
        make_session: MakeSession,
        gateway: RegisteredGateway,
        method: str,
        suffix: str,
    ) -> None:
        profile = await make_profile(client, owner, (await make_session(owner.id)).id)
        stranger = await make_owner()
        theirs = await client.request(
            method,
            f"/api/connect/profiles/{profile['connect_id']}{suffix}",
            headers=stranger.headers,
        )
        missing = await client.request(
            method, f"/api/connect/profiles/{'f' * 32}{suffix}", headers=stranger.headers
        )
        assert theirs.status_code == missing.status_code == 404
        assert theirs.json() == missing.json()
        async with ctx.db.transaction() as db:
            device = await db.get(Device, profile["connect_id"])
            assert device is not None and device.status == "active"

    async def test_generate_for_someone_elses_session_is_404(
        self,
        client: httpx.AsyncClient,
        owner: Owner,
        make_owner: MakeOwner,
        make_session: MakeSession,
        gateway: RegisteredGateway,
    ) -> None:
        stranger = await make_owner()
        response = await generate(client, stranger, (await make_session(owner.id)).id)
        assert response.status_code == 404


class TestProfilesOutliveSessions:
    @pytest.mark.parametrize("ending", ["exhausted", "expired", "revoked", "time_up"])
    async def test_devices_move_to_the_queued_session_then_to_the_garden(
        self,
        client: httpx.AsyncClient,
        ctx: AppContext,
        owner: Owner,
        make_session: MakeSession,
        gateway: RegisteredGateway,
        ending: str,
    ) -> None:
        first = await make_session(owner.id, "ultra")  # three devices at once
        queued = await make_session(owner.id)  # one device at once
        assert queued.status == "queued"
        profiles = [
            await make_profile(client, owner, first.id, device_name=name)
            for name in ("a", "b", "c")
        ]
        assert {p["session_id"] for p in profiles} == {first.id}
        now = datetime.now(UTC)
        async with ctx.db.transaction() as db:
            values: dict[str, Any] = (
                {"expires_at": now - timedelta(seconds=1), "activated_at": now}
                if ending == "time_up"
                else {"status": ending, "ended_at": now}
            )
            await db.execute(update(DataSession).where(DataSession.id == first.id).values(**values))
        revision = (await gateway_row(ctx, gateway.id)).revision
        worker = Worker(ctx)
        assert await worker.hand_over_devices(now) == 1  # one gateway's peers changed
        listed = (await client.get("/api/connect/profiles", headers=owner.headers)).json()
        states = {p["device_name"]: (p["state"], p["session_id"]) for p in listed["profiles"]}
        # Nothing removed, no new code: the first installed draws from the queued session now.
        assert states == {
            "a": ("active", queued.id),
            "b": ("waiting", None),
            "c": ("waiting", None),
        }
        async with ctx.db.transaction() as db:
            assert await db.scalar(select(func.count()).select_from(AddressRelease)) == 0
            promoted = await db.get(DataSession, queued.id)
            assert promoted is not None and promoted.status == "active"
        after = (await gateway_row(ctx, gateway.id)).revision
        assert after > revision
        async with ctx.db.transaction() as db:  # recorded as this person's change alone
            recorded = await db.scalars(
                select(DesiredChange.user_id).where(
                    DesiredChange.gateway_id == gateway.id, DesiredChange.revision == after
                )
            )
            assert set(recorded) == {owner.id}
        peers = await desired_peers(client, gateway)
        assert len(peers) == 3  # every installed device stays a peer
        [peer] = [peer for peer in peers if peer["session_id"] is not None]
        assert peer["session_id"] == queued.id
        assert peer["public_key"] == str(
            parse_config(decode_data_uri(profiles[0]["config_qr"])[0]).private_key.public_key()
        )
        assert await worker.hand_over_devices(now) == 0  # done once

        # The last session ends too: every device is in the garden, still installed.
        async with ctx.db.transaction() as db:
            await db.execute(
                update(DataSession)
                .where(DataSession.id == queued.id)
                .values(status="exhausted", ended_at=now)
            )
        assert await worker.hand_over_devices(now) == 1
        listed = (await client.get("/api/connect/profiles", headers=owner.headers)).json()
        assert {p["state"] for p in listed["profiles"]} == {"garden"}
        assert len(listed["profiles"]) == 3

    async def test_purge_expired_setup_links(
        self,
        client: httpx.AsyncClient,
        ctx: AppContext,
        owner: Owner,
        make_session: MakeSession,
        gateway: RegisteredGateway,
    ) -> None:
        await make_profile(client, owner, (await make_session(owner.id)).id)
        async with ctx.db.transaction() as db:
            assert await service.purge_expired_setup_links(db, datetime.now(UTC)) == 0
        later = datetime.now(UTC) + timedelta(minutes=11)
        async with ctx.db.transaction() as db:
            assert await service.purge_expired_setup_links(db, later) == 1


async def test_a_new_gateway_endpoint_reaches_a_device_when_its_code_is_shown_again(
    client: httpx.AsyncClient,
    ctx: AppContext,
    owner: Owner,
    make_session: MakeSession,
    gateway: RegisteredGateway,
) -> None:
    from kswifi.control.users import service as users

    session = await make_session(owner.id)
    first = await make_profile(client, owner, session.id, device_name="Phone")
    async with ctx.db.transaction() as db:
        admin = await users.create_admin(db, "ops-endpoint@example.com", "a long password 1")
        admin_id = admin.id
    token = ctx.secrets.issue_access_token(admin_id, True, timedelta(minutes=5))
    response = await client.post(
        f"/api/admin/gateways/{gateway.id}/endpoint",
        json={"endpoint": "gw.example.org:443"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["endpoint"] == "gw.example.org:443"
    bad = await client.post(
        f"/api/admin/gateways/{gateway.id}/endpoint",
        json={"endpoint": "no-port"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "endpoint"
    again = await make_profile(client, owner, session.id, device_name="Phone")
    old = parse_config(decode_data_uri(first["config_qr"])[0])
    new = parse_config(decode_data_uri(again["config_qr"])[0])
    assert old.endpoint == gateway.endpoint and new.endpoint == "gw.example.org:443"
    assert new.private_key == old.private_key  # same keys: only where it dials changed
