"""Running aiohttp apps as a node process: bind, announce, stop cleanly on a signal.

A node prints one JSON line on stdout once it listens, e.g. `{"listening": "127.0.0.1:8002"}`,
so whoever started it with port 0 (tests, dfget) learns the port; everything else it says goes
to stderr as structured logs. SIGTERM and SIGINT stop it; cleanup runs (files closed, fetches
cancelled).
"""
from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:       # imported where used: dfget parses addresses without loading aiohttp
    from aiohttp import web


def parse_addr(text: str, what: str = "address") -> tuple[str, int]:
    """'HOST:PORT' -> (host, port); a one-line ValueError otherwise."""
    host, sep, port = str(text).rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"bad {what} {text!r}: expected HOST:PORT")
    return host, int(port)


def bound_addr(runner: web.AppRunner) -> str:
    for site in runner.sites:
        server = getattr(site, "_server", None)
        if server and server.sockets:
            host, port = server.sockets[0].getsockname()[:2]
            return f"{host}:{port}"
    raise RuntimeError("not listening")


async def start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, str]:
    from aiohttp import web
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror}") from None
    return runner, bound_addr(runner)


def hang_up(request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
    """End a response whose body cannot be finished (the client left, or the bytes stopped
    after the headers went out): the connection closes, so the client sees a short body and
    never one that looks complete. Returned, not raised: aiohttp logs a raised error as a 500
    with a traceback, and a client hanging up is routine."""
    if request.transport is not None:
        request.transport.close()
    return resp


async def wait_for_signal(stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def announce(**fields: str) -> None:
    print(json.dumps(fields), flush=True)
    sys.stdout.flush()
