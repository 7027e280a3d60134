"""One download on a daemon: from a dfget request to a verified file in place.

Owns the loop that syncs with a supernode, fetches the pieces it assigns from their parents,
and reports the results; back-to-source; failover between supernodes; the end checks.

Rules kept here:
- Assigned pieces are fetched concurrently, each streamed to its offset while hashed (over
  `piecefetch`'s keep-alive connections, received in place into the batches the hashing
  thread writes, never copied on the event loop; with every bucket unlimited when the piece
  starts, spliced into the file and hashed by one worker thread, and its bytes charged to
  the buckets when it is in, so a limit set meanwhile is repaid by the pieces after it); a piece counts only when its sha256
  equals the supernode's digest, and is then recorded durably (`dfnet.storage`), so a
  daemon killed at any moment resumes with every finished piece and refetches only those
  that were in flight.
- Results go back in batches: after the first piece of a window ends, the daemon gathers
  more for up to `BATCH_WAIT_S` or until half its window is free, then one sync reports them
  all and takes the next assignments. Per piece the protocol costs a fraction of a round
  trip (about 2 / window syncs), not one HTTP request. The syncs go over the supernode's sync
  stream, one connection for the whole download, when its register reply offers one; else
  (an older supernode, `--no-sync-stream`, a proxy that refuses the upgrade) one POST each.
- A piece that does not match is reported corrupt (the core blocklists that parent for this
  task); a parent that fails otherwise is reported and the supernode decides again.
- A supernode that stops answering is replaced by the next (`--supernode` order or the config
  service's nearest-first list); the task id does not change (same URL, same source
  version), so the pieces held carry over. With none left, the download goes back to the
  source if allowed, else fails with a network error.
- When the supernode says back-to-source, the missing pieces come from the origin with
  Range requests, and their digests are reported so other peers can take them from here.
- Source headers go to the supernode (the host that fetches from the origin) and to the
  origin on back-to-source; never to parents, logs or metrics.
- At the end the whole file's digest is checked when one was given, and the output appears
  only complete: written to a temporary name next to it and renamed.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import aiohttp

from dfnet.core.task import piece_size_for, task_id
from dfnet.errors import DIGEST_MISMATCH, FILE_IO, NETWORK, PROTOCOL, SOURCE_KIND_CODES, DownloadError, status_code
from dfnet.logs import redact_url
from dfnet.protocol import TOKEN_HEADER, SyncReply
from dfnet.source import SourceError, open_source
from dfnet.storage import PieceWriter, StorageError, TaskFiles
from dfnet.throttle import bucket, charge, pace
from dfnet.upload import Servable

from . import supernodes as sn
from .piecefetch import FetchError

PIECE_TIMEOUT_S = 60.0
CHUNK = 256 * 1024
SOURCE_CONCURRENCY = 4
BATCH_WAIT_S = 0.05
HELD_S = 1.0            # an idle sync answered after this long was held by the supernode (long poll)
FORGOTTEN_LIMIT = 3     # re-registrations in a row, with no piece gained, before trying the next supernode
log = logging.getLogger("dfnet.daemon.download")


@dataclass
class Request:
    """What dfget asked for."""

    url: str
    output: Path | None
    headers: dict[str, str] = field(default_factory=dict)
    digest: str | None = None          # "sha256:HEX" or "md5:HEX"
    filter: tuple[str, ...] = ()
    back_source: bool = True           # may go to the origin itself when no supernode answers
    limit_bps: float = float("inf")
    key_by_digest: bool = False        # a registry blob: one task per digest, whatever the URL


class PieceFailed(Exception):
    def __init__(self, message: str, corrupt: bool = False):
        super().__init__(message)
        self.corrupt = corrupt


class Download:
    """Runs one request to completion on behalf of a daemon (`host`)."""

    def __init__(self, host, req: Request, progress: Callable[[int, int], None] = lambda done, total: None):
        """`run()` leaves the verified file in the daemon's store; callers `place` copies."""
        self.host = host                    # the Daemon: session, ids, buckets, servables
        self.req = req
        self.progress = progress
        self.files: TaskFiles | None = None
        self.fetched_pieces = 0             # from parents or the origin, this run
        self.task_bucket = None

    # ---- entry ---------------------------------------------------------------------------
    async def run(self) -> TaskFiles:
        self.task_bucket = bucket(min(self.req.limit_bps, self.host.task_limit))
        tried: list[str] = []
        for addr in await self.host.supernodes():
            tried.append(addr)
            try:
                await self._with_supernode(addr)
                return await self._finish()
            except sn.SupernodeUnavailable as e:
                log.warning("supernode unavailable; trying the next", extra={"fields": {
                    "supernode": addr, "reason": str(e)[:200]}})
        if not self.req.back_source:
            raise DownloadError(f"no supernode answered (tried {', '.join(tried) or 'none'}) "
                                "and back-to-source is off", NETWORK)
        log.info("no supernode: downloading from the source", extra={"fields": {"url": redact_url(self.req.url)}})
        await self._back_to_source(None)
        return await self._finish()

    # ---- with a supernode ----------------------------------------------------------------
    async def _with_supernode(self, addr: str) -> None:
        h = self.host
        forgotten = 0          # times in a row the supernode forgot the task with no piece gained
        while True:
            body = {"url": self.req.url, "filter": list(self.req.filter), "digest": self.req.digest,
                    "headers": self.req.headers, "peer": h.peer_json()}
            if self.req.key_by_digest:
                body["key_by_digest"] = True
            reg = await sn.register(h.session, addr, body)
            self._open(reg.task_id, reg.length, reg.piece_size, reg.token)
            held = sum(self.files.have)
            try:
                await self._sync_loop(addr, reg.task_id, reg.token, reg.stream)
                return
            except sn.TaskGone:
                # a restart or a GC is routine; a supernode that forgets the task over and
                # over without us gaining a piece is broken: the next one (or the source) takes over
                forgotten = forgotten + 1 if sum(self.files.have) == held else 1
                if forgotten > FORGOTTEN_LIMIT:
                    raise sn.SupernodeUnavailable(f"it forgot the task {forgotten} times in a row "
                                                  "with no piece gained") from None
                log.info("supernode forgot the task; registering again", extra={"fields": {"supernode": addr}})
                await asyncio.sleep(0.1 * forgotten)

    def _open(self, tid: str, length: int, piece_size: int, token: str) -> None:
        if self.files is None or self.files.meta["task_id"] != tid:
            self.files = self.host.open_task(tid, length, piece_size)
        entry = self.host.servable.setdefault(tid, Servable(self.files))
        entry.tokens.add(token)
        self._report_progress()

    async def _sync_loop(self, addr: str, tid: str, token: str, stream_offered: bool = False) -> None:
        h, files = self.host, self.files
        # the supernode's sync stream when it offers one (one connection for the whole
        # download, a fraction of a request's cost on both ends), else one POST per sync
        stream = await sn.SyncStream.open(addr, tid, token, h.peer_id) if stream_offered else None
        if stream is not None:
            ask = stream.sync
        else:
            async def ask(body: dict) -> SyncReply:
                return await sn.sync(h.session, addr, tid, token, body)
        done: list[list] = []
        failed: list[list] = []
        source: list[list] = []
        have = [p for p in range(files.n_pieces) if files.have[p]]
        inflight: dict[asyncio.Task, tuple[int, str]] = {}
        window = 1
        try:
            while True:
                asked = time.monotonic()
                reply = await ask({
                    "peer": h.peer_id, "done": done, "failed": failed, "source": source,
                    "have": have, "idle": not inflight})
                done, failed, source, have = [], [], [], []
                if files.complete and not inflight:
                    return
                if reply.back_to_source and not inflight:
                    got = await self._back_to_source((addr, tid, token))
                    source.extend([p, files.digests[p]] for p in got)
                    continue
                for a in reply.assign:
                    if files.have[a.piece]:          # proved on disk meanwhile
                        done.append([a.piece, a.parent, 0, 0.0])
                        continue
                    job = asyncio.create_task(self._fetch_piece(a.piece, a.addr, tid, token, a.sha256))
                    inflight[job] = (a.piece, a.parent)
                if reply.done and not inflight and not files.complete:
                    raise DownloadError("supernode says done but pieces are missing", PROTOCOL)
                if not inflight:
                    # an idle sync is a long poll: the supernode held it until a parent freed
                    # a slot for us or its hold (5 s) ended, so ask again now. Sleeping out the
                    # rest of `retry_after` would miss the wake-ups: backed off to 8 s, a child
                    # was deaf for 3 s after each hold, and in the testbed's flash crowd half
                    # the children slept through the first freed slots (parents idle meanwhile).
                    # Only a reply that was not held (a supernode that does not long-poll)
                    # waits out `retry_after`, so the loop cannot spin.
                    held = time.monotonic() - asked
                    wait = reply.retry_after - held if held < HELD_S else 0.0
                    if wait > 0:
                        await asyncio.sleep(wait)
                    continue
                window = max(window, len(inflight))
                # report in batches: wait for the first result, then gather more for up to
                # BATCH_WAIT_S or until half the window is free, so one sync carries several
                # results and several new assignments (the supernode's cost is per sync)
                timeout = reply.retry_after or None
                while inflight:
                    finished, _ = await asyncio.wait(inflight, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                    if not finished:
                        break
                    for job in finished:
                        piece, parent = inflight.pop(job)
                        try:
                            nbytes, cost = job.result()
                            done.append([piece, parent, nbytes, round(cost, 6)])
                        except PieceFailed as e:
                            failed.append([piece, parent, e.corrupt])
                            log.warning("piece failed", extra={"fields": {
                                "piece": piece, "parent": parent, "corrupt": e.corrupt, "reason": str(e)[:200]}})
                    if len(done) + len(failed) >= max(1, window // 2):
                        break
                    timeout = BATCH_WAIT_S
        finally:
            if stream is not None:
                stream.close()
            for job in inflight:
                job.cancel()
            if inflight:
                await asyncio.gather(*inflight, return_exceptions=True)

    async def _fetch_piece(self, piece: int, addr: str, tid: str, token: str, sha: str) -> tuple[int, float]:
        h, files = self.host, self.files
        offset, n = files.piece_range(piece)
        t0 = time.monotonic()
        writer = PieceWriter(files, offset)
        buckets = (h.download_bucket, self.task_bucket, h.disk_bucket)
        received = 0

        async def sink(batch: memoryview) -> None:      # a filled batch, received in place
            nonlocal received
            received += len(batch)
            if received < n:
                await pace(buckets, len(batch))
            else:
                # The piece's last bytes are here already: charge them to the network
                # buckets, but do not sleep on them. Pacing after receipt can only slow the
                # reads that follow; sleeping on the last batch held a piece that had fully
                # arrived (and its parent's slot) until the previous batch's debt was repaid.
                # A 4 MiB piece is 4 batches a page short of 1 MiB plus a 16 KiB tail, and
                # that tail slept ~0.59 s at 10 Mbit/s: +17% on every piece (testbed, Fig. 3
                # at 40 hosts). The debt stays in the buckets, so this host's next batch
                # repays it and the limits hold. The disk limit paces the write as before.
                charge((h.download_bucket, self.task_bucket), len(batch))
                await pace((h.disk_bucket,), len(batch))
            await writer.feed_owned(batch)
            h.count_rx(len(batch))

        path = f"/v1/tasks/{tid}/pieces/{piece}"
        try:
            if all(math.isinf(b.rate) for b in buckets):
                # nothing to pace: one worker thread receives, hashes and writes the piece
                # (see `piecefetch`); its bytes are counted when it is in
                await h.piece_pool.fetch(addr, path, {TOKEN_HEADER: token}, n, None,
                                          timeout=PIECE_TIMEOUT_S, into=writer)
                charge(buckets, n)              # a limit set meanwhile: the next piece repays
                h.count_rx(n)
            else:
                await h.piece_pool.fetch(addr, path, {TOKEN_HEADER: token}, n, sink, timeout=PIECE_TIMEOUT_S)
            digest = await writer.digest()
        except FetchError as e:
            raise PieceFailed(str(e), corrupt=e.corrupt) from None
        except OSError as e:
            raise DownloadError(f"cannot write {files.data_path}: {e.strerror or e}", FILE_IO) from None
        if digest != sha:
            h.metrics.inc("dragonfly_dfdaemon_piece_corrupt_total")
            raise PieceFailed("piece digest mismatch", corrupt=True)
        files.commit(piece, sha)
        self.fetched_pieces += 1
        h.metrics.inc("dragonfly_dfdaemon_download_traffic", n, type="p2p")
        self._report_progress()
        return n, time.monotonic() - t0

    # ---- back to source ------------------------------------------------------------------
    async def _back_to_source(self, via: tuple[str, str, str] | None) -> list[int]:
        """Fetch every missing piece from the origin; return the pieces fetched."""
        h = self.host
        if self.files is None:
            # no supernode gave the grid: ask the origin for the length and use the core's rule
            try:
                resp = await open_source(h.session, self.req.url, self.req.headers, start=0, end=0)
            except SourceError as e:
                raise _source_error(e) from None
            length = resp.length
            resp.close()
            tid = task_id(self.req.url, self.req.filter, tag=f"{self.req.digest or ''}|source|{length}")
            self._open(tid, length, piece_size_for(length), secrets.token_hex(16))
        h.metrics.inc("dragonfly_dfdaemon_back_source_total")
        files = self.files
        missing = [p for p in range(files.n_pieces) if not files.have[p]]
        got: list[int] = []
        sem = asyncio.Semaphore(SOURCE_CONCURRENCY)

        async def one(piece: int) -> None:
            async with sem:
                await self._source_piece(piece)
                got.append(piece)

        async with asyncio.TaskGroup() as tg:
            for p in missing:
                tg.create_task(one(p))
        return got

    async def _source_piece(self, piece: int) -> None:
        h, files = self.host, self.files
        offset, n = files.piece_range(piece)
        writer = PieceWriter(files, offset)
        try:
            resp = await open_source(h.session, self.req.url, self.req.headers, start=offset, end=offset + n - 1)
        except SourceError as e:
            raise _source_error(e) from None
        try:
            if resp.length != files.length:
                raise DownloadError("the origin's file changed during the download", SOURCE_KIND_CODES["changed"])
            skip = offset - resp.start          # an origin without ranges sends from byte 0
            got = 0
            async for chunk in resp.content.iter_chunked(CHUNK):
                if skip > 0:
                    cut = min(skip, len(chunk))
                    chunk, skip = chunk[cut:], skip - cut
                chunk = chunk[: n - got]
                if not chunk:
                    if got >= n:
                        break
                    continue
                await pace((h.download_bucket, self.task_bucket, h.disk_bucket), len(chunk))
                await writer.feed(chunk)
                got += len(chunk)
                h.count_rx(len(chunk))
            digest = await writer.digest()
            if got != n:
                raise DownloadError(f"origin closed the connection early ({got} of {n} bytes of piece {piece})", NETWORK)
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as e:
            raise DownloadError(f"origin download failed: {type(e).__name__}", NETWORK) from None
        finally:
            resp.close()
        files.commit(piece, digest)
        self.fetched_pieces += 1
        h.metrics.inc("dragonfly_dfdaemon_download_traffic", n, type="back_source")
        self._report_progress()

    # ---- the end -------------------------------------------------------------------------
    async def _finish(self) -> TaskFiles:
        files = self.files
        if self.req.digest:
            algo, want = self.req.digest.split(":", 1)
            got = await asyncio.to_thread(files.file_digest, algo)
            if got != want:
                raise DownloadError(f"digest mismatch: expected {algo}:{want}, got {algo}:{got}", DIGEST_MISMATCH)
        return files

    def _report_progress(self) -> None:
        f = self.files
        if f is None:
            return
        done = f.finished * f.piece_size
        if f.n_pieces and f.have[f.n_pieces - 1]:
            done -= f.n_pieces * f.piece_size - f.length
        self.progress(min(done, f.length), f.length)


def _source_error(e: SourceError) -> DownloadError:
    code = status_code(e.status) if e.kind == "status" else SOURCE_KIND_CODES.get(e.kind, NETWORK)
    return DownloadError(str(e), code)


def place(files: TaskFiles, output: Path) -> None:
    """Put the task's bytes at `output` so that it appears only complete.

    A hard link when the output is on the daemon's filesystem (Dragonfly 2 does the same):
    no second copy of a 30 GB file, no second write. The store never writes a finished
    task's file again, and a user who edits the output only makes this daemon serve pieces
    that children reject by digest. Elsewhere, a copy (kernel-side where possible).
    """
    output = Path(output)
    tmp = output.parent / f".{output.name}.dfget-{secrets.token_hex(4)}"
    try:
        os.link(files.data_path, tmp)
        os.replace(tmp, output)
        return
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
    try:
        with open(files.data_path, "rb") as src, open(tmp, "wb") as dst:
            n = files.length
            try:
                offset = 0
                while offset < n:
                    k = os.copy_file_range(src.fileno(), dst.fileno(), n - offset, offset, offset)
                    if k == 0:
                        break
                    offset += k
            except OSError:
                src.seek(0)
                dst.seek(0)
                dst.truncate()
                shutil.copyfileobj(src, dst, 4 << 20)
        os.replace(tmp, output)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise DownloadError(f"cannot write {output}: {e.strerror or e}", FILE_IO) from None
    except StorageError as e:
        raise DownloadError(str(e), FILE_IO) from None
