"""A real HTTP origin: files from a folder, with a byte counter. Used by the live tests, the
testbed (inside the origin's namespace) and `dfly demo`.

    python -m experiments.origin DIR [--listen 127.0.0.1:0]

Serves `GET /FILE` with Range (206), ETag and Last-Modified (304 on If-None-Match /
If-Modified-Since), and `GET /_stats` -> {"bytes_sent", "requests": [{"path", "headers"}]}.
Fault switches, set with `POST /_faults` {"cut_after": N}: the next response is cut after N
bytes (a dropped connection). Prints {"listening": "HOST:PORT"} once it listens; SIGTERM stops
it. Body bytes are counted as they are written, so a cut connection counts what went.
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


def make_app(root: Path) -> web.Application:
    stats = {"bytes_sent": 0, "requests": []}
    faults = {"cut_after": None}

    async def serve(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        stats["requests"].append({"path": request.path_qs, "headers": dict(request.headers)})
        path = (root / name).resolve()
        if root.resolve() not in path.parents or not path.is_file():
            return web.Response(status=404, text="not found")
        st = path.stat()
        etag = '"' + hashlib.md5(f"{st.st_mtime_ns}-{st.st_size}".encode()).hexdigest() + '"'
        lm = formatdate(st.st_mtime, usegmt=True)
        if request.headers.get("If-None-Match") == etag or (
                "If-None-Match" not in request.headers and request.headers.get("If-Modified-Since") == lm):
            return web.Response(status=304, headers={"ETag": etag, "Last-Modified": lm})
        size = st.st_size
        start, end, status = 0, size - 1, 200
        m = RANGE.fullmatch(request.headers.get("Range", ""))
        if_range = request.headers.get("If-Range")
        if m and (if_range is None or if_range in (etag, lm)):
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            if start >= size:
                return web.Response(status=416)
            status = 206
        n = end - start + 1
        headers = {"ETag": etag, "Last-Modified": lm, "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = n
        await resp.prepare(request)
        cut = faults["cut_after"]
        faults["cut_after"] = None
        with open(path, "rb") as f:
            f.seek(start)
            sent = 0
            while sent < n:
                chunk = f.read(min(1 << 20, n - sent))
                if cut is not None and sent + len(chunk) > cut:
                    chunk = chunk[: cut - sent]
                    await resp.write(chunk)
                    stats["bytes_sent"] += len(chunk)
                    request.transport.close()
                    return resp
                await resp.write(chunk)
                stats["bytes_sent"] += len(chunk)
                sent += len(chunk)
        await resp.write_eof()
        return resp

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats)

    async def set_faults(request: web.Request) -> web.Response:
        faults.update(await request.json())
        return web.json_response(faults)

    app = web.Application()
    app.router.add_get("/_stats", get_stats)
    app.router.add_post("/_faults", set_faults)
    app.router.add_get("/{name:.+}", serve)
    return app


async def main() -> None:
    p = argparse.ArgumentParser(prog="python -m experiments.origin")
    p.add_argument("root")
    p.add_argument("--listen", default="127.0.0.1:0")
    a = p.parse_args()
    host, port = a.listen.rsplit(":", 1)
    runner = web.AppRunner(make_app(Path(a.root)), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, int(port))
    await site.start()
    h, p_ = site._server.sockets[0].getsockname()[:2]
    print(json.dumps({"listening": f"{h}:{p_}"}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
