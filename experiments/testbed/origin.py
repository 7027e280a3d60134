"""The testbed's origin: an HTTP file server with a byte counter, run in the origin namespace.

    python -m experiments.testbed.origin DIR [--listen 0.0.0.0:8080]

Serves `GET /FILE` with Range (206) and ETag / Last-Modified (304 on If-None-Match or
If-Modified-Since), which is what the supernode's resume and revalidation use, and
`GET /_stats` -> {"bytes_sent", "requests"}: body bytes sent, the origin egress every summary
reports. Prints {"listening": "HOST:PORT"} once it listens; SIGTERM stops it.

The testbed keeps its own origin (not the tests' one) so it depends on nothing under tests/.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import signal
from email.utils import formatdate
from pathlib import Path

from aiohttp import web

RANGE = re.compile(r"bytes=(\d+)-(\d*)")
CHUNK = 1 << 20


def make_app(root: Path) -> web.Application:
    stats = {"bytes_sent": 0, "requests": 0}
    root = root.resolve()

    async def serve(request: web.Request) -> web.StreamResponse:
        stats["requests"] += 1
        path = (root / request.match_info["name"]).resolve()
        if root not in path.parents or not path.is_file():
            return web.Response(status=404, text="not found")
        st = path.stat()
        etag = '"' + hashlib.md5(f"{st.st_mtime_ns}-{st.st_size}".encode()).hexdigest() + '"'
        modified = formatdate(st.st_mtime, usegmt=True)
        if request.headers.get("If-None-Match") == etag or (
                "If-None-Match" not in request.headers and request.headers.get("If-Modified-Since") == modified):
            return web.Response(status=304, headers={"ETag": etag, "Last-Modified": modified})
        size = st.st_size
        start, end, status = 0, size - 1, 200
        m = RANGE.fullmatch(request.headers.get("Range", ""))
        if m and request.headers.get("If-Range") in (None, etag, modified):
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            if start >= size:
                return web.Response(status=416)
            status = 206
        headers = {"ETag": etag, "Last-Modified": modified, "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = end - start + 1
        await resp.prepare(request)
        with open(path, "rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    break
                await resp.write(chunk)     # counted once written: a cut connection counts what went
                stats["bytes_sent"] += len(chunk)
                left -= len(chunk)
        await resp.write_eof()
        return resp

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats)

    app = web.Application()
    app.router.add_get("/_stats", get_stats)
    app.router.add_get("/{name:.+}", serve)
    return app


async def main() -> None:
    p = argparse.ArgumentParser(prog="python -m experiments.testbed.origin")
    p.add_argument("root")
    p.add_argument("--listen", default="0.0.0.0:8080")
    a = p.parse_args()
    host, port = a.listen.rsplit(":", 1)
    runner = web.AppRunner(make_app(Path(a.root)), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, int(port))
    await site.start()
    bound = site._server.sockets[0].getsockname()[:2]
    print(json.dumps({"listening": f"{bound[0]}:{bound[1]}"}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
