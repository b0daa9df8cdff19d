"""A small nf_tables netlink client: one batch (one kernel transaction) of object and map
element changes, and dumps of a table's objects and map elements.

Why not `nft`: every `nft` invocation first rebuilds its cache from the kernel. With 10,000
sessions (30,000 objects, 60,000 map elements) adding one map element costs ~0.1 s of CPU and
listing the counters ~0.5 s, whatever the size of the change. Talking netlink directly costs
what the change costs. `nft -f` still loads the table's skeleton (chains and rules), which
only changes at start and on a resync.

Only what the agent needs is encoded: named quota and counter objects (create, update in
place, delete) and elements of `ADDRESS : OBJECT` maps (add, delete).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as errno_names
import os
import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from kswifi.agent.errors import DriverError

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NFPROTO_INET = 1

NFT_MSG_NEWSETELEM = 12
NFT_MSG_GETSETELEM = 13
NFT_MSG_DELSETELEM = 14
NFT_MSG_NEWOBJ = 18
NFT_MSG_GETOBJ = 19
NFT_MSG_DELOBJ = 20

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_CREATE = 0x400
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

NFTA_OBJ_TABLE, NFTA_OBJ_NAME, NFTA_OBJ_TYPE, NFTA_OBJ_DATA = 1, 2, 3, 4
NFTA_OBJ_HANDLE = 6
NFT_OBJECT_COUNTER, NFT_OBJECT_QUOTA = 1, 2
NFTA_COUNTER_BYTES = 1
NFTA_QUOTA_BYTES, NFTA_QUOTA_FLAGS, NFTA_QUOTA_CONSUMED = 1, 2, 4
NFT_QUOTA_F_INV = 1
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_OBJREF = 1, 9
NFTA_DATA_VALUE = 1

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
CLONE_NEWNET = 0x40000000
BUFFER_BYTES = 64 << 20

_HDR = struct.Struct("=IHHII")
_NFGEN = struct.Struct("=BBH")
_ATTR = struct.Struct("=HH")
_BE32 = struct.Struct(">I")
_BE64 = struct.Struct(">Q")


class NetlinkError(DriverError):
    """The kernel refused a request; `errno` and the index of the failing message."""

    def __init__(self, message: str, errno: int, index: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno
        self.index = index


# -- encoding ---------------------------------------------------------------------------------


_PADDING = (b"", b"\0\0\0", b"\0\0", b"\0")


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return _ATTR.pack(size, kind) + payload + _PADDING[size & 3]


def _string(kind: int, value: str) -> bytes:
    return _attr(kind, value.encode() + b"\0")


def _nested(kind: int, *children: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(children))


@dataclass(frozen=True)
class Message:
    """One nf_tables request: message type, extra flags and attributes (already encoded)."""

    kind: int
    flags: int
    body: bytes
    text: str
    """The same change in nft syntax (logs and tests)."""

    def __str__(self) -> str:
        return self.text


def new_quota(table: str, name: str, quota_bytes: int, used_bytes: int | None) -> Message:
    """Create a `quota over N bytes` object, or change an existing one's limit in place (the
    kernel keeps its consumed bytes when `used_bytes` is None: an update sends none)."""
    if used_bytes is not None:
        used_bytes = min(used_bytes, quota_bytes)  # the kernel refuses consumed > quota
    data = [_attr(NFTA_QUOTA_BYTES, _BE64.pack(quota_bytes))]
    data.append(_attr(NFTA_QUOTA_FLAGS, _BE32.pack(NFT_QUOTA_F_INV)))
    if used_bytes is not None:
        data.append(_attr(NFTA_QUOTA_CONSUMED, _BE64.pack(used_bytes)))
    body = (
        _string(NFTA_OBJ_TABLE, table)
        + _string(NFTA_OBJ_NAME, name)
        + _attr(NFTA_OBJ_TYPE, _BE32.pack(NFT_OBJECT_QUOTA))
        + _nested(NFTA_OBJ_DATA, *data)
    )
    used = f" used {used_bytes} bytes" if used_bytes is not None else ""
    text = f"add quota inet {table} {name} {{ over {quota_bytes} bytes{used} }}"
    return Message(NFT_MSG_NEWOBJ, NLM_F_CREATE, body, text)


def new_counter(table: str, name: str) -> Message:
    body = (
        _string(NFTA_OBJ_TABLE, table)
        + _string(NFTA_OBJ_NAME, name)
        + _attr(NFTA_OBJ_TYPE, _BE32.pack(NFT_OBJECT_COUNTER))
        + _nested(NFTA_OBJ_DATA, _attr(NFTA_COUNTER_BYTES, _BE64.pack(0)))
    )
    return Message(NFT_MSG_NEWOBJ, NLM_F_CREATE, body, f"add counter inet {table} {name}")


def delete_object(table: str, name: str, quota: bool) -> Message:
    kind = NFT_OBJECT_QUOTA if quota else NFT_OBJECT_COUNTER
    body = (
        _string(NFTA_OBJ_TABLE, table)
        + _string(NFTA_OBJ_NAME, name)
        + _attr(NFTA_OBJ_TYPE, _BE32.pack(kind))
    )
    noun = "quota" if quota else "counter"
    return Message(NFT_MSG_DELOBJ, 0, body, f"delete {noun} inet {table} {name}")


def _element_list(table: str, set_name: str, elements: Sequence[bytes]) -> bytes:
    return (
        _string(NFTA_SET_ELEM_LIST_TABLE, table)
        + _string(NFTA_SET_ELEM_LIST_SET, set_name)
        + _nested(NFTA_SET_ELEM_LIST_ELEMENTS, *elements)
    )


ELEMENTS_PER_MESSAGE = 1000
"""Elements per NEWSETELEM/DELSETELEM message: their list is one attribute (at most 64 KB)."""


def add_elements(
    table: str, set_name: str, elements: Sequence[tuple[bytes, str, str]]
) -> list[Message]:
    """Add `(key, object name, key text)` elements, as few messages as fit."""
    messages = []
    for at in range(0, len(elements), ELEMENTS_PER_MESSAGE):
        chunk = elements[at : at + ELEMENTS_PER_MESSAGE]
        encoded = [
            _nested(
                NFTA_LIST_ELEM,
                _nested(NFTA_SET_ELEM_KEY, _attr(NFTA_DATA_VALUE, key)),
                _string(NFTA_SET_ELEM_OBJREF, objref),
            )
            for key, objref, _ in chunk
        ]
        listed = ", ".join(f'{text} : "{objref}"' for _, objref, text in chunk)
        text = f"add element inet {table} {set_name} {{ {listed} }}"
        body = _element_list(table, set_name, encoded)
        messages.append(Message(NFT_MSG_NEWSETELEM, NLM_F_CREATE, body, text))
    return messages


def delete_elements(
    table: str, set_name: str, elements: Sequence[tuple[bytes, str]]
) -> list[Message]:
    """Delete `(key, key text)` elements (each must exist, or the batch fails)."""
    messages = []
    for at in range(0, len(elements), ELEMENTS_PER_MESSAGE):
        chunk = elements[at : at + ELEMENTS_PER_MESSAGE]
        encoded = [
            _nested(NFTA_LIST_ELEM, _nested(NFTA_SET_ELEM_KEY, _attr(NFTA_DATA_VALUE, key)))
            for key, _ in chunk
        ]
        text = f"delete element inet {table} {set_name} {{ {', '.join(t for _, t in chunk)} }}"
        messages.append(
            Message(NFT_MSG_DELSETELEM, 0, _element_list(table, set_name, encoded), text)
        )
    return messages


# -- decoding ---------------------------------------------------------------------------------


def _attrs(data: bytes | memoryview, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of the attributes in data[start:end]."""
    unpack = _ATTR.unpack_from
    while start + 4 <= end:
        size, kind = unpack(data, start)
        if size < 4:
            return
        yield kind & NLA_TYPE_MASK, start + 4, start + size
        start += (size + 3) & ~3


def _cstr(data: bytes, start: int, end: int) -> str:
    return data[start:end].rstrip(b"\0").decode()


@dataclass(frozen=True)
class ObjectEntry:
    """A quota (`bytes` = limit, `used` = consumed) or counter (`bytes` counted) object."""

    name: str
    quota: bool
    handle: int
    bytes: int
    used: int = 0


def parse_objects(data: bytes, start: int, end: int) -> ObjectEntry | None:
    """One GETOBJ answer (a hot loop at 30,000 objects per second: no generators)."""
    unpack_attr = _ATTR.unpack_from
    name = ""
    kind = handle = value = used = 0
    while start + 4 <= end:
        size, attr = unpack_attr(data, start)
        if size < 4:
            break
        attr &= NLA_TYPE_MASK
        if attr == NFTA_OBJ_NAME:
            name = data[start + 4 : start + size - 1].decode()
        elif attr == NFTA_OBJ_TYPE:
            kind = _BE32.unpack_from(data, start + 4)[0]
        elif attr == NFTA_OBJ_HANDLE:
            handle = _BE64.unpack_from(data, start + 4)[0]
        elif attr == NFTA_OBJ_DATA:
            inner, stop = start + 4, start + size
            while inner + 4 <= stop:
                inner_size, inner_attr = unpack_attr(data, inner)
                if inner_size < 4:
                    break
                inner_attr &= NLA_TYPE_MASK
                if inner_attr == 1:  # NFTA_COUNTER_BYTES / NFTA_QUOTA_BYTES
                    value = _BE64.unpack_from(data, inner + 4)[0]
                elif inner_attr == NFTA_QUOTA_CONSUMED:
                    used = _BE64.unpack_from(data, inner + 4)[0]
                inner += (inner_size + 3) & ~3
        start += (size + 3) & ~3
    if kind not in (NFT_OBJECT_COUNTER, NFT_OBJECT_QUOTA):
        return None
    return ObjectEntry(name, kind == NFT_OBJECT_QUOTA, handle, value, used)


def parse_elements(data: bytes, start: int, end: int) -> list[tuple[bytes, str]]:
    """(key bytes, object name) of each element of a GETSETELEM answer."""
    found: list[tuple[bytes, str]] = []
    for attr, a, b in _attrs(data, start, end):
        if attr != NFTA_SET_ELEM_LIST_ELEMENTS:
            continue
        for _, c, d in _attrs(data, a, b):
            key = b""
            objref = ""
            for field, e, f in _attrs(data, c, d):
                if field == NFTA_SET_ELEM_KEY:
                    for value, g, h in _attrs(data, e, f):
                        if value == NFTA_DATA_VALUE:
                            key = bytes(data[g:h])
                elif field == NFTA_SET_ELEM_OBJREF:
                    objref = _cstr(data, e, f)
            if key:
                found.append((key, objref))
    return found


# -- the socket -------------------------------------------------------------------------------

_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise DriverError(f"setns: {os.strerror(code)}")


def open_socket(netns: str | None = None) -> socket.socket:
    """A NETLINK_NETFILTER socket, created inside network namespace `netns` if given (the
    socket stays in that namespace; this thread returns to its own at once)."""
    if netns is None:
        return _configure(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER))
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
    except OSError as exc:
        os.close(own)
        raise DriverError(f"network namespace {netns}: {exc}") from exc
    try:
        _setns(target)
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)
    return _configure(sock)


def _configure(sock: socket.socket) -> socket.socket:
    sock.bind((0, 0))
    for option, fallback in ((33, socket.SO_SNDBUF), (32, socket.SO_RCVBUF)):  # *BUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, BUFFER_BYTES)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, fallback, BUFFER_BYTES)
    with contextlib.suppress(OSError):
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)  # acks without the request echoed
    with contextlib.suppress(OSError):
        sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
    return sock


@dataclass
class NfTables:
    """Batches and dumps over one NETLINK_NETFILTER socket (opened lazily, reopened on error)."""

    netns: str | None = None
    timeout_s: float = 20.0
    _sock: socket.socket | None = None
    _seq: int = 0

    def _socket(self) -> socket.socket:
        if self._sock is None:
            self._sock = open_socket(self.netns)
            self._sock.settimeout(self.timeout_s)
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0x7FFFFFFF or 1
        return self._seq

    @staticmethod
    def _header(kind: int, flags: int, seq: int, body_len: int, family: int, res: int) -> bytes:
        size = _HDR.size + _NFGEN.size + body_len
        return _HDR.pack(size, kind, flags, seq, 0) + _NFGEN.pack(family, 0, res)

    def batch(self, messages: Sequence[Message]) -> None:
        """Apply all messages in one transaction: all of them or (on an error) none."""
        if not messages:
            return
        chunks: list[bytes] = []
        first = self._next_seq()
        res = socket.htons(NFNL_SUBSYS_NFTABLES)
        chunks.append(self._header(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, first, 0, 0, res))
        seqs: dict[int, int] = {}
        for index, message in enumerate(messages):
            seq = self._next_seq()
            seqs[seq] = index
            kind = (NFNL_SUBSYS_NFTABLES << 8) | message.kind
            flags = NLM_F_REQUEST | NLM_F_ACK | message.flags
            chunks.append(self._header(kind, flags, seq, len(message.body), NFPROTO_INET, 0))
            chunks.append(message.body)
        last = self._next_seq()
        chunks.append(self._header(NFNL_MSG_BATCH_END, NLM_F_REQUEST, last, 0, 0, res))
        sock = self._socket()
        try:
            sock.sendall(b"".join(chunks))
            self._collect_acks(sock, seqs, messages)
        except OSError as exc:
            self.close()
            raise DriverError(f"nf_tables batch of {len(messages)} messages: {exc}") from exc

    def _collect_acks(
        self, sock: socket.socket, seqs: dict[int, int], messages: Sequence[Message]
    ) -> None:
        pending = set(seqs)
        failure: NetlinkError | None = None
        while pending:
            if failure is not None:
                sock.settimeout(1.0)  # an aborted batch may not ack every message
            try:
                data = sock.recv(BUFFER_BYTES)
            except TimeoutError:
                if failure is None:
                    raise
                break
            offset = 0
            while offset + _HDR.size <= len(data):
                size, kind, _, seq, _ = _HDR.unpack_from(data, offset)
                if size < _HDR.size:
                    break
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, offset + _HDR.size)[0]
                    if seq in pending:
                        pending.discard(seq)
                        if code and failure is None:
                            index = seqs[seq]
                            name = errno_names.errorcode.get(code, str(code))
                            failure = NetlinkError(
                                f"nf_tables refused `{messages[index]}`: {name}"
                                f" ({os.strerror(code)}); the batch was not applied",
                                code,
                                index,
                            )
                offset += (size + 3) & ~3
            if failure is not None and not pending:
                break
        if failure is not None:
            self.close()  # drop anything still queued on this socket
            raise failure

    def dump(self, kind: int, body: bytes) -> Iterator[tuple[bytes, int, int]]:
        """(buffer, start, end) of each answer's attributes for a dump request."""
        seq = self._next_seq()
        request = self._header(
            (NFNL_SUBSYS_NFTABLES << 8) | kind,
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            len(body),
            NFPROTO_INET,
            0,
        )
        sock = self._socket()
        try:
            sock.sendall(request + body)
            while True:
                data = sock.recv(BUFFER_BYTES)
                offset = 0
                while offset + _HDR.size <= len(data):
                    size, msg_kind, _, msg_seq, _ = _HDR.unpack_from(data, offset)
                    if size < _HDR.size:
                        raise DriverError("nf_tables dump: malformed answer")
                    if msg_seq == seq:
                        if msg_kind == NLMSG_DONE:
                            return
                        if msg_kind == NLMSG_ERROR:
                            code = -struct.unpack_from("=i", data, offset + _HDR.size)[0]
                            if code:
                                raise NetlinkError(f"nf_tables dump: {os.strerror(code)}", code)
                            return
                        yield data, offset + _HDR.size + _NFGEN.size, offset + size
                    offset += (size + 3) & ~3
        except OSError as exc:
            self.close()
            raise DriverError(f"nf_tables dump: {exc}") from exc

    def objects(self, table: str) -> list[ObjectEntry]:
        """Every quota and counter object of `inet table` (ENOENT: no such table)."""
        body = _string(NFTA_OBJ_TABLE, table)
        found = []
        for data, start, end in self.dump(NFT_MSG_GETOBJ, body):
            entry = parse_objects(data, start, end)
            if entry is not None:
                found.append(entry)
        return found

    def elements(self, table: str, set_name: str) -> list[tuple[bytes, str]]:
        body = _string(NFTA_SET_ELEM_LIST_TABLE, table) + _string(NFTA_SET_ELEM_LIST_SET, set_name)
        found: list[tuple[bytes, str]] = []
        for data, start, end in self.dump(NFT_MSG_GETSETELEM, body):
            found.extend(parse_elements(data, start, end))
        return found
