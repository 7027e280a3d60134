"""The seed: fetch a task from the origin once, cut it into pieces, digest each.

Rules kept here:
- Bytes stream from the origin straight to the task's data file (written and hashed off the
  event loop, `PieceWriter`); each piece is sha256'd as it passes and offered to the swarm the moment its last byte is written (`on_piece`), so
  children start while the origin download is still running.
- An interrupted download resumes at the first piece not yet held, with `Range` and an
  `If-Range` validator: if the file changed meanwhile, the task fails instead of mixing two
  versions. An origin without range support is read again from the start, skipping what
  is held. After `RETRIES` failures in a row the task fails with the last reason.
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
CHUNK = 256 * 1024
log = logging.getLogger("dfnet.supernode.seed")


async def fetch(files: TaskFiles, session: aiohttp.ClientSession, url: str, headers: dict[str, str],
                first: SourceResponse | None, validator: str | None,
                on_piece: Callable[[int, str], None], on_bytes: Callable[[int], None] = lambda n: None) -> None:
    """Fill `files` from the origin; raises SourceError when it gives up."""
    failures = 0
    resp = first
    while not files.complete:
        piece = files.have.index(0)
        start = piece * files.piece_size
        try:
            if resp is None:
                resp = await open_source(session, url, headers, start=start, if_range=validator)
            if resp.length != files.length or (resp.status == 200 and validator and start and
                                               (resp.etag or resp.last_modified) != validator):
                raise SourceError(f"origin file {redact_url(url)} changed during the download", "changed")
            await _stream(resp, files, start, on_piece, on_bytes)
            failures = 0
        except SourceError as e:
            if e.kind in ("changed", "status", "url"):
                raise
            failures += 1
            if failures > RETRIES:
                raise
            log.warning("origin download interrupted; resuming", extra={"fields": {
                "url": redact_url(url), "reason": str(e), "at_piece": piece}})
            await asyncio.sleep(min(0.2 * 2 ** failures, 5.0))
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as e:
            failures += 1
            if failures > RETRIES:
                raise SourceError(f"origin download of {redact_url(url)} keeps failing: "
                                  f"{type(e).__name__} {e}") from None
            log.warning("origin download interrupted; resuming", extra={"fields": {
                "url": redact_url(url), "reason": f"{type(e).__name__} {e}", "at_piece": piece}})
            await asyncio.sleep(min(0.2 * 2 ** failures, 5.0))
        finally:
            if resp is not None:
                resp.close()
                resp = None


async def _stream(resp: SourceResponse, files: TaskFiles, start: int,
                  on_piece: Callable[[int, str], None], on_bytes: Callable[[int], None]) -> None:
    """Copy the response body into `files` from `start`, committing whole pieces as they end."""
    offset = resp.start
    size = files.piece_size
    piece = start // size
    writer = PieceWriter(files, piece * size)
    end_of_piece = min((piece + 1) * size, files.length)
    async for chunk in resp.content.iter_any():
        on_bytes(len(chunk))
        if offset + len(chunk) <= start:        # an origin without ranges: skip what we hold
            offset += len(chunk)
            continue
        if offset < start:
            chunk = chunk[start - offset:]
            offset = start
        view = memoryview(chunk)
        while view:
            k = min(len(view), end_of_piece - offset)
            if k <= 0:
                raise SourceError("origin sent more bytes than its length", "protocol")
            await writer.feed(view[:k])
            offset += k
            view = view[k:]
            if offset == end_of_piece:
                digest = await writer.digest()
                files.commit(piece, digest)
                on_piece(piece, digest)
                piece += 1
                writer = PieceWriter(files, piece * size)
                end_of_piece = min((piece + 1) * size, files.length)
    if offset < files.length:
        raise SourceError(f"origin closed the connection at byte {offset} of {files.length}")
