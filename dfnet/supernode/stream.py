"""The supernode's end of the sync stream: one upgraded connection per peer and task.

Owns the stream's framing (newline-delimited JSON on the connection aiohttp hands over after
the `101`), its one-message-at-a-time rule, its errors and its idle timeout. What a message
does is the sync route's code (`Supernode.sync_begin` / `sync_hold`): HTTP and stream syncs
apply, decide, long-poll and count the same way. See `dfnet.protocol` for the exchange.

Rules kept here:
- The token and the peer are checked before the `101`: a refused upgrade is answered with the
  sync route's HTTP error and the connection never becomes a stream.
- A line that is not JSON, not a sync, names another peer than the stream's, or comes before
  the previous reply is answered with one error line and the stream is closed; the supernode
  and the other streams go on.
- A message the core can answer at once is answered from the read callback, with no task
  switch (with the framing, that is what the stream saves over an HTTP request); only an idle
  peer's held sync runs as a task. A closed stream cancels it: the peer's state is left as an
  HTTP client that hung up leaves it (still registered, its transfers still assigned).
- A stream silent for the supernode's `stream_idle_s` (`--stream-idle-s`, default `IDLE_S`)
  since its last message or held reply is closed (a daemon reopens it when it next syncs); a
  peer that does not read its replies (`MAX_LINE` unsent) is cut off.
- A peer the task does not know (the supernode restarted, or the peer left) is refused with
  409 "register again", before the `101` or as the error line, as the HTTP route refuses it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING

from aiohttp import web

from dfnet.protocol import STREAM_UPGRADE, ProtocolError, Refused, SyncReply, parse_sync

if TYPE_CHECKING:
    from .service import Supernode
    from .tasks import SupernodeTask

IDLE_S = 600.0           # above a daemon's longest quiet spell (a back-to-source download)
MAX_LINE = 4 << 20       # as the HTTP route's body limit
log = logging.getLogger("dfnet.supernode")
_encode = json.JSONEncoder(separators=(",", ":")).encode      # made once, not per reply as json.dumps(separators=)
# a line is decoded as UTF-8 and parsed by one decoder made once: `json.loads` on bytes first
# guesses among UTF-8, -16 and -32, a third of the JSON parse's time (a stream's lines are
# split at b"\n", so only UTF-8 can reach here anyway)
_decode = json.JSONDecoder().decode
# the usual reply, assignments and nothing else, is written out: the bytes `_encode` gives,
# with each string's JSON form made once per task (`SupernodeTask.json_strings`), in under
# half its time (11 assignments: 6 us against 14)
_ASSIGN_END = '],"retry_after":0.0,"back_to_source":false,"done":false}\n'


async def accept(node: Supernode, request: web.Request) -> web.StreamResponse:
    """`GET /v1/tasks/{task}/stream?peer=ID`: check, answer 101, serve until the stream ends."""
    t, err = node._authorized(request)
    if err is not None:
        return err
    if request.headers.get("Upgrade", "").lower() != STREAM_UPGRADE:
        return _response(Refused(400, f"sync stream: expected 'Upgrade: {STREAM_UPGRADE}'"))
    peer = request.query.get("peer", "")
    try:
        t.child_of(peer)
    except ProtocolError as e:
        return _response(Refused(400, str(e)))
    except Refused as e:                      # a peer it does not know (restarted?): 409, register again
        return _response(e)
    resp = web.StreamResponse(status=101, headers={"Upgrade": STREAM_UPGRADE, "Connection": "Upgrade"})
    await resp.prepare(request)
    if request.transport is None:             # the peer hung up meanwhile
        return resp
    s = SyncStream(node, t, peer, request.transport)
    node.streams.add(s)
    node.metrics.inc("dragonfly_scheduler_sync_stream_total")
    try:
        request.protocol.set_parser(s)      # the connection's bytes now go to `feed_data`
        await s.run()
    finally:
        node.streams.discard(s)
        s.close()
    return resp


def _response(e: Refused) -> web.Response:
    return web.json_response(e.body(), status=e.status)


class SyncStream:
    """One peer's stream: lines in, replies out, in order (aiohttp's payload-parser interface)."""

    def __init__(self, node: Supernode, task: SupernodeTask, peer: str, transport: asyncio.Transport):
        self.node = node
        self.task = task
        self.peer = peer
        self.transport = transport
        self.buf = bytearray()
        self.held: asyncio.Task | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.last = time.monotonic()

    async def run(self) -> None:
        idle = self.node.stream_idle_s
        while not self.closed.done():
            await asyncio.wait([self.closed], timeout=idle / 4)
            if self.held is None and time.monotonic() - self.last > idle:
                self.close()

    # ---- aiohttp calls these with the connection's bytes and its end ------------------------
    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self.closed.done():
            return False, b""
        self.last = time.monotonic()
        if b"\n" in data:
            if self.buf:                           # the end of a message that came in parts
                data, self.buf = bytes(self.buf) + data, bytearray()
            *lines, tail = data.split(b"\n")
            for line in lines:
                if self.closed.done():
                    return False, b""
                self._message(line)
            data = tail
        self.buf += data                           # a bytearray: a large message grows in place
        if len(self.buf) > MAX_LINE:
            self._fail(400, "sync stream: message too large")
        return False, b""

    def feed_eof(self) -> None:
        self.close()

    # ---- one message -----------------------------------------------------------------------
    def _message(self, line: bytes) -> None:
        if self.held is not None:
            return self._fail(400, "sync stream: a message came before the previous reply")
        try:
            try:
                body = _decode(line.decode())
            except ValueError:                     # not JSON, or not UTF-8 (UnicodeDecodeError)
                raise ProtocolError("sync stream: message is not JSON") from None
            msg = parse_sync(body)
            if msg.peer != self.peer:
                raise ProtocolError(f"sync stream: a message for peer {msg.peer[:80]!r} "
                                    f"on the stream of {self.peer[:80]!r}")
            child, deadline, reply, final = self.node.sync_begin(self.task, msg)
        except ProtocolError as e:
            return self._fail(400, str(e))
        except Refused as e:
            return self._refuse(e)
        except Exception:                          # a bug: logged here, one line to the peer
            log.exception("sync stream failed")
            return self._fail(500, "supernode error")
        if final:
            self._send(reply)
        else:
            self.held = asyncio.get_running_loop().create_task(self._hold(child, deadline, reply))

    async def _hold(self, child: int, deadline: float, reply: SyncReply) -> None:
        try:
            reply = await self.node.sync_hold(self.task, child, deadline, reply)
        except Refused as e:
            self.held = None
            return self._refuse(e)
        self.held = None
        self.last = time.monotonic()               # idle from the reply on, not from the held message
        self._send(reply)

    # ---- out -------------------------------------------------------------------------------
    def _send(self, reply: SyncReply) -> None:
        if reply.assign and not (reply.retry_after or reply.back_to_source or reply.done):
            q = self.task.json_strings
            try:
                line = '{"assign":[' + ",".join([f"[{piece},{q[parent]},{q[addr]},{q[sha]}]"
                                                 for piece, parent, addr, sha in reply.assign]) + _ASSIGN_END
            except TypeError:                  # not a string where one belongs: the encoder says so
                pass
            else:
                return self._write_line(line.encode())
        self._write(reply.to_json())

    def _write(self, obj: dict) -> None:
        self._write_line(_encode(obj).encode() + b"\n")

    def _write_line(self, line: bytes) -> None:
        if self.closed.done():
            return
        self.transport.write(line)
        if self.transport.get_write_buffer_size() > MAX_LINE:
            self.close()

    def _refuse(self, e: Refused) -> None:
        self._write({**e.body(), "status": e.status})
        self.close()

    def _fail(self, status: int, message: str) -> None:
        self._refuse(Refused(status, message))

    def close(self) -> None:
        """End the stream: cancel a held sync, flush what was written, close the connection."""
        if self.closed.done():
            return
        self.closed.set_result(None)
        if self.held is not None:
            self.held.cancel()
            self.held = None
        self.transport.close()
