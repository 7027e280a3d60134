"""The zero-copy piece client (`dfnet.daemon.piecefetch`) against real servers on loopback.

Good answers come from the real upload server (`dfnet.upload.piece_handler` in an aiohttp
app), fetched through `Download._fetch_piece` of a real `Daemon` object (no processes: its
buckets, metrics and task store, none of its listeners). Bad parents are tiny asyncio
servers that answer the way the test says: too many bytes, too few, nothing, a huge header.
"""
from __future__ import annotations

import asyncio
import os
import random
import sys
import tempfile
import time
import traceback

import pytest
from aiohttp import web

from dfnet import serve
from dfnet.core.task import task_id
from dfnet.daemon import piecefetch
from dfnet.daemon.download import Download, PieceFailed, Request
from dfnet.daemon.piecefetch import FetchError, Pool
from dfnet.daemon.service import Daemon
from dfnet.sockthread import SocketThread
from dfnet.storage import TaskFiles
from dfnet.throttle import bucket
from dfnet.upload import Servable, piece_handler

MiB = 1 << 20
PIECE = 2 * MiB + 4321             # not a multiple of the batch: a short last batch per piece
LENGTH = 2 * PIECE + 777           # a short last piece
TOKEN = "tok-" + "a" * 28
TID = task_id("http://origin.invalid/f.bin", ())


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


class Parent:
    """A real upload server holding the whole task; records the client port of each request."""

    def __init__(self, root, rate: float = float("inf")):
        self.rate = rate
        self.data = random.Random(7).randbytes(LENGTH)
        self.files = TaskFiles.create(root / "parent", TID, {"length": LENGTH, "piece_size": PIECE})
        self.files.write(0, self.data)
        for p in range(self.files.n_pieces):
            self.files.commit(p, self.files.sha256(p))
        self.servable = {TID: Servable(self.files, {TOKEN})}
        self.peers: list[int] = []

    async def __aenter__(self):
        @web.middleware
        async def record(request, handler):
            self.peers.append(request.transport.get_extra_info("peername")[1])
            return await handler(request)

        app = web.Application(middlewares=[record])
        app.router.add_get("/v1/tasks/{task}/pieces/{piece}", piece_handler(self.servable.get, lambda: (self.upload,)))
        self.upload = bucket(self.rate)
        self.runner, self.addr = await serve.start(app, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc):
        await self.runner.cleanup()
        self.files.close()

    def sha(self, piece: int) -> str:
        return self.files.sha256(piece)


def child(root, *, pool: Pool | None = None) -> Download:
    """A daemon (the object, not a process) with one download open on the parent's task."""
    host = Daemon(root / "child")
    if pool is not None:
        host.piece_pool = pool
    dl = Download(host, Request("http://origin.invalid/f.bin", None))
    dl.task_bucket = bucket()
    dl._open(TID, LENGTH, PIECE, TOKEN)
    return dl


class Scripted:
    """A parent that answers each request with `answer(n, reader, writer)` (n: the request's
    number on its connection, from 0) once the request header is in; `False` hangs up.
    An answer that waits for `reader.read()` holds the connection until the client closes."""

    def __init__(self, answer):
        self.answer = answer
        self.connections = 0
        self.closed = asyncio.Event()           # a client connection ended

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.addr = "127.0.0.1:%d" % self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.connections += 1
        try:
            n = 0
            while True:
                try:
                    await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                try:
                    if await self.answer(n, reader, writer) is False:
                        return
                except ConnectionError:
                    return
                n += 1
        finally:
            self.closed.set()
            writer.close()


def head(length: int | None, status: str = "200 OK", extra: str = "") -> bytes:
    cl = f"Content-Length: {length}\r\n" if length is not None else ""
    return f"HTTP/1.1 {status}\r\n{cl}{extra}\r\n".encode()


BODY = random.Random(3).randbytes(300_000)


async def fetch(pool: Pool, addr: str, length: int = len(BODY), timeout: float = 10.0, mode: str = "loop") -> bytes:
    """The body through an async sink on the event loop ("loop") or a worker thread ("thread")."""
    got = bytearray()

    async def sink(batch: bytearray) -> None:
        got.extend(batch)

    if mode == "thread":
        into = Into()
        try:
            await pool.fetch(addr, "/v1/tasks/x/pieces/0", {"X-Dfly-Token": "t"}, length, None, timeout=timeout,
                             into=into)
            return into.bytes()
        finally:
            into.close()
    await pool.fetch(addr, "/v1/tasks/x/pieces/0", {"X-Dfly-Token": "t"}, length, sink, timeout=timeout)
    return bytes(got)


class Into:
    """A thread-side consumer like `PieceWriter`: spliced bytes go into a temporary file."""

    def __init__(self, fail_after: int | None = None):
        self.f = tempfile.TemporaryFile()
        self.pos = 0
        self.calls = 0
        self.fail_after = fail_after

    def write_now(self, view) -> None:
        os.pwrite(self.f.fileno(), view, self.pos)
        self.pos += len(view)

    def take_now(self, rx, n: int) -> int:
        taken = 0
        while taken < n:
            want = min(64 * 1024, n - taken)
            k = rx.splice(self.f.fileno(), self.pos, want)
            self.pos += k
            taken += k
            self.calls += 1
            if self.calls == self.fail_after:
                raise OSError(28, "No space left on device")
            if k < want:
                break
        return taken

    def bytes(self) -> bytes:
        return os.pread(self.f.fileno(), self.pos, 0)

    def close(self) -> None:
        self.f.close()


both = pytest.mark.parametrize("mode", ["loop", "thread"])


def receiving_threads() -> int:
    """Threads inside a worker-thread receive right now."""
    return sum(1 for f in sys._current_frames().values()
               for fr in traceback.walk_stack(f) if fr[0].f_code is Pool_receive_code)


Pool_receive_code = SocketThread._thread.__code__      # a worker thread reading a body


# ---- good answers from the real upload server ------------------------------------------------
def test_pieces_arrive_whole_verified_and_committed(tmp_path):
    async def main():
        async with Parent(tmp_path) as parent:
            dl = child(tmp_path)
            h, files = dl.host, dl.files
            for p in range(files.n_pieces):
                n, cost = await dl._fetch_piece(p, parent.addr, TID, TOKEN, parent.sha(p))
                assert n == files.piece_range(p)[1] and cost > 0
            assert files.complete and dl.fetched_pieces == files.n_pieces
            assert files.read(0, LENGTH) == parent.data
            assert files.digests == [parent.sha(p) for p in range(files.n_pieces)]
            assert h._rx == LENGTH
            assert f"dragonfly_dfdaemon_download_traffic{{type=\"p2p\"}} {LENGTH}" in h.metrics.render()
            h.piece_pool.close()
    run(main())


def test_two_pieces_share_one_keep_alive_connection(tmp_path):
    async def main():
        async with Parent(tmp_path) as parent:
            dl = child(tmp_path)
            pool = dl.host.piece_pool
            for p in (0, 1):
                await dl._fetch_piece(p, parent.addr, TID, TOKEN, parent.sha(p))
                assert pool.idle_count(parent.addr) == 1
            assert (pool.connects, pool.reuses) == (1, 1)
            assert len(parent.peers) == 2 and len(set(parent.peers)) == 1     # one client port
            pool.close()
            assert pool.idle_count(parent.addr) == 0
    run(main())


def test_wrong_token_fails_naming_the_status(tmp_path):
    async def main():
        async with Parent(tmp_path) as parent:
            dl = child(tmp_path)
            with pytest.raises(PieceFailed, match="HTTP 403") as e:
                await dl._fetch_piece(0, parent.addr, TID, "not-the-token", parent.sha(0))
            assert not e.value.corrupt and not dl.files.have[0]
            assert dl.host.piece_pool.idle_count(parent.addr) == 0     # that connection closed
    run(main())


def test_wrong_bytes_are_a_corrupt_piece(tmp_path):
    async def main():
        async with Parent(tmp_path) as parent:
            dl = child(tmp_path)
            with pytest.raises(PieceFailed, match="digest mismatch") as e:
                await dl._fetch_piece(0, parent.addr, TID, TOKEN, "0" * 64)
            assert e.value.corrupt and not dl.files.have[0]
            assert "dragonfly_dfdaemon_piece_corrupt_total 1" in dl.host.metrics.render()
    run(main())


def test_pacing_holds_the_download_bucket_rate(tmp_path):
    async def main():
        async with Parent(tmp_path) as parent:
            dl = child(tmp_path)
            rate = 4 * MiB
            dl.host.download_bucket = bucket(rate)     # burst: a quarter second (1 MiB)
            t0 = time.monotonic()
            for p in (0, 1):
                await dl._fetch_piece(p, parent.addr, TID, TOKEN, parent.sha(p))
            took = time.monotonic() - t0
            expected = (2 * PIECE - rate * 0.25) / rate     # ~0.8 s
            assert expected * 0.85 <= took <= expected + 1.5, (took, expected)
    run(main())


def test_unreachable_parent_is_a_piece_failure(tmp_path):
    async def main():
        async with Scripted(lambda n, r, w: None) as s:
            addr = s.addr
        dl = child(tmp_path)                            # the port is closed now
        with pytest.raises(PieceFailed, match="cannot connect"):
            await dl._fetch_piece(0, addr, TID, TOKEN, "0" * 64)
    run(main())


# ---- bad parents -----------------------------------------------------------------------------
@both
def test_more_bytes_than_the_content_length_is_corrupt(tmp_path, mode):
    async def answer(n, r, w):
        w.write(head(len(BODY)) + BODY + b"extra bytes")
        await w.drain()
        await r.read()

    async def main():
        async with Scripted(answer) as s:
            with pytest.raises(FetchError, match="past the Content-Length") as e:
                await fetch(Pool(), s.addr, mode=mode)
            assert e.value.corrupt
    run(main())


def test_more_bytes_than_the_piece_holds_is_corrupt_through_fetch_piece(tmp_path):
    async def answer(n, r, w):
        w.write(head(PIECE + 1))
        await w.drain()
        await r.read()

    async def main():
        async with Scripted(answer) as s:
            dl = child(tmp_path)
            with pytest.raises(PieceFailed, match="more bytes than the piece holds") as e:
                await dl._fetch_piece(0, s.addr, TID, TOKEN, "0" * 64)
            assert e.value.corrupt
    run(main())


@both
def test_fewer_bytes_then_close_is_an_ordinary_failure(tmp_path, mode):
    async def answer(n, r, w):
        w.write(head(len(BODY)) + BODY[:100_000])
        await w.drain()
        return False                                    # and close

    async def main():
        async with Scripted(answer) as s:
            with pytest.raises(FetchError, match=f"sent 100000 of {len(BODY)} bytes") as e:
                await fetch(Pool(), s.addr, mode=mode)
            assert not e.value.corrupt
    run(main())


@pytest.mark.parametrize("answer, message", [
    (head(len(BODY) - 1), "announced"),
    (head(None), "without a Content-Length"),
    (head(None, extra="Transfer-Encoding: chunked\r\n"), "Transfer-Encoding: chunked"),
    (head(None, status="404 Not Found"), "HTTP 404"),
    (b"SSH-2.0-OpenSSH\r\n\r\n", "other than HTTP"),
])
def test_answers_that_are_not_a_piece(tmp_path, answer, message):
    async def reply(n, r, w):
        w.write(answer)
        await w.drain()
        await r.read()

    async def main():
        async with Scripted(reply) as s:
            pool = Pool()
            with pytest.raises(FetchError, match=message) as e:
                await fetch(pool, s.addr)
            assert not e.value.corrupt
            await asyncio.wait_for(s.closed.wait(), 5)   # the client closed that connection
            assert pool.idle_count(s.addr) == 0
    run(main())


def test_a_huge_header_is_refused(tmp_path):
    async def answer(n, r, w):
        w.write(b"HTTP/1.1 200 OK\r\n" + b"X-Padding: " + b"x" * (piecefetch.HEADER_MAX + 10) + b"\r\n\r\n")
        await w.drain()
        await r.read()

    async def main():
        async with Scripted(answer) as s:
            with pytest.raises(FetchError, match=f"over {piecefetch.HEADER_MAX} bytes"):
                await fetch(Pool(), s.addr)
    run(main())


def test_a_stalled_parent_times_out_through_fetch_piece(tmp_path):
    async def answer(n, r, w):
        w.write(head(PIECE) + b"x" * 5000)
        await w.drain()
        await r.read()

    async def main():
        async with Scripted(answer) as s:
            dl = child(tmp_path, pool=Pool(stall_timeout=0.5))
            t0 = time.monotonic()
            with pytest.raises(PieceFailed, match="no byte from the parent for 0.5 s") as e:
                await dl._fetch_piece(0, s.addr, TID, TOKEN, "0" * 64)
            assert not e.value.corrupt and 0.4 < time.monotonic() - t0 < 3
            await asyncio.wait_for(s.closed.wait(), 5)
    run(main())


@both
def test_a_parent_that_drips_hits_the_total_timeout(tmp_path, mode):
    async def answer(n, r, w):
        w.write(head(len(BODY)))
        for _ in range(100):
            w.write(b"x")
            await w.drain()
            await asyncio.sleep(0.05)

    async def main():
        async with Scripted(answer) as s:
            with pytest.raises(FetchError, match="within 0.5 s"):
                await fetch(Pool(stall_timeout=0.3), s.addr, timeout=0.5, mode=mode)
            assert receiving_threads() == 0
    run(main())


@both
def test_cancel_closes_the_connection(tmp_path, mode):
    async def answer(n, r, w):
        w.write(head(len(BODY)) + BODY[:1000])
        await w.drain()
        await r.read()

    async def main():
        async with Scripted(answer) as s:
            pool = Pool()
            job = asyncio.create_task(fetch(pool, s.addr, mode=mode))
            await asyncio.sleep(0.3)
            assert receiving_threads() == (mode == "thread")
            t0 = time.monotonic()
            job.cancel()
            with pytest.raises(asyncio.CancelledError):
                await job
            assert time.monotonic() - t0 < 1                # not the stall timeout's 15 s
            assert receiving_threads() == 0                 # the thread ended with the fetch
            await asyncio.wait_for(s.closed.wait(), 5)   # the server saw the socket close
            await asyncio.sleep(0)
            assert not pool._open
    run(main())


@both
def test_a_reused_connection_closed_by_the_parent_is_retried_once_on_a_fresh_one(tmp_path, mode):
    async def answer(n, r, w):
        if n == 1:                          # the second request on a connection: hang up
            return False
        w.write(head(len(BODY)) + BODY)
        await w.drain()

    async def main():
        async with Scripted(answer) as s:
            pool = Pool()
            assert await fetch(pool, s.addr, mode=mode) == BODY
            assert pool.idle_count(s.addr) == 1
            idle = pool._idle[s.addr][0]
            assert not os.get_blocking(idle.transport.get_extra_info("socket").fileno())
            assert await fetch(pool, s.addr, mode=mode) == BODY
            assert (pool.connects, pool.reuses, s.connections) == (2, 1, 2)
            pool.close()
    run(main())


def test_sink_errors_pass_through_and_close_the_connection(tmp_path):
    async def answer(n, r, w):
        w.write(head(len(BODY)) + BODY)
        await w.drain()
        await r.read()

    async def main():
        async with Scripted(answer) as s:
            pool = Pool(batch=64 * 1024)

            async def sink(batch):
                raise OSError(28, "No space left on device")

            with pytest.raises(OSError, match="No space"):
                await pool.fetch(s.addr, "/p", {}, len(BODY), sink, timeout=5)
            await asyncio.wait_for(s.closed.wait(), 5)
            assert pool.idle_count(s.addr) == 0
    run(main())


def test_small_batches_arrive_in_order_with_flow_control(tmp_path):
    async def answer(n, r, w):
        w.write(head(len(BODY)) + BODY)
        await w.drain()

    async def main():
        async with Scripted(answer) as s:
            pool = Pool(batch=7000)
            sizes = []
            got = bytearray()

            async def sink(batch):
                sizes.append(len(batch))
                got.extend(batch)
                await asyncio.sleep(0.001)          # a slow consumer: reading pauses, resumes

            await pool.fetch(s.addr, "/p", {}, len(BODY), sink, timeout=10)
            assert bytes(got) == BODY
            assert all(k == 7000 for k in sizes[:-1]) and sizes[-1] == len(BODY) % 7000
            assert pool.idle_count(s.addr) == 1
            pool.close()
    run(main())


def test_header_line_breaks_are_refused_before_sending(tmp_path):
    async def main():
        with pytest.raises(FetchError, match="line break"):
            await Pool().fetch("127.0.0.1:1", "/p", {"X-Dfly-Token": "a\r\nEvil: 1"}, 1, None, timeout=1)
    run(main())


def test_a_thread_stalled_mid_body_times_out_and_ends(tmp_path):
    async def answer(n, r, w):
        w.write(head(len(BODY)) + BODY[:1000])
        await w.drain()
        await asyncio.sleep(0.2)
        w.write(BODY[1000:200_000])                 # the thread is in its recv by now
        await w.drain()
        await r.read()

    async def main():
        async with Scripted(answer) as s:
            t0 = time.monotonic()
            with pytest.raises(FetchError, match="no byte from the parent for 0.4 s"):
                await fetch(Pool(stall_timeout=0.4), s.addr, mode="thread")
            assert 0.5 < time.monotonic() - t0 < 3 and receiving_threads() == 0
            await asyncio.wait_for(s.closed.wait(), 5)
    run(main())


def test_thread_write_errors_pass_through_and_close_the_connection(tmp_path):
    async def answer(n, r, w):
        w.write(head(len(BODY)) + BODY)
        await w.drain()
        await r.read()

    async def main():
        async with Scripted(answer) as s:
            pool = Pool()
            into = Into(fail_after=2)
            with pytest.raises(OSError, match="No space"):
                await pool.fetch(s.addr, "/p", {}, len(BODY), None, timeout=5, into=into)
            assert into.calls == 2 and receiving_threads() == 0
            into.close()
            await asyncio.wait_for(s.closed.wait(), 5)
            assert pool.idle_count(s.addr) == 0
    run(main())


def test_pool_close_ends_a_receiving_thread(tmp_path):
    async def answer(n, r, w):
        w.write(head(len(BODY)) + BODY[:1000])
        await w.drain()
        await r.read()

    async def main():
        async with Scripted(answer) as s:
            pool = Pool()
            job = asyncio.create_task(fetch(pool, s.addr, mode="thread"))
            await asyncio.sleep(0.3)
            pool.close()                                # daemon shutdown
            with pytest.raises(FetchError):
                await asyncio.wait_for(job, 2)          # not the stall timeout's 15 s
            assert receiving_threads() == 0
    run(main())


def test_pieces_arrive_whole_where_the_kernel_cannot_splice(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "splice")           # the worker thread receives and pwrites instead

    async def main():
        async with Parent(tmp_path) as parent:
            dl = child(tmp_path)
            for p in range(dl.files.n_pieces):
                await dl._fetch_piece(p, parent.addr, TID, TOKEN, parent.sha(p))
            assert dl.files.complete and dl.files.read(0, LENGTH) == parent.data
            dl.host.piece_pool.close()
    run(main())


def test_the_receiving_thread_leaves_no_descriptor_behind(tmp_path):
    async def main():
        async with Parent(tmp_path) as parent:
            dl = child(tmp_path)
            await dl._fetch_piece(0, parent.addr, TID, TOKEN, parent.sha(0))    # warm up
            before = len(os.listdir("/proc/self/fd"))
            for p in range(1, dl.files.n_pieces):
                await dl._fetch_piece(p, parent.addr, TID, TOKEN, parent.sha(p))
            # the parent runs in this process, and its sender thread closes its file and socket
            # just after the child has the last byte: give it a moment (a leak stays)
            deadline = time.monotonic() + 2.0
            while len(os.listdir("/proc/self/fd")) != before and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert len(os.listdir("/proc/self/fd")) == before      # pipes and dups closed
            dl.host.piece_pool.close()
    run(main())


def test_a_window_of_pieces_is_received_at_once_not_queued(tmp_path):
    """16 bodies in flight (a daemon's window) each have a thread now: none waits its turn
    with its parent's upload slot held (the event loop's default executor has 6 here)."""
    async def answer(n, r, w):
        w.write(head(len(BODY)) + BODY[:1000])
        await w.drain()
        await asyncio.sleep(1.0)
        w.write(BODY[1000:])
        await w.drain()

    async def main():
        async with Scripted(answer) as s:
            pool = Pool()
            jobs = [asyncio.create_task(fetch(pool, s.addr, mode="thread")) for _ in range(16)]
            await asyncio.sleep(0.6)
            assert receiving_threads() == 16
            assert all(body == BODY for body in await asyncio.gather(*jobs))
            pool.close()
    run(main())


def test_a_child_that_hangs_up_mid_piece_is_routine_for_the_parent(tmp_path, caplog):
    """A cut, a restart or a timeout closes a child's socket mid-body: the parent logs no
    error (no traceback in a supernode's log) and goes on serving."""
    async def main():
        async with Parent(tmp_path, rate=2 * MiB) as parent:       # paced: the body goes in chunks
            host, port = parent.addr.split(":")
            r, w = await asyncio.open_connection(host, int(port))
            w.write(f"GET /v1/tasks/{TID}/pieces/0 HTTP/1.1\r\nHost: x\r\nX-Dfly-Token: {TOKEN}\r\n\r\n".encode())
            await w.drain()
            got = await r.read(64 * 1024)
            assert got.startswith(b"HTTP/1.1 200")
            w.transport.abort()                                        # gone mid-piece
            await asyncio.sleep(1.5)                                   # the parent's next chunks meet the closed socket
            parent.upload = bucket()
            dl = child(tmp_path)
            await dl._fetch_piece(1, parent.addr, TID, TOKEN, parent.sha(1))
            assert dl.files.have[1]
    run(main())
    errors = [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert not errors, [r.getMessage() for r in errors]


BIG = 16 * MiB          # more than a loopback socket's buffers hold: a sender that is not read blocks


class BigParent:
    """A real upload server with one task of one `BIG` piece, no upload limit."""

    def __init__(self, root):
        self.files = TaskFiles.create(root / "big-parent", TID, {"length": BIG, "piece_size": BIG})
        self.files.write(0, random.Random(5).randbytes(BIG))
        self.files.commit(0, self.files.sha256(0))

    async def __aenter__(self):
        app = web.Application()
        app.router.add_get("/v1/tasks/{task}/pieces/{piece}",
                           piece_handler({TID: Servable(self.files, {TOKEN})}.get, lambda: (bucket(),)))
        self.runner, self.addr = await serve.start(app, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc):
        await self.runner.cleanup()
        self.files.close()

    async def ask(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A request for the piece on a new connection whose receive buffer stays small."""
        import socket
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.setblocking(False)
        host, port = self.addr.split(":")
        await asyncio.get_running_loop().sock_connect(s, (host, int(port)))
        r, w = await asyncio.open_connection(sock=s)
        w.write(f"GET /v1/tasks/{TID}/pieces/0 HTTP/1.1\r\nHost: x\r\nX-Dfly-Token: {TOKEN}\r\n\r\n".encode())
        await w.drain()
        assert (await r.read(64 * 1024)).startswith(b"HTTP/1.1 200")
        return r, w


async def _fetch_big(parent: BigParent, root) -> str:
    """The big piece through a fresh pool, spliced into a fresh task: its sha256."""
    from dfnet.storage import PieceWriter
    files = TaskFiles.create(root, TID, {"length": BIG, "piece_size": BIG})
    writer, pool = PieceWriter(files, 0), Pool()
    try:
        await pool.fetch(parent.addr, f"/v1/tasks/{TID}/pieces/0", {"X-Dfly-Token": TOKEN}, BIG, None,
                         timeout=30, into=writer)
        return writer.hexdigest()
    finally:
        pool.close()
        files.close()


def test_a_child_that_stops_reading_an_unlimited_piece_is_cut_off(tmp_path, monkeypatch):
    """An unlimited piece goes out from a sending thread, which gives up on a child that takes
    no byte for the stall timeout; the parent serves on. (Through the event loop's sendfile,
    such a child held its upload, and the parent's slot, for as long as it stayed connected.)"""
    from dfnet import upload
    monkeypatch.setattr(upload, "STALL_TIMEOUT_S", 0.5)

    async def main():
        async with BigParent(tmp_path) as parent:
            r, w = await parent.ask()
            await asyncio.sleep(4.0)                    # reads nothing: the parent's send stalls (noticed within ~4 x 0.5 s)
            got = 0
            while chunk := await asyncio.wait_for(r.read(1 << 20), 10):
                got += len(chunk)
            w.close()
            assert got < BIG                            # cut off: a short body, then the close
            assert await _fetch_big(parent, tmp_path / "c") == parent.files.sha256(0)
    run(main())


def test_a_child_that_hangs_up_mid_unlimited_piece_is_routine(tmp_path, caplog):
    """The sending thread meets a closed socket: no error in the parent's log, no thread
    left, and the parent goes on serving."""
    async def main():
        async with BigParent(tmp_path) as parent:
            r, w = await parent.ask()
            w.transport.abort()                         # gone mid-piece
            await asyncio.sleep(0.5)
            assert await _fetch_big(parent, tmp_path / "c") == parent.files.sha256(0)
            assert not sending_threads()
    run(main())
    errors = [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert not errors, [r.getMessage() for r in errors]


def sending_threads() -> int:
    """Threads inside a piece upload's `sendfile` right now."""
    from dfnet.sockthread import Receiver
    return sum(1 for f in sys._current_frames().values()
               for fr in traceback.walk_stack(f) if fr[0].f_code is Receiver.send_file.__code__)
