"""`SourceResponse.read_body`: the origin's body received in place, cut into batches that never
cross a piece boundary, against a real aiohttp origin on loopback (no processes)."""
from __future__ import annotations

import asyncio
import os
import random
import tempfile
import sys
import time
import traceback

import pytest

import aiohttp
from aiohttp import web

from dfnet import serve
from dfnet.sockthread import SocketThread
from dfnet.source import SourceError, open_source

both = pytest.mark.parametrize("mode", ["loop", "thread"])


def receiving_threads() -> int:
    return sum(1 for f in sys._current_frames().values()
               for fr in traceback.walk_stack(f) if fr[0].f_code is SocketThread._thread.__code__)

BODY = random.Random(3).randbytes(3 * 1024 * 1024 + 777)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def origin(cut_after: int | None = None):
    async def handle(request: web.Request) -> web.StreamResponse:
        start = int(request.headers.get("Range", "bytes=0-")[6:].split("-")[0])
        resp = web.StreamResponse(status=206 if start else 200)
        resp.content_length = len(BODY) - start
        if start:
            resp.headers["Content-Range"] = f"bytes {start}-{len(BODY) - 1}/{len(BODY)}"
        await resp.prepare(request)
        sent = start
        while sent < len(BODY):
            k = min(100_003, len(BODY) - sent)
            if cut_after is not None and sent + k > cut_after:
                await resp.write(BODY[sent:cut_after])
                await asyncio.sleep(0.05)
                request.transport.close()
                return resp
            await resp.write(BODY[sent:sent + k])
            sent += k
        return resp

    app = web.Application()
    app.router.add_get("/f", handle)
    return await serve.start(app, "127.0.0.1", 0)


async def read(addr: str, start: int, boundary: int, batch: int, slow: float = 0.0, mode: str = "loop"):
    """The body through an async sink ("loop") or a blocking write in a worker thread ("thread")."""
    got = bytearray()
    sizes: list[tuple[int, int]] = []
    async with aiohttp.ClientSession() as s:
        resp = await open_source(s, f"http://{addr}/f", {}, start=start)
        pos = resp.start

        async def sink(view: memoryview) -> None:
            nonlocal pos
            sizes.append((pos, len(view)))
            got.extend(view)
            pos += len(view)
            if slow:
                await asyncio.sleep(slow)     # a slow disk: the socket must pause, not fill memory

        class Into:                             # in the worker thread, like the seed's cutter
            def write_now(self, view: memoryview) -> None:
                nonlocal pos
                sizes.append((pos, len(view)))
                got.extend(view)
                pos += len(view)

            def take_now(self, rx, n: int) -> int:
                nonlocal pos
                with tempfile.TemporaryFile() as f:
                    taken = 0
                    while taken < n:
                        want = min(batch, (pos // boundary + 1) * boundary - pos, n - taken)
                        k = rx.splice(f.fileno(), 0, want)
                        sizes.append((pos, k))
                        got.extend(os.pread(f.fileno(), k, 0))
                        pos += k
                        taken += k
                        if slow:
                            time.sleep(slow)
                        if k < want:
                            break
                    return taken

        try:
            await resp.read_body(sink, boundary=boundary, batch=batch, into=Into() if mode == "thread" else None)
        finally:
            resp.close()
    return resp, bytes(got), sizes


@both
def test_body_arrives_whole_in_batches_that_respect_boundaries(mode):
    async def main():
        runner, addr = await origin()
        try:
            for start in (0, 1_000_001):
                resp, got, sizes = await read(addr, start, boundary=1 << 20, batch=300_000, slow=0.002, mode=mode)
                assert got == BODY[start:]
                assert resp.taken
                if mode == "thread":
                    continue                    # with `into`, batches are the consumer's business
                for pos, n in sizes:
                    assert 0 < n <= 300_000
                    assert pos // (1 << 20) == (pos + n - 1) // (1 << 20)
        finally:
            await runner.cleanup()
    run(main())


@both
def test_a_cut_connection_ends_the_read_with_what_arrived(mode):
    async def main():
        runner, addr = await origin(cut_after=1_500_000)
        try:
            _, got, _ = await read(addr, 0, boundary=1 << 20, batch=1 << 18, mode=mode)
            assert got == BODY[:len(got)] and len(got) <= 1_500_000
        finally:
            await runner.cleanup()
    run(main())


@both
def test_a_silent_origin_times_out(monkeypatch, mode):
    import dfnet.source as source
    monkeypatch.setattr(source, "READ_TIMEOUT_S", 0.3)

    async def main():
        async def handle(request):
            resp = web.StreamResponse()
            resp.content_length = len(BODY)
            await resp.prepare(request)
            await resp.write(BODY[:200_000])
            await asyncio.sleep(5)
            return resp
        app = web.Application()
        app.router.add_get("/f", handle)
        runner, addr = await serve.start(app, "127.0.0.1", 0)
        try:
            try:
                await read(addr, 0, boundary=1 << 20, batch=1 << 16, mode=mode)
            except SourceError as e:
                assert "no byte from the origin" in str(e)
            else:
                raise AssertionError("a stalled origin must fail the read")
        finally:
            await runner.cleanup()
    run(main())


def test_a_cancelled_thread_read_ends_its_thread_and_connection():
    async def main():
        closed = asyncio.Event()

        async def handle(request):
            resp = web.StreamResponse()
            resp.content_length = len(BODY)
            await resp.prepare(request)
            await resp.write(BODY[:200_000])
            try:
                for i in range(300):            # a byte now and then: the read is not stalled
                    await asyncio.sleep(0.1)
                    await resp.write(BODY[200_000 + i:200_001 + i])
            except ConnectionError:
                closed.set()                    # the client went away
            return resp
        app = web.Application()
        app.router.add_get("/f", handle)
        runner, addr = await serve.start(app, "127.0.0.1", 0)
        try:
            job = asyncio.create_task(read(addr, 0, boundary=1 << 20, batch=1 << 16, mode="thread"))
            await asyncio.sleep(0.3)
            assert receiving_threads() == 1
            t0 = time.monotonic()
            job.cancel()
            with pytest.raises(asyncio.CancelledError):
                await job
            assert time.monotonic() - t0 < 1 and receiving_threads() == 0
            await asyncio.wait_for(closed.wait(), 5)
        finally:
            await runner.cleanup()
    run(main())


def test_the_seed_cuts_whole_pieces_from_a_body_taken_over_mid_stream(tmp_path):
    """Through `dfnet.supernode.seed.fetch`: the body's first bytes come with the header (copied
    in), the rest is spliced by the worker thread; every piece's bytes and digest are right."""
    import hashlib

    from dfnet.storage import TaskFiles
    from dfnet.supernode import seed

    async def main():
        runner, addr = await origin()
        try:
            piece = 1 << 20
            files = TaskFiles.create(tmp_path, "a" * 64, {"length": len(BODY), "piece_size": piece})
            offered: dict[int, str] = {}
            counted = []
            async with aiohttp.ClientSession() as s:
                await seed.fetch(files, s, f"http://{addr}/f", {}, None, None, offered.__setitem__, counted.append)
            assert files.complete and files.read(0, len(BODY)) == BODY
            want = [hashlib.sha256(BODY[p * piece:(p + 1) * piece]).hexdigest() for p in range(files.n_pieces)]
            assert files.digests == want and [offered[p] for p in range(files.n_pieces)] == want
            assert sum(counted) == len(BODY)
            files.close()
        finally:
            await runner.cleanup()
    run(main())


@both
def test_a_tls_body_is_decrypted_not_taken_from_the_raw_socket(tmp_path, mode):
    """An https origin's socket carries ciphertext: its body must come through the TLS layer
    (aiohttp's stream), never be received or spliced from the raw socket."""
    import ssl
    import subprocess
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def main():
        async def handle(request: web.Request) -> web.Response:
            return web.Response(body=BODY)
        app = web.Application()
        app.router.add_get("/f", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        got = bytearray()

        async def sink(view: memoryview) -> None:
            got.extend(view)

        class Into:
            def write_now(self, view: memoryview) -> None:
                got.extend(view)

            def take_now(self, rx, n: int) -> int:
                raise AssertionError("a TLS body was taken from the raw socket")
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ctx)) as s:
                resp = await open_source(s, f"https://127.0.0.1:{port}/f", {}, start=0)
                try:
                    await resp.read_body(sink, boundary=1 << 20, batch=1 << 18,
                                         into=Into() if mode == "thread" else None)
                finally:
                    resp.close()
            assert bytes(got) == BODY
        finally:
            await runner.cleanup()
    run(main())
