"""HTTP server for the "Internet" namespace and a phone-side client (run as scripts).

server HOST PORT      : GET /bytes/N answers N bytes; POST /upload answers the body's length.
get URL IDLE          : download, stop after IDLE seconds without data (or at a reset); prints
                        JSON with the bytes received and the wall-clock time of the last byte.
"""

from __future__ import annotations

import json
import socket
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 64 * 1024


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet
        return

    def do_GET(self) -> None:
        parts = self.path.strip("/").split("/")
        if len(parts) != 2 or parts[0] != "bytes" or not parts[1].isdigit():
            self.send_error(404)
            return
        remaining = int(parts[1])
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(remaining))
        self.end_headers()
        block = b"k" * CHUNK
        try:
            while remaining > 0:
                size = min(CHUNK, remaining)
                self.wfile.write(block[:size])
                remaining -= size
        except OSError:
            return

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        received = 0
        while received < length:
            part = self.rfile.read(min(CHUNK, length - received))
            if not part:
                break
            received += len(part)
        body = str(received).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(host: str, port: int) -> None:
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


def get(url: str, idle: float) -> None:
    """A raw HTTP/1.1 GET so a stalled transfer returns what arrived (urllib would raise)."""
    parsed = urllib.parse.urlsplit(url)
    started = time.time()
    received = 0
    last_byte_at = None
    header = b""
    with socket.create_connection((parsed.hostname, parsed.port or 80), timeout=15) as s:
        s.settimeout(idle)
        request = (
            f"GET {parsed.path} HTTP/1.1\r\nHost: {parsed.hostname}\r\nConnection: close\r\n\r\n"
        )
        s.sendall(request.encode())
        while True:
            try:
                part = s.recv(CHUNK)
            except TimeoutError:
                break
            except ConnectionResetError:  # refused mid-transfer (a phone sent to the garden)
                break
            if not part:
                break
            last_byte_at = time.time()
            if b"\r\n\r\n" not in header:
                header += part
                if b"\r\n\r\n" in header:
                    _head, _, body = header.partition(b"\r\n\r\n")
                    received += len(body)
                continue
            received += len(part)
    print(json.dumps({"received": received, "started_at": started, "last_byte_at": last_byte_at}))


def main(argv: list[str]) -> None:
    if argv[0] == "server":
        serve(argv[1], int(argv[2]))
    elif argv[0] == "get":
        get(argv[1], float(argv[2]))
    else:
        raise SystemExit(f"unknown command {argv[0]}")


if __name__ == "__main__":
    main(sys.argv[1:])
