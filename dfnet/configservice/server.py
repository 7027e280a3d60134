"""The config service's HTTP API and its process life.

Routes (JSON in and out; every error is ``{"error": "one line"}``):

- ``POST /v1/supernodes/heartbeat`` ``{"id", "addr", "idc", "location", "tasks"?}`` ->
  ``{"ttl_s", "settings_version"}``: registers or refreshes a supernode. Heartbeat every
  ``ttl_s / 3``.
- ``GET /v1/supernodes?idc=&location=`` -> ``{"supernodes": [{"id", "addr", "idc",
  "location", "tasks", "last_seen_s_ago"}, ...]}``: the healthy ones, nearest first
  (``nearest``).
- ``GET /v1/settings`` -> ``{"version", "settings"}``; ``PUT /v1/settings`` with an object of
  keys to set (null deletes) -> the same, after the update (``settings``).
- ``GET /healthz`` -> ``{"status": "ok"}`` once the database answers.

Rules kept here:
- A malformed request (not JSON, not an object, a missing or unknown field, a wrong type, a
  body over 64 KiB, an unknown query parameter) is a 400; a wrong route 404, a wrong method
  405; all with a JSON one-line error. An unexpected failure is logged with its traceback and
  answered 500 ``{"error": "internal error"}``, never with the traceback.
- The database is used from one worker thread (``store`` rules); handlers never block the loop.
- The process prints one JSON line ``{"listening": "HOST:PORT"}`` on stdout once it accepts
  connections (the real port when asked for port 0), logs JSON lines on stderr (``dfnet.logs``,
  under the ``dfnet.configservice`` logger), and stops cleanly on SIGTERM or SIGINT.
"""
from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from aiohttp import web

from dfnet.configservice.addresses import join_hostport, split_hostport
from dfnet.configservice.nearest import nearest_first
from dfnet.configservice.settings import SettingsError, validate_changes
from dfnet.configservice.store import Store, StoreError

__all__ = ["ConfigService", "serve", "DEFAULT_TTL_S", "MAX_BODY_BYTES"]

DEFAULT_TTL_S = 6.0
MAX_BODY_BYTES = 64 * 1024
MAX_TEXT = 256            # longest id, idc, location accepted
MAX_TASKS = 10**9

log = logging.getLogger("dfnet.configservice")


class BadRequest(Exception):
    """A request the service refuses with 400; the message is the one-line error."""


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": " ".join(message.split())}, status=status)


@web.middleware
async def _errors_as_json(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as e:
        log.info("bad request", extra={"fields": {"method": request.method, "path": request.path, "error": str(e)}})
        return _error(400, str(e))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _error(e.status, e.reason)
    except Exception:
        log.exception("request failed", extra={"fields": {"method": request.method, "path": request.path}})
        return _error(500, "internal error")


async def _json_object(request: web.Request) -> dict:
    """The request body as a JSON object, or BadRequest."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise BadRequest(f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BadRequest(f"body larger than {MAX_BODY_BYTES} bytes") from None
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BadRequest(f"body is not JSON: {' '.join(str(e).split())}") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


def _text_field(body: dict, name: str, *, required: bool = True, nonempty: bool = False) -> str:
    if name not in body:
        if required:
            raise BadRequest(f"missing field {name!r}")
        return ""
    value = body[name]
    if not isinstance(value, str):
        raise BadRequest(f"field {name!r} must be a string")
    if len(value) > MAX_TEXT or not value.isprintable():
        raise BadRequest(f"field {name!r} must be printable text of at most {MAX_TEXT} characters")
    if nonempty and not value:
        raise BadRequest(f"field {name!r} must not be empty")
    return value


_HEARTBEAT_FIELDS = ("id", "addr", "idc", "location", "tasks")


def parse_heartbeat(body: dict) -> dict:
    """The supernode record of a heartbeat body, or BadRequest."""
    unknown = [k for k in body if k not in _HEARTBEAT_FIELDS]
    if unknown:
        raise BadRequest(f"unknown field {unknown[0][:64]!r}; known: {', '.join(_HEARTBEAT_FIELDS)}")
    sn = {
        "id": _text_field(body, "id", nonempty=True),
        "addr": _text_field(body, "addr", nonempty=True),
        "idc": _text_field(body, "idc"),
        "location": _text_field(body, "location"),
        "tasks": body.get("tasks"),
    }
    try:
        split_hostport(sn["addr"])
    except ValueError as e:
        raise BadRequest(f"field 'addr': {e}") from None
    tasks = sn["tasks"]
    if tasks is not None and (isinstance(tasks, bool) or not isinstance(tasks, int) or not 0 <= tasks <= MAX_TASKS):
        raise BadRequest(f"field 'tasks' must be an integer from 0 to {MAX_TASKS}")
    return sn


class ConfigService:
    """The handlers and their state: the store, the TTL, and which supernodes are up."""

    def __init__(self, store: Store, ttl_s: float = DEFAULT_TTL_S, clock: Callable[[], float] = time.time):
        self.store = store
        self.ttl_s = ttl_s
        self.clock = clock
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="configservice-db")
        self._up: set[str] = set()        # ids healthy at the last look, for up/lost log lines

    async def _db(self, fn: Callable, *args) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._db_thread, fn, *args)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_errors_as_json])
        app.router.add_post("/v1/supernodes/heartbeat", self.heartbeat)
        app.router.add_get("/v1/supernodes", self.supernodes)
        app.router.add_get("/v1/settings", self.get_settings)
        app.router.add_put("/v1/settings", self.put_settings)
        app.router.add_get("/healthz", self.healthz)
        app.cleanup_ctx.append(self._lifetime)
        return app

    async def _lifetime(self, app: web.Application):
        self._up = {sn["id"] for sn in await self._db(self.store.healthy, self.clock(), self.ttl_s)}
        watcher = asyncio.create_task(self._watch_health())
        yield
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        self._db_thread.shutdown(wait=True)

    async def _watch_health(self) -> None:
        """Log each supernode that stops heartbeating, once, about when its TTL runs out."""
        while True:
            await asyncio.sleep(max(self.ttl_s / 3, 0.1))
            try:
                healthy = {sn["id"] for sn in await self._db(self.store.healthy, self.clock(), self.ttl_s)}
            except StoreError:
                log.exception("database read failed")
                continue
            for lost in sorted(self._up - healthy):
                log.warning("supernode lost", extra={"fields": {"id": lost, "ttl_s": self.ttl_s}})
            self._up &= healthy

    async def heartbeat(self, request: web.Request) -> web.Response:
        sn = parse_heartbeat(await _json_object(request))
        version = await self._db(self.store.heartbeat, sn, self.clock())
        if sn["id"] not in self._up:
            self._up.add(sn["id"])
            log.info("supernode up", extra={"fields": {k: sn[k] for k in ("id", "addr", "idc", "location")}})
        return web.json_response({"ttl_s": self.ttl_s, "settings_version": version})

    async def supernodes(self, request: web.Request) -> web.Response:
        unknown = [k for k in request.query if k not in ("idc", "location")]
        if unknown:
            raise BadRequest(f"unknown query parameter {unknown[0][:64]!r}; known: idc, location")
        query = {k: v for k, v in request.query.items()}
        idc = _text_field(query, "idc", required=False)
        location = _text_field(query, "location", required=False)
        healthy = await self._db(self.store.healthy, self.clock(), self.ttl_s)
        return web.json_response({"supernodes": nearest_first(healthy, idc, location)})

    async def get_settings(self, request: web.Request) -> web.Response:
        version, settings = await self._db(self.store.settings)
        return web.json_response({"version": version, "settings": settings})

    async def put_settings(self, request: web.Request) -> web.Response:
        try:
            changes = validate_changes(await _json_object(request))
        except SettingsError as e:
            raise BadRequest(str(e)) from None
        version, settings, changed = await self._db(self.store.update_settings, changes)
        if changed:
            log.info("settings changed", extra={"fields": {"version": version, "changes": changes}})
        return web.json_response({"version": version, "settings": settings})

    async def healthz(self, request: web.Request) -> web.Response:
        await self._db(self.store.ping)
        return web.json_response({"status": "ok"})


async def serve(host: str, port: int, store: Store, ttl_s: float = DEFAULT_TTL_S,
                announce: Callable[[str], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT. `announce` gets "HOST:PORT" once connections are accepted
    (default: print {"listening": ...} on stdout). OSError if the address cannot be bound."""
    service = ConfigService(store, ttl_s)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):      # before announcing: a stop may follow at once
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(service.app(), access_log=None, handle_signals=False)
    try:
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        listening = join_hostport(bound_host, bound_port)
        (announce or _print_listening)(listening)
        log.info("listening", extra={"fields": {"addr": listening, "db": store.path, "ttl_s": ttl_s}})
        await stop.wait()
        log.info("stopping")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
    log.info("stopped")


def _print_listening(addr: str) -> None:
    print(json.dumps({"listening": addr}), flush=True)
    sys.stdout.flush()
