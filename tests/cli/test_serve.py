"""`kswifi serve` as a real process: migrations on start, a Unix socket, clean shutdown."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from kswifi.cli import _settle_garbage_collector


def test_serve_over_a_unix_socket_migrates_and_answers(tmp_path: Path) -> None:
    socket_path = tmp_path / "kswifi.sock"
    env = {
        **os.environ,
        "KSWIFI_DATA_DIR": str(tmp_path / "data"),
        "KSWIFI_DATABASE_URL": "",
        "KSWIFI_SECRET_KEY": "",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "kswifi.cli", "serve", "--uds", str(socket_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not socket_path.exists():
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        transport = httpx.HTTPTransport(uds=str(socket_path))
        with httpx.Client(transport=transport, base_url="http://kswifi") as client:
            for _ in range(50):
                try:
                    response = client.get("/api/health")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            assert response.status_code == 200
            plans = client.get("/api/plans").json()
            codes = [
                plan["code"] for plan in (plans["plans"] if isinstance(plans, dict) else plans)
            ]
            assert {"basic", "premium", "ultra"} <= set(codes)
        secret = tmp_path / "data" / "secret_key"
        assert secret.exists() and oct(secret.stat().st_mode & 0o777) == "0o600"
        assert (tmp_path / "data" / "kswifi.db").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_startup_heap_is_left_out_of_garbage_collection() -> None:
    thresholds = gc.get_threshold()
    try:
        _settle_garbage_collector()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] >= 10_000
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
