"""Fetching from the origin: the only code that talks to the source of a file.

Rules kept here:
- Only http and https URLs with a host are fetched; anything else is a `SourceError` of kind
  "url" before any connection is made.
- The caller's source headers (credentials included) go to the origin and nowhere else; this
  module never logs them. Headers the transfer itself controls (Range, Host, conditional
  headers, hop-by-hop ones) are dropped from them.
- A response's total length comes from Content-Range (206) or Content-Length (200); an origin
  that gives neither is refused (pieces need a length up front).
- Every network step has a timeout; every failure is one `SourceError` line whose `kind` tells
  the caller which exit code it maps to: url, network, status (with `status`), protocol.
- A body is read in place (`SourceResponse.read_body`): once aiohttp has parsed the header,
  the connection's transport is handed to a `BufferedProtocol` that receives straight into
  a few reused batch buffers, so the event loop moves each byte once (`recv_into`); through
  aiohttp's parser and stream reader it was received into a new bytes, copied by the parser
  and copied again into a batch (2.8 CPU s/GB on the supernode's event loop). A body aiohttp
  cannot hand over that way (chunked, no Content-Length, already complete) is copied into
  the same batches from aiohttp's stream. Either way at most `WAITING_MAX` full batches wait
  for the consumer before the socket stops being read, no byte arrives for `READ_TIMEOUT_S`
  (the consumer's own time not counted) fails the read, and a taken-over connection is
  closed with the response, never reused. A caller that gives `into` has a taken-over body
  moved by one worker thread (`dfnet.sockthread`: spliced into its file, no event-loop
  callback per `recv`, no thread round trip per batch), with the same timeout; the thread
  has ended when `read_body` returns, however it ends. A TLS body never is: the raw socket
  holds ciphertext, so it is received in place through the transport.
"""
from __future__ import annotations

import asyncio
import collections
import re
from dataclasses import dataclass
from typing import Awaitable, Callable

import aiohttp

from .logs import redact_url
from .sockthread import SocketThread, Stalled, Stopped
from .sourceurl import SourceError, check_url  # noqa: F401  (re-exported: the source's error and URL rule)

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0
_CONTROLLED = {"range", "host", "if-range", "if-none-match", "if-modified-since", "connection",
               "content-length", "transfer-encoding", "keep-alive", "upgrade", "te", "trailer",
               "proxy-connection", "accept-encoding"}
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
WAITING_MAX = 2
KEEP_FREE = 3           # batch buffers kept for reuse by one body read


def source_headers(headers: dict[str, str]) -> dict[str, str]:
    """The caller's headers minus those the transfer controls."""
    return {k: v for k, v in headers.items() if k.lower() not in _CONTROLLED}


@dataclass
class SourceResponse:
    status: int               # 200, 206 or 304
    length: int               # the whole file's length (0 for 304)
    start: int                # offset of the first byte of the body
    etag: str | None
    last_modified: str | None
    response: aiohttp.ClientResponse

    taken: bool = False       # the connection was taken from aiohttp (`read_body`)

    @property
    def content(self) -> aiohttp.StreamReader:
        return self.response.content

    def close(self) -> None:
        if self.taken:
            self.response.close()           # its protocol is ours now: the connection goes
        else:
            self.response.release()

    async def read_body(self, sink: Callable[[memoryview], Awaitable[None]], *, boundary: int, batch: int,
                        into=None) -> None:
        """Pass the body to `sink` in order, in batches of at most `batch` bytes that never
        cross a multiple of `boundary` (counted in the file's offsets, from `start`).

        `sink` must be done with a batch when it returns: its buffer is reused. Returns when
        the origin has sent the whole body or closed the connection (the caller compares
        what it got with what it needs); a stalled or broken read is a `SourceError`.
        With `into` (anything with `write_now(view)` and `take_now(receiver, n) -> taken`,
        like the seed's cutter), a body that can be taken over is moved by one worker thread
        instead (`dfnet.sockthread`): the bytes already received through `write_now`, the
        rest straight from the socket through `take_now`, where batches and boundaries are
        `into`'s business. A body that cannot be taken over still goes to `sink`."""
        body = _Body(self.start, boundary, batch)
        resp = self.response
        length = resp.content_length
        conn = resp.connection
        try:
            already = resp.content.read_nowait()
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise SourceError(f"origin download failed: {_reason(e)}") from None
        chunked = "chunked" in resp.headers.get("Transfer-Encoding", "").lower()
        if (conn is None or conn.protocol is None or conn.transport is None or chunked or length is None
                or resp.content.is_eof() or conn.transport.is_closing()):
            body.take(already)
            await body.drain(sink)
            async for chunk, _ in resp.content.iter_chunks():
                body.take(chunk)
                await body.drain(sink)
            body.finish()
            await body.drain(sink)
            return
        # the header is parsed and the body has begun: from here the socket is ours. Pausing
        # through aiohttp's protocol also stops its read timer (ours replaces it).
        self.taken = True
        conn.protocol.pause_reading()
        # a TLS connection's socket carries ciphertext: only the transport can decrypt it, so
        # its body is received in place through the transport, never from the raw socket
        if into is not None and conn.transport.get_extra_info("sslcontext") is None:
            def work(rx) -> None:               # in the worker thread
                if already:
                    into.write_now(memoryview(already))
                into.take_now(rx, length - len(already))

            try:
                await SocketThread(conn.transport, READ_TIMEOUT_S).run(work)
            except Stalled:
                raise SourceError(f"no byte from the origin for {READ_TIMEOUT_S:g} s") from None
            except Stopped:
                raise SourceError("the read was stopped") from None
            return
        body.expect(length)
        body.take(already)
        body.adopt(conn.transport)
        await body.drain(sink, until_end=True)


def client_timeout() -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S)


async def open_source(session: aiohttp.ClientSession, url: str, headers: dict[str, str], *,
                      start: int = 0, end: int | None = None, if_range: str | None = None,
                      etag: str | None = None, last_modified: str | None = None) -> SourceResponse:
    """GET `url` from byte `start` (to `end`, inclusive); conditional when validators are given.

    With `etag`/`last_modified` (a cached copy's validators), a 304 comes back as status 304.
    With `if_range`, an origin whose file changed answers 200 with the new file from byte 0.
    """
    check_url(url)
    h = source_headers(headers)
    if start or end is not None:
        h["Range"] = f"bytes={start}-{'' if end is None else end}"
        if if_range:
            h["If-Range"] = if_range
    if etag:
        h["If-None-Match"] = etag
    if last_modified:
        h["If-Modified-Since"] = last_modified
    h["Accept-Encoding"] = "identity"
    shown = redact_url(url)
    try:
        resp = await session.get(url, headers=h, allow_redirects=True, timeout=client_timeout())
    except asyncio.TimeoutError:
        raise SourceError(f"origin {shown} timed out") from None
    except aiohttp.InvalidURL:
        raise SourceError(f"bad URL {shown!r}", "url") from None
    except aiohttp.ClientError as e:
        raise SourceError(f"cannot reach origin {shown}: {_reason(e)}") from None
    except ValueError as e:       # e.g. a header value aiohttp refuses
        raise SourceError(f"bad request for {shown}: {e}", "url") from None
    status = resp.status
    if status == 304:
        resp.release()
        return SourceResponse(304, 0, 0, resp.headers.get("ETag"), resp.headers.get("Last-Modified"), resp)
    if status not in (200, 206):
        resp.release()
        raise SourceError(f"origin answered {status} {resp.reason or ''} for {shown}", "status", status)
    body_start, length = 0, None
    if status == 206:
        m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
        if not m:
            resp.release()
            raise SourceError(f"origin sent 206 without a usable Content-Range for {shown}", "protocol")
        body_start, length = int(m.group(1)), int(m.group(3))
    else:
        cl = resp.headers.get("Content-Length")
        if cl is not None and cl.isdigit():
            length = int(cl)
    if length is None:
        resp.release()
        raise SourceError(f"origin sent no length for {shown}", "protocol")
    return SourceResponse(status, length, body_start, resp.headers.get("ETag"),
                          resp.headers.get("Last-Modified"), resp)


class _Body(asyncio.BufferedProtocol):
    """A body being cut into batches; received in place once it owns the transport."""

    def __init__(self, start: int, boundary: int, batch: int):
        self.loop = asyncio.get_running_loop()
        self.pos = start                        # file offset of the next byte
        self.end: int | None = None             # file offset after the body, when known
        self.boundary, self.batch = boundary, batch
        self.transport: asyncio.Transport | None = None
        self._free: list[bytearray] = []
        self._ready: collections.deque[memoryview] = collections.deque()
        self._view: memoryview | None = None    # the batch being filled
        self._fill = 0
        self._paused = False
        self._closed = False
        self._error: SourceError | None = None
        self._waiter: asyncio.Future | None = None
        self._last_rx = self.loop.time()

    def expect(self, n: int) -> None:
        self.end = self.pos + n

    # ---- filling -------------------------------------------------------------------------
    def _room(self) -> memoryview:
        """The unfilled part of the current batch (a new one if none)."""
        if self._view is None:
            limit = min(self.batch, (self.pos // self.boundary + 1) * self.boundary - self.pos)
            if self.end is not None:
                limit = min(limit, self.end - self.pos)
            buf = self._free.pop() if self._free else bytearray(self.batch)
            self._view, self._fill = memoryview(buf)[:limit], 0
        return self._view[self._fill:]

    def _filled(self, n: int) -> None:
        self._fill += n
        self.pos += n
        if self._fill == len(self._view) or self.pos == self.end:
            self._ready.append(self._view[:self._fill])
            self._view = None

    def take(self, data: bytes) -> None:
        """Bytes that came through aiohttp: copied into batches."""
        data = memoryview(data)
        while data and self.pos != self.end:
            room = self._room()
            k = min(len(room), len(data))
            room[:k] = data[:k]
            data = data[k:]
            self._filled(k)

    def finish(self) -> None:
        """No more bytes through aiohttp: what is filled goes out."""
        if self._view is not None and self._fill:
            self._ready.append(self._view[:self._fill])
        self._view = None
        self._closed = True

    def adopt(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        transport.set_protocol(self)
        if self.pos == self.end:
            self._closed = True
        else:
            transport.resume_reading()

    # ---- asyncio callbacks ---------------------------------------------------------------
    def get_buffer(self, sizehint: int) -> memoryview:
        if self.pos == self.end:                # cannot happen while paused; be safe
            return memoryview(bytearray(4096))
        return self._room()

    def buffer_updated(self, nbytes: int) -> None:
        self._last_rx = self.loop.time()
        if self.pos == self.end:
            return                              # bytes past the body: the connection goes anyway
        self._filled(nbytes)
        if self.pos == self.end:
            self._closed = True
            self.transport.pause_reading()
        elif len(self._ready) >= WAITING_MAX and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> None:
        return None                             # the transport closes; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed:
            self.finish()
        self._wake()

    # ---- the consumer's side -------------------------------------------------------------
    async def drain(self, sink: Callable[[memoryview], Awaitable[None]], until_end: bool = False) -> None:
        """Hand ready batches to `sink`; with `until_end`, wait for bytes until the body ends."""
        while True:
            if self._ready:
                view = self._ready.popleft()
                if self._paused and len(self._ready) < WAITING_MAX:
                    self._paused = False
                    self._last_rx = self.loop.time()    # the pause was ours, not the origin's
                    self.transport.resume_reading()
                await sink(view)
                if len(self._free) < KEEP_FREE:
                    self._free.append(view.obj)
                continue
            if self._error is not None:
                raise self._error
            if not until_end or self._closed:
                return
            await self._wait()

    async def _wait(self) -> None:
        self._waiter = self.loop.create_future()
        try:
            while not self._waiter.done():
                left = self._last_rx + READ_TIMEOUT_S - self.loop.time()
                if left <= 0:
                    self._error = SourceError(f"no byte from the origin for {READ_TIMEOUT_S:g} s")
                    self.transport.abort()
                    return
                await asyncio.wait((self._waiter,), timeout=left)
        finally:
            self._waiter = None

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)


def _reason(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return " ".join(text.split())[:200]
