"""Tiny TCP traffic tool run inside test namespaces (`python traffic.py serve|fetch|push ...`).

serve HOST PORT        : each client sends a 12-byte header (b"G" + 11-digit count) to download
                         that many bytes, or (b"P" + zeros) to upload until it closes; the server
                         answers uploads with the byte count it received, as text.
fetch HOST PORT N IDLE : download N bytes, stop early after IDLE seconds without data; prints
                         JSON {"received": bytes, "seconds": elapsed}.
push HOST PORT N IDLE  : upload N bytes (stops when sending stalls for IDLE seconds); prints JSON.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time

CHUNK = 64 * 1024


def _serve_client(conn: socket.socket) -> None:
    with conn:
        header = b""
        while len(header) < 12:
            part = conn.recv(12 - len(header))
            if not part:
                return
            header += part
        if header[:1] == b"G":
            remaining = int(header[1:])
            block = b"x" * CHUNK
            try:
                while remaining > 0:
                    sent = conn.send(block[: min(CHUNK, remaining)])
                    remaining -= sent
            except OSError:
                return
        else:
            total = 0
            while True:
                try:
                    part = conn.recv(CHUNK)
                except OSError:
                    break
                if not part:
                    break
                total += len(part)
            with contextlib.suppress(OSError):
                conn.sendall(str(total).encode())


def serve(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((host, port))
        server.listen(64)
        print("ready", flush=True)
        while True:
            conn, _ = server.accept()
            threading.Thread(target=_serve_client, args=(conn,), daemon=True).start()


def _connect(host: str, port: int, idle: float) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(max(idle, 5.0))
    sock.connect((host, port))
    sock.settimeout(idle)
    return sock


def fetch(host: str, port: int, count: int, idle: float) -> None:
    started = time.monotonic()
    received = 0
    with _connect(host, port, idle) as sock:
        sock.sendall(b"G" + str(count).zfill(11).encode())
        while received < count:
            try:
                part = sock.recv(CHUNK)
            except TimeoutError:
                break
            if not part:
                break
            received += len(part)
    print(json.dumps({"received": received, "seconds": time.monotonic() - started}))


def push(host: str, port: int, count: int, idle: float) -> None:
    started = time.monotonic()
    sent = 0
    block = b"y" * CHUNK
    with _connect(host, port, idle) as sock:
        sock.sendall(b"P" + b"0" * 11)
        try:
            while sent < count:
                sent += sock.send(block[: min(CHUNK, count - sent)])
            sock.shutdown(socket.SHUT_WR)
            answer = sock.recv(64)
            acked = int(answer or b"0")
        except (TimeoutError, OSError, ValueError):
            acked = -1
    elapsed = time.monotonic() - started
    print(json.dumps({"sent": sent, "acked": acked, "seconds": elapsed}))


def main(argv: list[str]) -> None:
    command, host, port = argv[0], argv[1], int(argv[2])
    if command == "serve":
        serve(host, port)
    elif command == "fetch":
        fetch(host, port, int(argv[3]), float(argv[4]))
    elif command == "push":
        push(host, port, int(argv[3]), float(argv[4]))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])
