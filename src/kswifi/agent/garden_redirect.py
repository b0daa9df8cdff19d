"""The page a walled-garden phone's plain-HTTP requests land on: a redirect to the shop.

The firewall sends every plain-HTTP connection of a peer without a session (other than to the
app itself) to this small server on the tunnel's own addresses (nftables `redirect`); it
answers any request with `302 Found` to the buy page, so a browser opened on a phone whose
data ran out shows where to buy more instead of timing out."""

from __future__ import annotations

import asyncio
import contextlib
import html
import ipaddress
import socket

from kswifi.logs import get_logger

log = get_logger("kswifi.agent")

_IP_FREEBIND = 15  # linux/in.h: bind before the address is on the interface
_IPV6_FREEBIND = 78  # linux/in6.h
_HEAD_LIMIT = 8192
_READ_SECONDS = 5.0


def response(url: str) -> bytes:
    body = (
        "<!doctype html><title>KSWiFi Connect</title>"
        f'<p>Your data session has ended. <a href="{html.escape(url)}">Buy more data</a>.</p>\n'
    ).encode()
    head = (
        "HTTP/1.1 302 Found\r\n"
        f"Location: {url}\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head + body


class GardenRedirect:
    """The redirect server, (re)bound when the tunnel's addresses, the port or the URL
    change."""

    def __init__(self) -> None:
        self._servers: list[asyncio.Server] = []
        self._key: tuple[tuple[str, ...], int, str] | None = None
        self.url = ""

    async def serve(self, addresses: list[str], port: int, url: str) -> None:
        """Listen on `addresses` (interface CIDRs or addresses) at `port`, redirecting to
        `url`; a call with the same arguments changes nothing."""
        hosts = tuple(sorted(str(ipaddress.ip_interface(a).ip) for a in addresses))
        key = (hosts, port, url)
        if key == self._key:
            return
        self.url = url
        if self._key is not None and self._key[:2] == key[:2]:
            self._key = key  # only the URL changed: the handler reads it per request
            return
        await self.close()
        for host in hosts:
            try:
                self._servers.append(
                    await asyncio.start_server(
                        self._answer, sock=_listening_socket(host, port), limit=_HEAD_LIMIT
                    )
                )
            except OSError as exc:
                log.error("garden_redirect_bind_failed", host=host, port=port, error=str(exc))
        self._key = key
        log.info("garden_redirect_listening", hosts=list(hosts), port=port)

    async def close(self) -> None:
        servers, self._servers, self._key = self._servers, [], None
        for server in servers:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_SECONDS)
            writer.write(response(self.url))
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_FREEBIND, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, _IP_FREEBIND, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
