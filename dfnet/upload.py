"""Serving pieces to peers: the upload side shared by daemons and supernodes.

Rules kept here:
- A piece is served only to a request that presents a token the node holds for that task
  (compared in constant time), only if the node holds the piece, and only from the task's
  own folder: the task id is checked as 64 hex digits and the piece index against the grid,
  so no request can name a path.
- The bytes go from the page cache to the socket with `sendfile` (zero copy) in chunks, each
  paced by the node's upload buckets; with every bucket unlimited the piece goes in one
  blocking `sendfile` from a worker thread (`dfnet.sockthread`: the event loop stops reading
  the connection meanwhile, and a child that takes no byte for `STALL_TIMEOUT_S` is cut
  off), else in one `loop.sendfile` (the event loop refills the socket each time it drains:
  a writer registration, a wake-up and Python callbacks each). Without sendfile (some
  platforms, TLS) it falls back to reads of at most `CHUNK`.
- The node does not re-verify before serving: children verify every piece against the
  supernode's digest, and a corrupt piece gets its sender reported and dropped for the task.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Callable

from aiohttp import web

from .core.tokenbucket import TokenBucket
from .protocol import TOKEN_HEADER
from .serve import hang_up
from .sockthread import SENDERS, SocketThread, Stalled, Stopped
from .storage import StorageError, TaskFiles, check_task_id
from .throttle import pace

CHUNK = 1 << 20
STALL_TIMEOUT_S = 15.0          # a child that takes no byte for this long is cut off (piecefetch's stall)
log = logging.getLogger("dfnet.upload")


@dataclass
class Servable:
    """A task a node can serve from: its files and the tokens that entitle peers to it."""

    files: TaskFiles
    tokens: set[str] = field(default_factory=set)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def piece_handler(lookup: Callable[[str], Servable | None], buckets: Callable[[], tuple[TokenBucket, ...]],
                  on_sent: Callable[[int], None] = lambda n: None):
    """An aiohttp handler for `GET /v1/tasks/{task}/pieces/{piece}`."""

    async def handle(request: web.Request) -> web.StreamResponse:
        # names only, never values: a test proves no credential header ever reaches a peer
        log.debug("piece request", extra={"fields": {"path": request.path,
                                                      "header_names": sorted(request.headers)}})
        try:
            task_id = check_task_id(request.match_info["task"])
            piece = int(request.match_info["piece"])
        except (StorageError, ValueError):
            return _error(400, "bad task id or piece index")
        entry = lookup(task_id)
        token = request.headers.get(TOKEN_HEADER, "")
        if entry is None or not any(hmac.compare_digest(token, t) for t in entry.tokens):
            return _error(403, "no such task for this token")
        files = entry.files
        try:
            offset, n = files.piece_range(piece)
        except StorageError as e:
            return _error(400, str(e))
        if not files.have[piece]:
            return _error(404, f"piece {piece} not held here")
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = n
        await resp.prepare(request)
        try:
            await send_file_range(request, resp, files.data_path, offset, n, buckets, on_sent)
        except ConnectionError:
            # a child that gave up (a cut, a restart, a timeout) is routine: no 500, no traceback
            log.debug("peer went away mid-piece", extra={"fields": {"piece": piece,
                                                                    "peer": request.remote}})
            return hang_up(request, resp)
        await resp.write_eof()
        return resp

    return handle


async def send_file_range(request: web.Request, resp: web.StreamResponse, path, offset: int, n: int,
                          buckets: Callable[[], tuple[TokenBucket, ...]] = tuple,
                          on_sent: Callable[[int], None] = lambda n: None) -> None:
    """The body of a prepared response: `n` bytes of the file at `path` from `offset`, paced
    by `buckets` (none: one `sendfile`). A client gone raises `ConnectionError`: the caller
    ends the response with `serve.hang_up`. Pieces to peers and the mirror's blobs go out here."""
    loop = asyncio.get_running_loop()
    transport = request.transport
    with open(path, "rb") as f:
        if n and all(math.isinf(b.rate) for b in buckets()) and _threadable(transport):
            await _send_in_thread(transport, f.fileno(), offset, n)
            on_sent(n)
            return
        sent = 0
        while sent < n:
            limits = buckets()
            k = n - sent if all(math.isinf(b.rate) for b in limits) else min(CHUNK, n - sent)
            await pace(limits, k)
            if transport is None or transport.is_closing():
                raise ConnectionResetError("peer went away")
            try:
                await loop.sendfile(transport, f, offset + sent, k)
            except NotImplementedError:
                k = min(CHUNK, k)       # a read's memory stays bounded
                await resp.write(os.pread(f.fileno(), k, offset + sent))
            sent += k
            on_sent(k)


def _threadable(transport) -> bool:
    """A plain TCP connection whose written bytes have all gone (the header, written at
    `prepare` into an empty socket buffer, nearly always): a worker thread may send on it."""
    return (transport is not None and not transport.is_closing() and transport.get_write_buffer_size() == 0
            and transport.get_extra_info("sslcontext") is None and transport.get_extra_info("socket") is not None)


async def _send_in_thread(transport, fd: int, offset: int, n: int) -> None:
    """`n` bytes of file `fd` from `offset` in one blocking `sendfile` in a worker thread; a
    child gone or stalled raises `ConnectionResetError`. The event loop does not read the
    connection meanwhile (the thread's socket is blocking) and writes nothing to it (the
    handler is waiting here)."""
    reading = transport.is_reading()
    transport.pause_reading()
    try:
        sent = await SocketThread(transport, STALL_TIMEOUT_S, SENDERS).run(lambda tx: tx.send_file(fd, offset, n))
    except (Stalled, Stopped, OSError) as e:
        raise ConnectionResetError(f"peer went away ({type(e).__name__})") from None
    finally:
        if reading and not transport.is_closing():
            transport.resume_reading()
    if sent < n:
        raise ConnectionResetError("peer went away")
