"""The newcomer's path through the API: register, redeem a voucher, generate a Connect Profile.

The QR code is decoded with a real decoder and the config it holds is checked with the real
`wg` tool; its private key must match the public key the gateway is told to accept.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import zxingcpp
from PIL import Image

from kswifi.control.deps import AppContext
from kswifi.control.gateways import service as gateways
from kswifi.control.profiles.config_render import parse_config
from kswifi.control.purchases import service as purchases
from tests.conftest import register_and_login

INSTRUCTIONS = [
    "1. Scan this QR code with your device camera",
    "2. Tap 'Add' when prompted to install profile",
    "3. Enable 'KSWiFi Connect' in your device settings",
    "4. Enjoy secure global internet access!",
]


def decode_qr_data_uri(data_uri: str) -> str:
    prefix = "data:image/png;base64,"
    assert data_uri.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(data_uri[len(prefix) :])))
    results = zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode)
    assert len(results) == 1, "exactly one QR code in the image"
    return str(results[0].text)


def check_wg_accepts(config_text: str, tmp_path: Path) -> None:
    """`wg-quick strip` must parse the config; as root, `wg setconf` loads it on wireguard-go."""
    conf = tmp_path / "kswacc0.conf"
    conf.write_text(config_text)
    conf.chmod(0o600)
    stripped = subprocess.run(
        ["wg-quick", "strip", str(conf)], capture_output=True, text=True, timeout=10
    )
    assert stripped.returncode == 0, stripped.stderr
    assert "Address" not in stripped.stdout and "PrivateKey" in stripped.stdout
    stripped_path = tmp_path / "stripped.conf"
    stripped_path.write_text(stripped.stdout)
    if os.geteuid() != 0 or shutil.which("wireguard-go") is None:
        return  # the e2e suite, which needs root, loads these configs on real phones
    namespace = f"kswacc{os.getpid() % 100000}"
    interface = f"kswacc{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", namespace], check=True, timeout=10)
    try:
        subprocess.run(
            ["ip", "netns", "exec", namespace, "wireguard-go", interface],
            check=True,
            timeout=10,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # the daemon keeps inherited pipes open
            stderr=subprocess.DEVNULL,
        )
        loaded = subprocess.run(
            ["ip", "netns", "exec", namespace, "wg", "setconf", interface, str(stripped_path)],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert loaded.returncode == 0, loaded.stderr
        shown = subprocess.run(
            ["ip", "netns", "exec", namespace, "wg", "show", interface, "peers"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert len(shown.stdout.split()) == 1
    finally:
        subprocess.run(
            ["ip", "netns", "exec", namespace, "ip", "link", "del", interface],
            capture_output=True,
            timeout=10,
        )
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=10)
        Path(f"/var/run/wireguard/{interface}.sock").unlink(missing_ok=True)


def wg_pubkey(private_key: str) -> str:
    wg = shutil.which("wg")
    assert wg is not None, "wireguard-tools is installed by the Makefile"
    result = subprocess.run(
        [wg, "pubkey"], input=private_key + "\n", capture_output=True, text=True, timeout=10
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


async def test_register_redeem_generate_scan(
    client: httpx.AsyncClient, ctx: AppContext, tmp_path: Path
) -> None:
    async with ctx.db.transaction() as db:
        _gateway, gateway_token = await gateways.register(
            db,
            ctx.secrets,
            ctx.settings,
            name="nyc-1",
            region_code="us-east",
            endpoint="198.51.100.1:51820",
        )
        (voucher,) = await purchases.create_vouchers(db, plan_code="premium", count=1, actor="cli")

    person = await register_and_login(client, "newcomer@example.com")
    bought = await client.post(
        "/api/purchases",
        json={"plan_code": "premium", "payment_method": "voucher", "voucher_code": voucher},
        headers=person.headers,
    )
    assert bought.status_code == 201, bought.text
    session_id = bought.json()["session_id"]

    generated = await client.post(
        "/api/connect/generate-profile",
        json={"session_id": session_id, "data_limit_mb": 999_999},
        headers=person.headers,
    )
    assert generated.status_code in (200, 201), generated.text
    body = generated.json()
    assert body["success"] is True
    assert body["session_id"] == session_id
    assert body["data_limit_mb"] == 5 * 1024
    assert body["profile_type"] == "kswifi_connect"
    assert body["access_method"] == "secure_profile"
    assert body["setup_instructions"] == INSTRUCTIONS
    assert body["region"] == "us-east"
    assert body["gateway"] == "nyc-1"
    for field in ("connect_id", "setup_url", "config_url", "mobileconfig_url"):
        assert body[field], field
    assert body["expires_at"] is None  # the clock starts when the phone first connects
    assert body["profile_qr_svg"].lstrip().startswith("<")
    assert decode_qr_data_uri(body["profile_qr"]) == body["setup_url"]  # the camera opens it

    config_text = decode_qr_data_uri(body["config_qr"])
    config = parse_config(config_text)
    assert "#" not in config_text
    assert config.endpoint == "198.51.100.1:51820"

    # What `wg-quick strip` leaves must be accepted by `wg setconf` on a real interface.
    await asyncio.to_thread(check_wg_accepts, config_text, tmp_path)
    public_key = wg_pubkey(str(config.private_key))

    state = await client.get(
        "/api/gateway/v1/desired-state",
        headers={"Authorization": f"Bearer {gateway_token}"},
    )
    assert state.status_code == 200, state.text
    peers = {peer["public_key"]: peer for peer in state.json()["peers"]}
    assert public_key in peers
    peer = peers[public_key]
    assert peer["session_id"] == session_id
    assert peer["quota_bytes"] == 5 * 1024**3
    assert peer["speed_mbps"] == 25
    assert peer["preshared_key"] == str(config.preshared_key)
    assert sorted(peer["allowed_ips"]) == sorted([f"{config.ipv4}/32", f"{config.ipv6}/128"])
    assert config.allowed_ips == ("0.0.0.0/0", "::/0")
    assert config.persistent_keepalive == 25

    session = await client.get(f"/api/sessions/{session_id}", headers=person.headers)
    assert session.json()["expires_at"] is None
    assert session.json()["starts"] == "When your phone first connects"
    assert session.json()["usage_text"] == "0 GB of 5 GB used"


@pytest.mark.parametrize("path", ["/api/sessions", "/api/purchases", "/api/connect/profiles"])
async def test_private_routes_need_a_token(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
