"""A lean HTTP/2 cleartext (prior knowledge) load client for the benchmarks.

With the general-purpose `h2` library the benchmark's client, not the server, was the limit
once the server was fast (PERFORMANCE.md). Here request frames are built from bytes templates, the
client asks the server for no HPACK dynamic table (SETTINGS_HEADER_TABLE_SIZE = 0) so each
response header block decodes on its own, and `:status` 200/204 (static-table entries) is read
from one byte. Other header blocks are decoded in full with `hpack`.

Closed loop: each virtual user has one request outstanding and sends its next one from the
completion callback; a connection's responses are handled per read and the requests they
release are written with one call.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from typing import Any

import hpack

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST, _SETTINGS, _PING, _GOAWAY, _WINDOW, _CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
_END_STREAM, _END_HEADERS, _ACK, _PADDED, _PRIORITY = 0x1, 0x4, 0x1, 0x8, 0x20
_FRAME = struct.Struct(">HBBBI")  # 24-bit length as 16+8 bits, type, flags, stream id
_BIG_WINDOW = 2**31 - 1
_STATIC_STATUS = {0x88: 200, 0x89: 204, 0x8A: 206, 0x8B: 304, 0x8C: 400, 0x8D: 404, 0x8E: 500}

Done = Callable[[int, dict[str, str] | None, bytes], None]


def _int(value: int, prefix_bits: int, first: int) -> bytes:
    """An HPACK integer with `first` holding the representation's flag bits."""
    top = (1 << prefix_bits) - 1
    if value < top:
        return bytes([first | value])
    out = [first | top]
    value -= top
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def _literal(name_index: int, value: bytes) -> bytes:
    # "Literal Header Field without Indexing -- Indexed Name", no Huffman coding.
    return _int(name_index, 4, 0x00) + _int(len(value), 7, 0x00) + value


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    n = len(payload)
    return _FRAME.pack(n >> 8, n & 0xFF, kind, flags, stream_id) + payload


def _stream_header(kind: int, flags: int, n: int) -> bytes:
    # Frame header without the stream id (4 bytes, appended per request).
    return struct.pack(">HBBB", n >> 8, n & 0xFF, kind, flags)


class H2LoadConnection(asyncio.Protocol):
    def __init__(self, authority: str) -> None:
        self.authority = authority.encode()
        self.transport: asyncio.Transport | None = None
        self.next_stream = 1
        self.pending: dict[int, tuple[Done, list[Any]]] = {}
        self.buffer = bytearray()
        self.out: list[bytes] = []
        self.in_callbacks = False
        self.send_window = 65_535  # the server's connection window, until it says more
        self.blocked: list[tuple[bytes, bytes, Done]] = []
        self.received = 0
        self.decoder = hpack.Decoder()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.error: str | None = None
        self._ct = _literal(31, b"application/json")
        self._fixed = b"\x83\x86" + _literal(1, self.authority)  # POST, http, :authority

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        # SETTINGS: HEADER_TABLE_SIZE 0, ENABLE_PUSH 0, INITIAL_WINDOW_SIZE max.
        settings = struct.pack(">HIHIHI", 0x1, 0, 0x2, 0, 0x4, _BIG_WINDOW)
        window = struct.pack(">I", _BIG_WINDOW - 65_535)
        transport.write(
            _PREFACE + _frame(_SETTINGS, 0, 0, settings) + _frame(_WINDOW, 0, 0, window)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.error = self.error or f"connection lost: {exc}"
        for done, _ in list(self.pending.values()):
            done(0, None, b"")
        self.pending.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        self.in_callbacks = True
        pos, end = 0, len(buf)
        while end - pos >= 9:
            hi, lo, kind, flags, sid = _FRAME.unpack_from(buf, pos)
            n = (hi << 8) | lo
            if end - pos - 9 < n:
                break
            payload = bytes(buf[pos + 9 : pos + 9 + n])
            pos += 9 + n
            self._frame_in(kind, flags, sid & 0x7FFFFFFF, payload)
        del buf[:pos]
        self.in_callbacks = False
        self._flush()

    # ------------------------------------------------------------------ frames in

    def _frame_in(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if kind == _HEADERS:
            entry = self.pending.get(sid)
            if entry is None:
                return
            block = _header_block(flags, payload)
            state = entry[1]
            if state[0] == 0:
                state[0] = self._status(block, state)
            if flags & _END_STREAM:
                self._complete(sid)
        elif kind == _DATA:
            self.received += len(payload)
            entry = self.pending.get(sid)
            if entry is not None:
                entry[1][2].append(payload)
                if flags & _END_STREAM:
                    self._complete(sid)
            if self.received > 2**29:  # give the connection's window back now and then
                self.out.append(_frame(_WINDOW, 0, 0, struct.pack(">I", self.received)))
                self.received = 0
        elif kind == _WINDOW:
            if sid == 0:
                self.send_window += struct.unpack(">I", payload)[0] & 0x7FFFFFFF
                self._unblock()
        elif kind == _SETTINGS:
            if not flags & _ACK:
                self.out.append(_frame(_SETTINGS, _ACK, 0, b""))
        elif kind == _PING:
            if not flags & _ACK:
                self.out.append(_frame(_PING, _ACK, 0, payload))
        elif kind == _RST:
            entry = self.pending.pop(sid, None)
            if entry is not None:
                entry[0](0, None, b"")
        elif kind == _GOAWAY:
            self.error = f"GOAWAY {payload[4:8].hex()} {payload[8:]!r}"
        elif kind == _CONTINUATION:
            self.error = "CONTINUATION frames are not supported by this client"

    def _status(self, block: bytes, state: list[Any]) -> int:
        i = 0
        while i < len(block) and 0x20 <= block[i] < 0x40:  # dynamic table size update (to 0)
            i += 1
        status = _STATIC_STATUS.get(block[i]) if i < len(block) else None
        if status is not None and not state[3]:
            return status
        headers = {str(k): str(v) for k, v in self.decoder.decode(block)}
        state[1] = headers
        return int(headers.get(":status", "0"))

    def _complete(self, sid: int) -> None:
        done, state = self.pending.pop(sid)
        done(state[0], state[1], b"".join(state[2]))

    # ------------------------------------------------------------------ requests out

    def post(self, path: bytes, body: bytes, done: Done, *, want_headers: bool = False) -> None:
        if len(body) > self.send_window or self.blocked:
            self.blocked.append((path, body, done))
            return
        self._send(path, body, done, want_headers)

    def _send(self, path: bytes, body: bytes, done: Done, want_headers: bool = False) -> None:
        sid = self.next_stream
        self.next_stream += 2
        self.send_window -= len(body)
        # Pseudo-headers first (RFC 9113 8.3), then content-type and content-length.
        block = self._fixed + _literal(4, path) + self._ct + _literal(28, str(len(body)).encode())
        sid_b = struct.pack(">I", sid)
        self.out.append(
            _stream_header(_HEADERS, _END_HEADERS, len(block))
            + sid_b
            + block
            + _stream_header(_DATA, _END_STREAM, len(body))
            + sid_b
            + body
        )
        # state: status, headers, body chunks, decode headers in full
        self.pending[sid] = (done, [0, None, [], want_headers])
        if not self.in_callbacks:
            self._flush()

    def _unblock(self) -> None:
        while self.blocked and len(self.blocked[0][1]) <= self.send_window:
            path, body, done = self.blocked.pop(0)
            self._send(path, body, done)

    def _flush(self) -> None:
        if self.out and self.transport is not None:
            self.transport.write(b"".join(self.out))
            self.out.clear()

    async def request(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """One request, awaited (setup traffic; the load loop uses `post` with a callback)."""
        fut: asyncio.Future[tuple[int, dict[str, str], bytes]] = (
            asyncio.get_running_loop().create_future()
        )

        def done(status: int, headers: dict[str, str] | None, data: bytes) -> None:
            if not fut.done():
                fut.set_result((status, headers or {}, data))

        self.post(path.encode(), body, done, want_headers=True)
        return await fut

    def close(self) -> None:
        if self.transport is not None:
            self.transport.write(_frame(_GOAWAY, 0, 0, struct.pack(">II", 0, 0)))
            self.transport.close()


def _header_block(flags: int, payload: bytes) -> bytes:
    start, end = 0, len(payload)
    if flags & _PADDED:
        end -= payload[0]
        start = 1
    if flags & _PRIORITY:
        start += 5
    return payload[start:end]


async def connect(host: str, port: int) -> H2LoadConnection:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: H2LoadConnection(f"{host}:{port}"), host, port)
    return conn


async def closed_loop(
    conns: list[H2LoadConnection],
    users: int,
    seconds: float,
    warmup_s: float,
    next_request: Callable[[int], tuple[bytes, bytes] | None],
    ok_status: int,
    on_answer: Callable[[int, int, dict[str, str] | None], None] | None = None,
) -> dict[str, Any]:
    """`users` virtual users, each with one request in flight, for warmup_s + seconds.

    `next_request(user)` gives the path and body of that user's next request, or None when it
    has no more (that user stops). `on_answer(user, status, headers)` sees every answer.
    Requests sent after the warm-up are measured; their latency is from handing the frames to
    the transport to the end of the response.
    """
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    warm_until = start + warmup_s
    deadline = warm_until + seconds
    finished = loop.create_future()
    running = users
    clock = time.perf_counter

    def launch(u: int) -> None:
        nonlocal running
        now = clock()
        if now >= deadline:
            running -= 1
            if running == 0 and not finished.done():
                finished.set_result(None)
            return
        request = next_request(u)
        if request is None:
            running -= 1
            if running == 0 and not finished.done():
                finished.set_result(None)
            return
        path, body = request
        measured = now >= warm_until

        def done(status: int, headers: dict[str, str] | None, _body: bytes) -> None:
            nonlocal errors, running
            if on_answer is not None:
                on_answer(u, status, headers)
            if measured:
                latencies.append(clock() - now)
                if status != ok_status:
                    errors += 1
            if status == 0:  # reset or connection lost: this user stops
                errors += not measured
                running -= 1
                if running == 0 and not finished.done():
                    finished.set_result(None)
                return
            launch(u)

        conns[u % len(conns)].post(path, body, done)

    for u in range(users):
        launch(u)
    await finished
    elapsed = clock() - warm_until
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "per_s": n / elapsed,
        "p50_ms": 1000 * latencies[n // 2] if n else 0.0,
        "p99_ms": 1000 * latencies[min(n - 1, int(n * 0.99))] if n else 0.0,
        "mean_ms": 1000 * sum(latencies) / n if n else 0.0,
        "errors": errors,
        "conn_errors": [c.error for c in conns if c.error],
    }
