"""Fetching one piece from a parent: a small HTTP/1.1 client that reads the body in place.

Owns the daemon's connections to its parents (daemons and supernodes, whose upload server is
`dfnet.upload`): one request, `GET /v1/tasks/{task}/pieces/{piece}`, one answer, 200 with a
Content-Length and exactly that many bytes. Both ends are ours, so this client speaks only
that much HTTP and refuses the rest.

Rules kept here:
- The body is received straight into the batch buffers (`PieceWriter.BATCH`, the last one
  shorter) that the hash+write worker thread consumes: `asyncio.BufferedProtocol` hands the
  socket a view of the batch being filled, so the event loop's thread moves each body byte
  once, in `recv_into` (through aiohttp it moved it four times: received into a new bytes,
  sliced by the parser, joined by the stream reader, appended to the writer's batch; that
  memcpy capped a 2-core host). Only what arrives in the same read as the header (at most
  `HEADER_MAX`) is copied once more.
- Or, with `into` (a `PieceWriter`) instead of `sink`, the whole body is moved by one worker
  thread (`dfnet.sockthread`): once the header is parsed the event loop stops reading the
  socket, and the thread splices the body into the task's file a batch at a time, hashing
  each batch from the page cache (`PieceWriter.take_now`). Per piece the event loop does one
  handoff instead of a callback per `recv` and a thread round trip per batch (bench_live
  single, pinned to one core: the daemon's event loop went from 1.0 to 0.2 CPU s/GB), and
  the kernel copies each byte once instead of twice. The thread is gone when the fetch
  returns, whatever way it ends (a timeout, cancellation or `Pool.close()` shuts the socket
  down and waits for it); the socket is non-blocking again before the event loop reads it
  (keep-alive) or it is closed.
- Full batches wait for the consumer (`sink`), one at a time, in order; the socket stops
  being read while 2 batches wait and resumes when they are drained, so a piece in flight
  holds at most 3 batches however slow its pacing or its disk. The sink is done with a batch
  when it returns, and its buffer goes back to the pool's free list (at most `KEEP_FREE`)
  for the next batch: a new 1 MiB bytearray per batch was zeroed and page-faulted in, 17% of
  the daemon's event loop (py-spy, bench_live single).
- The answer must be 200 with a Content-Length equal to the piece's length: another status
  fails naming it; a missing length or a chunked body fails; a header over `HEADER_MAX`
  fails; a length over the piece's, or a byte past the length, is a corrupt parent
  (`FetchError.corrupt`); a shorter length, or a connection closed before the last byte,
  is an ordinary failure. Any of these closes that connection.
- Timeouts at every step: connect (`CONNECT_TIMEOUT_S`), no byte from the parent
  (`STALL_TIMEOUT_S`, from the request on; not counted while the consumer holds the socket
  paused; in a worker thread the socket's receive timeout, so a stall after some bytes of a
  batch is noticed after one to two times it), and the whole fetch, consumer included (the caller's `timeout`). A fetch that
  fails, times out or is cancelled aborts its connection: no socket outlives its fetch
  except a clean one, back in the pool.
- Keep-alive: a connection whose answer ended exactly at its length goes back to a pool of
  idle ones, at most `IDLE_PER_ADDR` per parent address, each closed after `IDLE_S` unused
  (under the upload server's keep-alive of 75 s) or when its parent closes it. A pooled
  connection found closed by the parent before any byte of the answer (the parent closed
  it while the request was on its way) is replaced once by a fresh one; the request is
  sent again, nothing having been received. `Pool.close()` (daemon shutdown) closes all.
- Errors of the network or of the parent are `FetchError`; what the consumer raises (a
  local write error, cancellation) goes through unchanged.
"""
from __future__ import annotations

import asyncio
import collections
import struct
from typing import Awaitable, Callable

try:
    import fcntl
    import termios
except ImportError:             # not a POSIX system: bytes past the length are seen when read
    fcntl = termios = None

from dfnet.sockthread import SocketThread, Stalled, Stopped
from dfnet.storage import PieceWriter

CONNECT_TIMEOUT_S = 5.0
STALL_TIMEOUT_S = 15.0
HEADER_MAX = 16 * 1024
IDLE_PER_ADDR = 4
IDLE_S = 30.0
WAITING_MAX = 2          # batches filled and not yet taken: stop reading the socket
KEEP_FREE = 4            # batch buffers kept for reuse, for all connections together
# A batch is a page short of 1 MiB (`PieceWriter.BATCH` says why): worker threads spent 1.0-1.5
# CPU s/GB writing 1 MiB batches against 0.33 one page shorter (bench_live single).
BATCH = PieceWriter.BATCH

_IDLE, _HEAD, _BODY, _THREAD, _DONE, _FAILED = range(6)


class FetchError(Exception):
    """The parent or the network failed the fetch; `corrupt` when the parent broke the protocol
    in a way only a faulty parent does (more bytes than the piece holds)."""

    def __init__(self, message: str, corrupt: bool = False, early: bool = False):
        super().__init__(message)
        self.corrupt = corrupt
        self.early = early          # the connection closed before any byte of the answer


class _Conn(asyncio.BufferedProtocol):
    """One connection to a parent, and the state of the answer being read on it."""

    def __init__(self, pool: "Pool", addr: str):
        self.pool, self.addr = pool, addr
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.state = _IDLE
        self.keep = False                       # the answer allows another request after it
        self.idle_timer: asyncio.TimerHandle | None = None
        self._error: FetchError | None = None
        self._lost = False
        self._head = bytearray(HEADER_MAX)      # reused for every answer on this connection
        self._head_view = memoryview(self._head)
        self._hlen = 0
        self._scratch: bytearray | None = None
        self._length = 0                        # the body's length (== the piece's)
        self._got = 0                           # body bytes received
        self._view: memoryview | None = None    # the batch being filled
        self._fill = 0
        self._ready: collections.deque[memoryview] = collections.deque()
        self._paused = False
        self._waiter: asyncio.Future | None = None
        self._last_rx = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._threaded = False                  # the body goes to a worker thread (`receive`)
        self._rest = b""                        # body bytes that came with the header, for it
        self._thread: SocketThread | None = None     # the worker thread reading the body now

    # ---- asyncio callbacks ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview | bytearray:
        if self.state == _BODY:
            if self._view is None:
                self._new_batch()
            return self._view[self._fill:]
        if self.state == _HEAD:
            return self._head_view[self._hlen:]
        if self._scratch is None:
            self._scratch = bytearray(4096)
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        self._last_rx = self.loop.time()
        if self.state == _BODY:
            self._advance(nbytes)
        elif self.state == _HEAD:
            self._head_bytes(nbytes)
        elif self.state == _DONE:
            self._fail(FetchError("parent sent bytes past the Content-Length", corrupt=True))
        elif self.state == _IDLE:
            self.abort()                        # bytes nobody asked for: not reusable

    def eof_received(self) -> None:
        return None                             # the transport closes; connection_lost says why

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._disarm()
        self.pool._forget(self)
        why = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
        if self.state == _HEAD:
            if self._hlen == 0:
                self._fail(FetchError(f"parent closed the connection before answering{why}", early=True))
            else:
                self._fail(FetchError(f"parent closed the connection in the middle of its header{why}"))
        elif self.state == _BODY:
            self._fail(FetchError(f"parent sent {self._got} of {self._length} bytes, "
                                  f"then closed the connection{why}"))
        elif self.state == _THREAD:
            self._fail(FetchError(f"connection closed while receiving{why}"))
        self._wake()

    # ---- header --------------------------------------------------------------------------
    def _head_bytes(self, nbytes: int) -> None:
        start = max(0, self._hlen - 3)
        self._hlen += nbytes
        end = self._head.find(b"\r\n\r\n", start, self._hlen)
        if end < 0:
            if self._hlen >= HEADER_MAX:
                self._fail(FetchError(f"parent's answer header is over {HEADER_MAX} bytes"))
            return
        try:
            self._parse_head(bytes(self._head_view[:end]).decode("latin-1"))
        except FetchError as e:
            self._fail(e)
            return
        rest = self._head_view[end + 4:self._hlen]
        if len(rest) > self._length:
            self._fail(FetchError("parent sent bytes past the Content-Length", corrupt=True))
            return
        if self._threaded:
            # the worker thread takes the socket from here: the loop reads no more of it
            self.transport.pause_reading()
            self._disarm()
            self._rest = bytes(rest)
            self.state = _THREAD
            self._wake()
            return
        self.state = _BODY
        self._copy_in(rest)
        if self._got == self._length:           # all of it came with the header (or empty)
            self._finish_body()
        self._wake()

    def _parse_head(self, text: str) -> None:
        lines = text.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not _digits(parts[1]) or len(parts[1]) != 3:
            raise FetchError(f"parent answered something other than HTTP: {lines[0][:80]!r}")
        status = int(parts[1])
        fields: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise FetchError(f"parent sent a malformed header line: {line[:80]!r}")
            name, value = name.lower(), value.strip()
            if name not in fields:
                fields[name] = value
            elif name == "content-length":
                if fields[name] != value:
                    raise FetchError("parent sent two different Content-Lengths")
            else:
                fields[name] = f"{fields[name]}, {value}"
        if status != 200:
            raise FetchError(f"parent answered HTTP {status}")
        if "transfer-encoding" in fields:
            raise FetchError(f"parent answered with Transfer-Encoding: {fields['transfer-encoding'][:40]}; "
                             "a piece needs a Content-Length")
        length = fields.get("content-length")
        if length is None:
            raise FetchError("parent answered without a Content-Length")
        if not _digits(length):
            raise FetchError(f"parent sent a bad Content-Length: {length[:40]!r}")
        announced = int(length)
        if announced > self._length:
            raise FetchError(f"parent sent more bytes than the piece holds ({announced} > {self._length})",
                             corrupt=True)
        if announced < self._length:
            raise FetchError(f"parent announced {announced} of {self._length} bytes")
        tokens = {t.strip().lower() for t in fields.get("connection", "").split(",")}
        self.keep = parts[0] == "HTTP/1.1" and "close" not in tokens

    # ---- body ----------------------------------------------------------------------------
    def _new_batch(self) -> None:
        self._view = self.pool.buffer()[:min(self.pool.batch, self._length - self._got)]
        self._fill = 0

    def _copy_in(self, data: memoryview) -> None:
        """Body bytes that came in the header's buffer: the one copy this client makes."""
        while data:
            if self._view is None:
                self._new_batch()
            k = min(len(data), len(self._view) - self._fill)
            self._view[self._fill:self._fill + k] = data[:k]
            data = data[k:]
            self._advance(k)

    def _advance(self, nbytes: int) -> None:
        self._fill += nbytes
        self._got += nbytes
        if self._fill < len(self._view):
            return
        self._ready.append(self._view)
        self._view = None
        if self._got == self._length:
            self._finish_body()
        elif len(self._ready) >= WAITING_MAX and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def _finish_body(self) -> None:
        self.state = _DONE
        self._disarm()

    # ---- the fetch's side ----------------------------------------------------------------
    def begin(self, request: bytes, length: int, threaded: bool = False) -> None:
        self.state = _HEAD
        self._threaded = threaded
        self._hlen = 0
        self._length, self._got = length, 0
        self._view = None
        self._ready.clear()
        self.keep = False
        self._last_rx = self.loop.time()
        self._arm()
        self.transport.write(request)

    async def wait_head(self) -> None:
        while self.state == _HEAD:
            await self._wait()
        self.check()

    async def next_batch(self) -> memoryview | None:
        """The next full batch of the body, in order; None after the last."""
        while True:
            self.check()
            if self._ready:
                batch = self._ready.popleft()
                if self._paused and not self._ready:
                    self._paused = False
                    self._last_rx = self.loop.time()    # the pause was ours, not the parent's
                    self.transport.resume_reading()
                return batch
            if self.state == _DONE:
                return None
            await self._wait()

    async def receive(self, into) -> None:
        """The body, moved by a worker thread: bytes that came with the header to
        `into.write_now(view)`, the rest with `into.take_now(receiver, n)` (see `Pool.fetch`).
        Returns once the thread has ended, whatever the outcome."""
        self.check()
        self._thread = SocketThread(self.transport, self.pool.stall_timeout)
        try:
            await self._thread.run(lambda rx: self._receive(rx, into))
        except Stalled:
            raise FetchError(f"no byte from the parent for {self.pool.stall_timeout:g} s") from None
        except Stopped:
            raise FetchError("the fetch was stopped") from None
        finally:
            self._thread = None
        self.state = _DONE
        self.transport.resume_reading()         # the loop sees bytes past the length, or a close

    def _receive(self, rx, into) -> None:
        """In the worker thread: the `_length` body bytes to `into`."""
        rest, self._rest = self._rest, b""
        if rest:
            into.write_now(memoryview(rest))
        got = len(rest) + into.take_now(rx, self._length - len(rest))
        if got < self._length:
            raise FetchError(f"parent sent {got} of {self._length} bytes, then closed the connection")
        self._got = got

    def check(self) -> None:
        if self._error is not None:
            raise self._error

    def check_end(self) -> None:
        """After the last batch: bytes past the length, read meanwhile or still unread, fail."""
        self.check()
        if self._unread():
            self._fail(FetchError("parent sent bytes past the Content-Length", corrupt=True))
            self.check()

    def _unread(self) -> int:
        """Bytes waiting in the socket's receive queue (one ioctl; 0 when it cannot tell)."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None or fcntl is None:
            return 0
        try:
            return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
        except (OSError, ValueError):
            return 0

    @property
    def usable(self) -> bool:
        return (self.state == _IDLE and self._error is None and not self._lost
                and self.transport is not None and not self.transport.is_closing() and not self._unread())

    def abort(self) -> None:
        self._disarm()
        if self._thread is not None:
            self._thread.stop()                 # else the thread's dup keeps the socket open
        if self.transport is not None:
            self.transport.abort()

    # ---- internals -----------------------------------------------------------------------
    def _fail(self, error: FetchError) -> None:
        if self._error is None:
            self._error = error
        self.state = _FAILED
        self._ready.clear()
        self.abort()
        self._wake()

    async def _wait(self) -> None:
        self._waiter = self.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = self.loop.call_at(self._last_rx + self.pool.stall_timeout, self._on_timer)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if self.state not in (_HEAD, _BODY):
            return
        now = self.loop.time()
        if self._paused:
            self._last_rx = now                 # we hold the socket; the parent is not late
        elif now - self._last_rx >= self.pool.stall_timeout - 1e-3:
            self._fail(FetchError(f"no byte from the parent for {self.pool.stall_timeout:g} s"))
            return
        self._arm()


class Pool:
    """The daemon's connections to parents: idle ones kept per address, all closed by `close`."""

    def __init__(self, *, per_addr: int = IDLE_PER_ADDR, idle_s: float = IDLE_S,
                 connect_timeout: float = CONNECT_TIMEOUT_S, stall_timeout: float = STALL_TIMEOUT_S,
                 batch: int = BATCH):
        self.per_addr, self.idle_s = per_addr, idle_s
        self.connect_timeout, self.stall_timeout = connect_timeout, stall_timeout
        self.batch = batch
        self._free: list[bytearray] = []
        self.connects = 0                       # connections opened
        self.reuses = 0                         # fetches that took an idle connection
        self.closed = False
        self._idle: dict[str, list[_Conn]] = {}
        self._open: set[_Conn] = set()

    async def fetch(self, addr: str, path: str, headers: dict[str, str], length: int,
                    sink: Callable[[memoryview], Awaitable[None]] | None, *, timeout: float,
                    into=None) -> None:
        """GET `path` from `addr` ("host:port") and pass its `length` body bytes to `sink`.

        `sink` gets each batch as it fills, in order, and must be done with it when it
        returns (the buffer is reused); the fetch ends after `sink` has taken the last one.
        With `into` instead (a `dfnet.storage.PieceWriter`, or anything with its `write_now`
        and `take_now`), one worker thread moves the whole body, unpaced: the bytes that came
        with the header through `write_now`, the rest straight from the socket (`take_now`)."""
        request = _request(addr, path, headers)
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                conn = await self._answer(addr, request, length, threaded=into is not None)
                try:
                    if into is not None:
                        await conn.receive(into)
                    else:
                        while (batch := await conn.next_batch()) is not None:
                            await sink(batch)
                            self._recycle(batch)
                    conn.check_end()
                except BaseException:
                    conn.abort()
                    raise
        except TimeoutError:
            if deadline.expired():
                raise FetchError(f"no complete answer from the parent within {timeout:g} s") from None
            raise
        self._put(conn)

    def buffer(self) -> memoryview:
        """A batch buffer, reused if one is free."""
        return memoryview(self._free.pop() if self._free else bytearray(self.batch))

    def _recycle(self, batch: memoryview) -> None:
        if len(self._free) < KEEP_FREE:
            self._free.append(batch.obj)

    async def _answer(self, addr: str, request: bytes, length: int, threaded: bool = False) -> _Conn:
        """A connection whose answer header has arrived and is good for `length` bytes."""
        conn = self._take(addr)
        while True:
            reused = conn is not None
            if conn is None:
                conn = await self._connect(addr)
            try:
                conn.begin(request, length, threaded)
                await conn.wait_head()
                return conn
            except FetchError as e:
                conn.abort()
                if not (reused and e.early):
                    raise
                conn = None                     # closed by the parent while idle: once more, fresh
            except BaseException:
                conn.abort()
                raise

    async def _connect(self, addr: str) -> _Conn:
        if self.closed:
            raise FetchError("the daemon is shutting down")
        host, _, port = addr.rpartition(":")
        host = host[1:-1] if host.startswith("[") else host
        loop = asyncio.get_running_loop()
        step = asyncio.timeout(self.connect_timeout)
        try:
            async with step:
                _, conn = await loop.create_connection(lambda: _Conn(self, addr), host, int(port))
        except TimeoutError:
            if step.expired():
                raise FetchError(f"cannot connect to {addr} within {self.connect_timeout:g} s") from None
            raise
        except (OSError, ValueError) as e:
            raise FetchError(f"cannot connect to {addr}: {getattr(e, 'strerror', None) or e}") from None
        self.connects += 1
        self._open.add(conn)
        return conn

    def _take(self, addr: str) -> _Conn | None:
        idle = self._idle.get(addr)
        while idle:
            conn = idle.pop()
            if conn.idle_timer is not None:
                conn.idle_timer.cancel()
                conn.idle_timer = None
            if conn.usable:
                self.reuses += 1
                return conn
            conn.abort()
        return None

    def _put(self, conn: _Conn) -> None:
        idle = self._idle.setdefault(conn.addr, [])
        ok = conn.keep and conn.state == _DONE and not self.closed and len(idle) < self.per_addr
        conn.state = _IDLE
        if not ok or not conn.usable:
            conn.abort()
            if not idle:
                del self._idle[conn.addr]
            return
        conn.idle_timer = conn.loop.call_later(self.idle_s, conn.abort)
        idle.append(conn)

    def _forget(self, conn: _Conn) -> None:
        self._open.discard(conn)
        idle = self._idle.get(conn.addr)
        if idle is not None and conn in idle:
            idle.remove(conn)
            if not idle:
                del self._idle[conn.addr]
        if conn.idle_timer is not None:
            conn.idle_timer.cancel()
            conn.idle_timer = None

    def idle_count(self, addr: str) -> int:
        return len(self._idle.get(addr, ()))

    def close(self) -> None:
        """Close every connection, idle or in use; fetches after this fail."""
        self.closed = True
        for conn in list(self._open):
            conn.abort()
        self._idle.clear()


def _digits(s: str) -> bool:
    return s.isascii() and s.isdigit()


def _request(addr: str, path: str, headers: dict[str, str]) -> bytes:
    parts = [addr, path, *headers, *headers.values()]
    if " " in path or any(c in p for p in parts for c in "\r\n\0"):
        raise FetchError("refusing a request with a line break in a header or a space in the path")
    lines = [f"GET {path} HTTP/1.1", f"Host: {addr}", "Accept-Encoding: identity"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    try:
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise FetchError("refusing a request header that is not latin-1") from None
