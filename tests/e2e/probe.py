"""Probes an attacker would run, as scripts inside the test's namespaces (JSON on stdout).

tcp HOST PORT              : connect; outcome connected / refused / unreachable / timeout
udp HOST PORT              : one datagram, wait for a reply or an ICMP error
ping HOST COUNT            : ICMP echo (raw socket); how many replies came back
burst HOST COUNT           : COUNT echo requests back to back, then replies for one second
sink HOST PORT FILE        : TCP and UDP listener; appends one line to FILE per connection or
                             datagram it gets (what reached it), prints "ready"
echo HOST PORT             : TCP echo server (keeps connections open), prints "ready"
hold HOST PORT COUNT       : open COUNT connections to an echo server, then check the first
                             still echoes; prints how many opened and the first failure
blast HOST PORT SECONDS    : send UDP datagrams at HOST:PORT as fast as possible (unsolicited)
flood-server HOST PORT     : UDP; a datagram "SECONDS MBPS SIZE" is answered with SIZE-byte
                             datagrams at MBPS for SECONDS, back to its sender
flood HOST PORT SECONDS MBPS SIZE : ask a flood-server for a flood; count what arrives
http HOST PORT             : GET / (Host: HOST); the status code and Location of the answer
udp-echo HOST PORT         : UDP echo server, prints "ready"
ticks HOST PORT SECONDS    : a datagram to a udp-echo server every 50 ms for SECONDS; the
                             longest time without an echo (how long the path was down)
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import sys
import threading
import time

OUTCOMES = {
    errno.ECONNREFUSED: "refused",
    errno.EHOSTUNREACH: "unreachable",
    errno.ENETUNREACH: "unreachable",
    errno.EACCES: "prohibited",
    errno.EPERM: "prohibited",
}


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def report(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def tcp(host: str, port: int, timeout: float = 5.0) -> None:
    started = time.monotonic()
    sock = socket.socket(family_of(host), socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
        outcome = "connected"
    except TimeoutError:
        outcome = "timeout"
    except OSError as exc:
        outcome = OUTCOMES.get(exc.errno or 0, f"errno {exc.errno}")
    finally:
        sock.close()
    report(outcome=outcome, seconds=round(time.monotonic() - started, 3))


def udp(host: str, port: int, timeout: float = 3.0) -> None:
    started = time.monotonic()
    sock = socket.socket(family_of(host), socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    sock.connect((host, port))
    try:
        sock.send(b"probe")
        sock.recv(2048)
        outcome = "reply"
    except TimeoutError:
        outcome = "timeout"
    except OSError as exc:
        outcome = OUTCOMES.get(exc.errno or 0, f"errno {exc.errno}")
    finally:
        sock.close()
    report(outcome=outcome, seconds=round(time.monotonic() - started, 3))


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def ping(host: str, count: int) -> None:
    v6 = ":" in host
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    sock = socket.socket(family_of(host), socket.SOCK_RAW, proto)
    sock.settimeout(1.0)
    ident = os.getpid() & 0xFFFF
    replies = refused = 0
    for sequence in range(count):
        sock.sendto(echo_request(v6, ident, sequence), (host, 0))
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                data = sock.recv(2048)
            except TimeoutError:
                break
            icmp = data if v6 else data[(data[0] & 0x0F) * 4 :]
            reply_kind = 129 if v6 else 0
            if icmp[0] == reply_kind and struct.unpack("!HH", icmp[4:8]) == (ident, sequence):
                replies += 1
                break
            if icmp[0] == (1 if v6 else 3):  # destination unreachable: refused
                refused += 1
                break
    report(sent=count, replies=replies, refused=refused)


def echo_request(v6: bool, ident: int, sequence: int) -> bytes:
    kind = 128 if v6 else 8
    payload = b"kswifi-probe"
    packet = struct.pack("!BBHHH", kind, 0, 0, ident, sequence) + payload
    if v6:  # the kernel computes ICMPv6 checksums itself
        return packet
    return struct.pack("!BBHHH", kind, 0, checksum(packet), ident, sequence) + payload


def burst(host: str, count: int) -> None:
    v6 = ":" in host
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    sock = socket.socket(family_of(host), socket.SOCK_RAW, proto)
    ident = os.getpid() & 0xFFFF
    started = time.monotonic()
    for sequence in range(count):
        sock.sendto(echo_request(v6, ident, sequence), (host, 0))
    sent_in = time.monotonic() - started
    replies: set[int] = set()
    sock.settimeout(0.1)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            data = sock.recv(2048)
        except TimeoutError:
            continue
        icmp = data if v6 else data[(data[0] & 0x0F) * 4 :]
        if icmp[0] == (129 if v6 else 0) and struct.unpack("!H", icmp[4:6])[0] == ident:
            replies.add(struct.unpack("!H", icmp[6:8])[0])
    report(sent=count, replies=len(replies), seconds=round(sent_in, 3))


def sink(host: str, port: int, path: str) -> None:
    lock = threading.Lock()

    def note(kind: str) -> None:
        with lock, open(path, "a") as out:
            out.write(kind + "\n")

    family = family_of(host)
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(64)
    datagrams = socket.socket(family, socket.SOCK_DGRAM)
    datagrams.bind((host, port))

    def accept() -> None:
        while True:
            conn, _ = listener.accept()
            note("tcp")
            conn.close()

    def receive() -> None:
        while True:
            _, peer = datagrams.recvfrom(65535)
            note("udp")
            datagrams.sendto(b"pong", peer)

    threading.Thread(target=accept, daemon=True).start()
    threading.Thread(target=receive, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def echo(host: str, port: int) -> None:
    listener = socket.socket(family_of(host), socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(4096)

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def hold(host: str, port: int, count: int) -> None:
    opened: list[socket.socket] = []
    failure = None
    for _ in range(count):
        sock = socket.socket(family_of(host), socket.SOCK_STREAM)
        sock.settimeout(5.0)
        started = time.monotonic()
        try:
            sock.connect((host, port))
        except OSError as exc:
            outcome = "timeout" if isinstance(exc, TimeoutError) else OUTCOMES.get(exc.errno or 0)
            failure = {"outcome": outcome, "seconds": round(time.monotonic() - started, 3)}
            sock.close()
            break
        opened.append(sock)
    still = False
    if opened:
        opened[0].sendall(b"still there?")
        still = opened[0].recv(64) == b"still there?"
    report(opened=len(opened), failure=failure, first_still_works=still)
    for sock in opened:
        sock.close()


def blast(host: str, port: int, seconds: float) -> None:
    sock = socket.socket(family_of(host), socket.SOCK_DGRAM)
    payload = b"x" * 1000
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            sock.sendto(payload, (host, port))
            sent += 1
        except OSError:
            time.sleep(0.001)
        if sent % 200 == 0:
            time.sleep(0.01)
    report(sent=sent)


def flood_server(host: str, port: int) -> None:
    sock = socket.socket(family_of(host), socket.SOCK_DGRAM)
    sock.bind((host, port))
    print("ready", flush=True)
    while True:
        request, peer = sock.recvfrom(2048)
        seconds, mbps, size = request.decode().split()
        payload = b"f" * int(size)
        interval = int(size) * 8 / (float(mbps) * 1e6)
        started = time.monotonic()
        sent = 0
        while time.monotonic() - started < float(seconds):
            sock.sendto(payload, peer)
            sent += 1
            pause = started + sent * interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)


def flood(host: str, port: int, seconds: float, mbps: float, size: int) -> None:
    sock = socket.socket(family_of(host), socket.SOCK_DGRAM)
    sock.connect((host, port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    request = f"{seconds} {mbps} {size}".encode()
    sock.send(request)
    sock.settimeout(2.0)
    datagrams = payload = 0
    first = last = 0.0
    while True:
        try:
            data = sock.recv(65535)
        except TimeoutError:
            break
        last = time.monotonic()
        first = first or last
        datagrams += 1
        payload += len(data)
    report(datagrams=datagrams, payload=payload, request=len(request), seconds=last - first)


def http(host: str, port: int, timeout: float = 5.0) -> None:
    started = time.monotonic()
    sock = socket.socket(family_of(host), socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            data = sock.recv(4096)
            if not data:
                break
            head += data
    except TimeoutError:
        report(outcome="timeout", seconds=round(time.monotonic() - started, 3))
        return
    except OSError as exc:
        outcome = OUTCOMES.get(exc.errno or 0, f"errno {exc.errno}")
        report(outcome=outcome, seconds=round(time.monotonic() - started, 3))
        return
    finally:
        sock.close()
    lines = head.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines[1:])
    }
    report(
        outcome="answered",
        status=status,
        location=headers.get("location"),
        seconds=round(time.monotonic() - started, 3),
    )


def udp_echo(host: str, port: int) -> None:
    sock = socket.socket(family_of(host), socket.SOCK_DGRAM)
    sock.bind((host, port))
    print("ready", flush=True)
    while True:
        data, peer = sock.recvfrom(2048)
        sock.sendto(data, peer)


def ticks(host: str, port: int, seconds: float) -> None:
    sock = socket.socket(family_of(host), socket.SOCK_DGRAM)
    sock.connect((host, port))
    sock.settimeout(0.05)
    started = time.monotonic()
    last_echo = started
    longest = 0.0
    sent = echoed = 0
    while (now := time.monotonic()) - started < seconds:
        sock.send(struct.pack("!d", now))
        sent += 1
        deadline = now + 0.05
        while time.monotonic() < deadline:
            try:
                sock.recv(64)
            except TimeoutError:
                break
            except OSError:
                time.sleep(0.01)
                continue
            echoed += 1
            longest = max(longest, time.monotonic() - last_echo)
            last_echo = time.monotonic()
        time.sleep(max(0.0, deadline - time.monotonic()))
    longest = max(longest, time.monotonic() - last_echo)
    report(sent=sent, echoed=echoed, longest_silence=round(longest, 3))


def main(argv: list[str]) -> None:
    command, args = argv[0], argv[1:]
    if command == "tcp":
        tcp(args[0], int(args[1]))
    elif command == "udp":
        udp(args[0], int(args[1]))
    elif command == "ping":
        ping(args[0], int(args[1]))
    elif command == "burst":
        burst(args[0], int(args[1]))
    elif command == "sink":
        sink(args[0], int(args[1]), args[2])
    elif command == "echo":
        echo(args[0], int(args[1]))
    elif command == "hold":
        hold(args[0], int(args[1]), int(args[2]))
    elif command == "blast":
        blast(args[0], int(args[1]), float(args[2]))
    elif command == "flood-server":
        flood_server(args[0], int(args[1]))
    elif command == "flood":
        flood(args[0], int(args[1]), float(args[2]), float(args[3]), int(args[4]))
    elif command == "http":
        http(args[0], int(args[1]))
    elif command == "udp-echo":
        udp_echo(args[0], int(args[1]))
    elif command == "ticks":
        ticks(args[0], int(args[1]), float(args[2]))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])
