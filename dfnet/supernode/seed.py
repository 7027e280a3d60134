"""The seed: fetch a task from the origin once, cut it into pieces, digest each.

Rules kept here:
- Bytes stream from the origin straight to the task's data file: received in place into
  batches that end at piece boundaries (`SourceResponse.read_body`), each written and hashed
  as it is off the event loop, never copied on it: spliced into the file and hashed by one
  worker thread when the body can be taken over (`_Cutter.take_now`), else by a worker
  thread per batch (`PieceWriter.feed_owned`). Each piece is sha256'd as it passes and offered to the swarm
  the moment its last byte is written (`on_piece`), so children start while the origin
  download is still running. Commits, `on_piece` and `on_bytes` run on the event loop
  (a receiving thread schedules them there, in order, before it ends).
- An interrupted download resumes at the first byte not yet received (the piece being cut
  keeps its partial hash across the break), with `Range` and an `If-Range` validator: if
  the file changed meanwhile, the task fails instead of mixing two versions. An origin
  without range support is read again from the start, skipping what is held. After
  `RETRIES` failures in a row the task fails with the last reason.
- Source headers live only in this coroutine's arguments: never stored, never logged.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

import aiohttp

from dfnet.logs import redact_url
from dfnet.source import SourceError, SourceResponse, open_source
from dfnet.storage import PieceWriter, TaskFiles

RETRIES = 5
log = logging.getLogger("dfnet.supernode.seed")


async def fetch(files: TaskFiles, session: aiohttp.ClientSession, url: str, headers: dict[str, str],
                first: SourceResponse | None, validator: str | None,
                on_piece: Callable[[int, str], None], on_bytes: Callable[[int], None] = lambda n: None) -> None:
    """Fill `files` from the origin; raises SourceError when it gives up."""
    failures = 0
    resp = first
    cut = _Cutter(files, on_piece, on_bytes)
    while not files.complete:
        start = cut.offset
        try:
            if resp is None:
                resp = await open_source(session, url, headers, start=start, if_range=validator)
            if resp.length != files.length or (resp.status == 200 and validator and start and
                                               (resp.etag or resp.last_modified) != validator):
                raise SourceError(f"origin file {redact_url(url)} changed during the download", "changed")
            await _stream(resp, cut, on_bytes)
            failures = 0
        except SourceError as e:
            if e.kind in ("changed", "status", "url"):
                raise
            failures += 1
            if failures > RETRIES:
                raise
            log.warning("origin download interrupted; resuming", extra={"fields": {
                "url": redact_url(url), "reason": str(e), "at_byte": start}})
            await asyncio.sleep(min(0.2 * 2 ** failures, 5.0))
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as e:
            failures += 1
            if failures > RETRIES:
                raise SourceError(f"origin download of {redact_url(url)} keeps failing: "
                                  f"{type(e).__name__} {e}") from None
            log.warning("origin download interrupted; resuming", extra={"fields": {
                "url": redact_url(url), "reason": f"{type(e).__name__} {e}", "at_byte": start}})
            await asyncio.sleep(min(0.2 * 2 ** failures, 5.0))
        finally:
            if resp is not None:
                resp.close()
                resp = None


class _Cutter:
    """Where the seed is in the file: the piece being cut, its writer and the next byte.

    It outlives one origin response so a resumed download goes on mid-piece.
    """

    def __init__(self, files: TaskFiles, on_piece: Callable[[int, str], None],
                 on_bytes: Callable[[int], None] = lambda n: None):
        self.files, self.on_piece, self.on_bytes = files, on_piece, on_bytes
        self.loop = asyncio.get_running_loop()
        self._start_piece(files.have.index(0))

    def _start_piece(self, piece: int) -> None:
        size = self.files.piece_size
        self.piece, self.offset = piece, piece * size
        self.writer = PieceWriter(self.files, self.offset)
        self.end_of_piece = min((piece + 1) * size, self.files.length)

    async def feed(self, view: memoryview) -> None:
        """Write and hash `view` (done with it on return), committing each piece it ends."""
        while view:
            k = min(len(view), self.end_of_piece - self.offset)
            if k <= 0:
                raise SourceError("origin sent more bytes than its length", "protocol")
            await self.writer.feed_owned(view[:k])
            self.offset += k
            view = view[k:]
            if self.offset == self.end_of_piece:
                digest = await self.writer.digest()
                self.files.commit(self.piece, digest)
                self.on_piece(self.piece, digest)
                if self.files.complete:
                    return
                self._start_piece(self.piece + 1)    # the stream is sequential

    # ---- in the worker thread that receives the body (`SourceResponse.read_body(into=...)`) --
    def write_now(self, view: memoryview) -> None:
        """Bytes already in memory (they came with the header): written and hashed."""
        self.loop.call_soon_threadsafe(self.on_bytes, len(view))
        while view:
            k = min(self._room(), len(view))
            self.writer.write_now(view[:k])
            self.offset += k
            view = view[k:]
            self._piece_end()

    def take_now(self, rx, n: int) -> int:
        """`n` bytes straight from the socket into the file, piece by piece; the bytes taken
        (fewer only when the origin closed the connection)."""
        taken = 0
        while taken < n:
            want = min(self._room(), n - taken)
            k = self.writer.take_now(rx, want)
            self.offset += k
            taken += k
            self.loop.call_soon_threadsafe(self.on_bytes, k)
            self._piece_end()
            if k < want:
                break
        return taken

    def _room(self) -> int:
        room = self.end_of_piece - self.offset
        if room <= 0:
            raise SourceError("origin sent more bytes than its length", "protocol")
        return room

    def _piece_end(self) -> None:
        """At the end of a piece: commit and offer it on the event loop (scheduled now, so
        before the thread's own end), and start the next."""
        if self.offset < self.end_of_piece:
            return
        self.loop.call_soon_threadsafe(self._piece_done, self.piece, self.writer.hexdigest())
        if self.piece < self.files.n_pieces - 1:
            self._start_piece(self.piece + 1)

    def _piece_done(self, piece: int, digest: str) -> None:
        if self.files.closed:                   # the task went away meanwhile
            return
        self.files.commit(piece, digest)
        self.on_piece(piece, digest)


async def _stream(resp: SourceResponse, cut: _Cutter, on_bytes: Callable[[int], None]) -> None:
    """Copy the response body into the task from `cut.offset`, committing whole pieces."""
    offset = resp.start
    if offset > cut.offset:
        raise SourceError(f"origin answered from byte {offset}, not {cut.offset}", "protocol")

    async def sink(batch: memoryview) -> None:
        nonlocal offset
        on_bytes(len(batch))
        skip = cut.offset - offset              # an origin without ranges: skip what we hold
        offset += len(batch)
        if skip < len(batch):
            await cut.feed(batch[max(0, skip):])

    # batches end at piece boundaries, so each is written and hashed as it is; a body that
    # starts where the cutter is goes into the file from a worker thread (`_Cutter.take_now`)
    await resp.read_body(sink, boundary=cut.files.piece_size, batch=PieceWriter.BATCH,
                         into=cut if offset == cut.offset else None)
    if cut.offset < cut.files.length:
        raise SourceError(f"origin closed the connection at byte {cut.offset} of {cut.files.length}")
