"""The supernode's HTTP service: registration, scheduling syncs, the seed cache, its GC.

Owns the task table (task key -> current version -> `SupernodeTask`), the one origin fetch
per task version, cache revalidation, disk GC, and the HTTP routes of `dfnet.protocol`.

Rules kept here:
- One origin request at a time per task key: a thousand peers registering at once cause
  one fetch, not a thousand.
- A complete cached task is revalidated (If-None-Match / If-Modified-Since) when a peer
  registers and the last check is older than `revalidate_s`; 304 keeps it, a 200 starts a
  new task version (a new task id) while peers of the old one finish undisturbed.
- GC: when the cached tasks' bytes pass `cache_high`, the least recently used tasks not in
  use are removed until they fit under `cache_low`. A task fetching or synced recently is in
  use and is never collected.
- An idle peer's sync is held up to `LONG_POLL_S` until the core has work for it, whether it
  came as an HTTP request or on a peer's sync stream (`stream.py`): both run `sync_begin` /
  `sync_hold`, so they apply, decide, hold and count (`dragonfly_scheduler_sync_total`,
  `..._piece_assigned_total`) the same way.
- Source headers are used for the origin fetch and dropped; they are never stored or logged.
- A task first fetched with credentials (Authorization, Cookie, ...) is private: every peer
  that registers for it is checked against the origin with its own headers first, so a peer
  without the right credentials never gets the bytes from the cache.
- A task registered `key_by_digest` (a registry blob) is keyed by its sha256 digest alone, so
  one blob pulled through several repositories is one task, fetched once; its bytes cannot
  change, so it is never revalidated (private ones are still checked per peer).
- A `key_by_digest` task is checked against its digest once fetched (its key is the digest
  alone, so wrong bytes would poison every repository's pull); if the origin sent other bytes
  the task fails and its files are removed. Other tasks' digests are checked by the daemons
  (a wrong `--digest` is the asker's error, exit code 9, and its key names that digest).
- `POST /v1/preheat` warms a task: the seed fetch alone, no peer; it answers when the task is
  cached (or failed).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import secrets
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from dfnet.core.scheduler import SchedulerConfig
from dfnet.core.task import Task, TaskError, piece_size_for, task_id
from dfnet.logs import redact_url
from dfnet.metrics import Metrics
from dfnet.protocol import (TOKEN_HEADER, ProtocolError, Refused, Sync, SyncReply, parse_preheat, parse_register,
                            parse_sync)
from dfnet.source import SourceError, check_url, open_source
from dfnet.storage import StorageError, TaskFiles, check_task_id, task_ids
from dfnet.throttle import bucket
from dfnet.upload import Servable, piece_handler
from models.loader import resolve_upload_slots

from . import seed as seed_fetch
from . import stream
from .tasks import SupernodeTask

LONG_POLL_S = 5.0
READ_BUFFER = 4 << 20
CREDENTIAL_HEADERS = {"authorization", "cookie", "proxy-authorization", "x-amz-security-token"}
MAX_BODY = 4 << 20
log = logging.getLogger("dfnet.supernode")


class Supernode:
    def __init__(self, data: Path, policy, advertise: str, *, node_id: str = "",
                 piece_size: int | None = None, cache_high: int = 50 << 30, cache_low: int = 40 << 30,
                 revalidate_s: float = 30.0, config: SchedulerConfig = SchedulerConfig(),
                 policy_poll_s: float = 30.0, min_upload_bps: float | None = None, offer_stream: bool = True,
                 stream_idle_s: float = stream.IDLE_S):
        self.data = Path(data)
        (self.data / "tasks").mkdir(parents=True, exist_ok=True)
        self.policy = policy                      # a models.deploy.PolicyHandle (piece selector)
        self.policy_poll_s = policy_poll_s
        self.min_upload_bps = min_upload_bps
        self.advertise = advertise
        self.node_id = node_id or f"supernode-{advertise}"
        self.piece_size = piece_size
        self.cache_high, self.cache_low = cache_high, cache_low
        self.revalidate_s = revalidate_s
        self.config = config
        self.offer_stream = offer_stream                  # register replies offer the sync stream
        self.stream_idle_s = stream_idle_s                # a silent sync stream is closed after this
        self.streams: set[stream.SyncStream] = set()      # open sync streams, closed on shutdown
        self.tasks: dict[str, SupernodeTask] = {}         # task id -> task
        self.current: dict[str, str] = {}                 # task key -> task id of the version in use
        self._stored: dict[str, TaskFiles] = {}           # complete tasks from disk, not loaded yet
        self._key_locks: dict[str, asyncio.Lock] = {}
        self._fetches: set[asyncio.Task] = set()
        self.session: aiohttp.ClientSession | None = None
        self.upload_bucket = bucket()
        self.metrics = Metrics()
        m = self.metrics
        m.declare("dragonfly_scheduler_register_peer_total", "counter", "Peers registered.")
        m.declare("dragonfly_scheduler_piece_assigned_total", "counter", "Piece assignments handed out.")
        m.declare("dragonfly_scheduler_sync_total", "counter", "Sync requests served (HTTP and stream messages).")
        m.declare("dragonfly_scheduler_sync_stream_total", "counter", "Sync streams opened.")
        m.declare("dragonfly_cdn_back_source_bytes_total", "counter", "Bytes fetched from origins.")
        m.declare("dragonfly_cdn_upload_bytes_total", "counter", "Piece bytes served to peers.")
        m.declare("dragonfly_cdn_gc_tasks_total", "counter", "Cached tasks removed by GC.")
        m.declare("dragonfly_scheduler_tasks", "gauge", "Tasks known to this supernode.")
        m.declare("dragonfly_scheduler_preheat_total", "counter", "Tasks warmed by preheat.")
        self._load_cache()

    # ---- cache on disk -------------------------------------------------------------------
    def _load_cache(self) -> None:
        for tid in task_ids(self.data / "tasks"):
            files = TaskFiles.open(self.data / "tasks", tid, verify=False)
            if files is None or "key" not in files.meta:
                continue
            self._stored[tid] = files
            if files.meta.get("current"):
                self.current[files.meta["key"]] = tid

    def _task_for(self, tid: str) -> SupernodeTask | None:
        t = self.tasks.get(tid)
        if t is None and tid in self._stored:
            t = self._make_task(self._stored.pop(tid))
            t.revalidated = float("-inf")          # cached by an earlier run: check it first
        return t

    def _make_task(self, files: TaskFiles) -> SupernodeTask:
        meta = files.meta
        task = Task(meta["task_id"], meta.get("url", ""), files.length, files.piece_size)
        selector = self.policy.policy
        t = SupernodeTask(meta["key"], task, files, selector, self.config, resolve_upload_slots(selector),
                          meta["token"], self.node_id, self.advertise, seed=len(self.tasks),
                          seed_upload_bps=0.0 if math.isinf(self.upload_bucket.rate) else self.upload_bucket.rate,
                          **({"min_upload_bps": self.min_upload_bps} if self.min_upload_bps else {}))
        self.tasks[task.id] = t
        self.metrics.set("dragonfly_scheduler_tasks", len(self.tasks))
        return t

    # ---- registration --------------------------------------------------------------------
    async def register(self, request: web.Request) -> web.Response:
        try:
            reg = parse_register(await _json(request))
            check_url(reg.url)
            key = task_key(reg)
        except (ProtocolError, SourceError, TaskError) as e:
            return _error(400, str(e))
        try:
            t = await self._task_for_register(key, reg.url, reg.headers, reg.digest, reg.filter, reg.key_by_digest)
        except SourceError as e:
            return _source_error(e)
        except (StorageError, OSError) as e:
            log.error("cannot store task", extra={"fields": {"reason": str(e)}})
            return _error(507, f"supernode cannot store the task: {e}")
        t.register(reg.peer)
        self.metrics.inc("dragonfly_scheduler_register_peer_total")
        return web.json_response({"task_id": t.task.id, "length": t.task.length,
                                  "piece_size": t.task.piece_size, "token": t.token, "stream": self.offer_stream})

    async def _task_for_register(self, key: str, url: str, headers: dict, digest: str | None,
                                 filt, by_digest: bool = False) -> SupernodeTask:
        lock = self._key_locks.setdefault(key, asyncio.Lock())
        async with lock:
            tid = self.current.get(key)
            t = self._task_for(tid) if tid else None
            if t is not None and t.error is None:
                now = time.monotonic()
                if t.files.meta.get("private"):
                    await self._check_entitled(t, url, headers)
                if t.fetching:
                    return t
                if not t.files.complete:          # cached by an earlier run, cut short
                    self._start_fetch(t, url, headers, None)
                    return t
                if now - t.revalidated < self.revalidate_s or t.files.meta.get("key_by_digest"):
                    return t
                files = t.files
                resp = await open_source(self.session, url, headers, etag=files.meta.get("etag"),
                                         last_modified=files.meta.get("last_modified"))
                if resp.status == 304 or _same_version(files.meta, resp):
                    resp.close()
                    t.revalidated = now
                    return t
                log.info("source changed: new task version", extra={"fields": {"url": redact_url(url)}})
            else:
                resp = await open_source(self.session, url, headers)
            return self._new_version(key, url, headers, digest, resp, filt, by_digest)

    async def _check_entitled(self, t: SupernodeTask, url: str, headers: dict) -> None:
        """A task fetched with credentials is served only to peers whose own headers the origin
        accepts: a conditional request with them (304, or the same version) proves it."""
        meta = t.files.meta
        resp = await open_source(self.session, url, headers, etag=meta.get("etag"),
                                 last_modified=meta.get("last_modified"))
        resp.close()
        if resp.status != 304 and not _same_version(meta, resp):
            raise SourceError("the origin's file changed; register again", "changed")

    def _new_version(self, key: str, url: str, headers: dict, digest: str | None, resp, filt,
                     by_digest: bool = False) -> SupernodeTask:
        validator = resp.etag or resp.last_modified or ""
        tid = task_id(url, filt, tag=f"{digest or ''}|{validator}|{resp.length}")
        old = self.tasks.get(self.current.get(key, ""))
        if old is not None:
            old.files.save_meta(current=False)
        piece = self.piece_size or piece_size_for(resp.length)
        files = TaskFiles.create(self.data / "tasks", tid, {
            "key": key, "length": resp.length, "piece_size": piece, "etag": resp.etag,
            "last_modified": resp.last_modified, "token": secrets.token_hex(16), "current": True,
            "url": redact_url(url), "created": time.time(), "digest": digest, "key_by_digest": by_digest,
            "private": any(h.lower() in CREDENTIAL_HEADERS for h in headers)})
        self.tasks.pop(tid, None)
        t = self._make_task(files)
        self.current[key] = tid
        self._start_fetch(t, url, headers, resp)
        self._gc()
        return t

    def _start_fetch(self, t: SupernodeTask, url: str, headers: dict, first) -> None:
        if t.files.complete:
            if first is not None:
                first.close()
            return
        t.start_fetch()

        async def run() -> None:
            error = None
            try:
                await seed_fetch.fetch(t.files, self.session, url, headers, first, t.validator,
                                       t.piece_cut, lambda n: self.metrics.inc("dragonfly_cdn_back_source_bytes_total", n))
                if t.files.meta.get("key_by_digest") and not await self._digest_ok(t):
                    return
                log.info("task cached", extra={"fields": {"task": t.task.id[:16], "bytes": t.task.length}})
            except SourceError as e:
                error = str(e)
                log.error("origin download failed", extra={"fields": {"task": t.task.id[:16], "reason": error}})
            except (OSError, StorageError) as e:
                error = f"supernode cannot store the task: {e}"
                log.error("cannot store task", extra={"fields": {"task": t.task.id[:16], "reason": str(e)}})
            finally:
                t.end_fetch(error)

        job = asyncio.get_running_loop().create_task(run())
        self._fetches.add(job)
        job.add_done_callback(self._fetches.discard)

    async def _digest_ok(self, t: SupernodeTask) -> bool:
        """Check a fetched task against its digest; a mismatch fails it and drops its files."""
        want = t.files.meta["digest"]
        algo, hexd = want.split(":", 1)
        got = await asyncio.to_thread(t.files.file_digest, algo)
        if got == hexd:
            return True
        t.error = f"the origin's content does not match {want} (got {algo}:{got})"
        log.error("digest mismatch: task dropped", extra={"fields": {"task": t.task.id[:16], "want": want}})
        if self.current.get(t.key) == t.task.id:
            del self.current[t.key]
        t.files.remove()
        return False

    # ---- preheat -------------------------------------------------------------------------
    async def preheat(self, request: web.Request) -> web.Response:
        """Start (or join) the seed fetch of a task and answer once it is cached or failed."""
        try:
            pre = parse_preheat(await _json(request))
            check_url(pre.url)
            key = task_key(pre)
        except (ProtocolError, SourceError, TaskError) as e:
            return _error(400, str(e))
        try:
            t = await self._task_for_register(key, pre.url, pre.headers, pre.digest, pre.filter, pre.key_by_digest)
        except SourceError as e:
            return _source_error(e)
        except (StorageError, OSError) as e:
            return _error(507, f"supernode cannot store the task: {e}")
        while t.fetching:
            await asyncio.sleep(0.1)
        if t.error or not t.files.complete:
            return _error(502, t.error or "the fetch stopped", kind="origin")
        t.last_activity = time.monotonic()
        self.metrics.inc("dragonfly_scheduler_preheat_total")
        return web.json_response({"task_id": t.task.id, "length": t.task.length, "cached": True})

    # ---- scheduling ----------------------------------------------------------------------
    async def sync(self, request: web.Request) -> web.Response:
        t, err = self._authorized(request)
        if err is not None:
            return err
        try:
            msg = parse_sync(await _json(request))
            child, deadline, reply, final = self.sync_begin(t, msg)
            if not final:
                reply = await self.sync_hold(t, child, deadline, reply)
        except ProtocolError as e:
            return _error(400, str(e))
        except Refused as e:
            return web.json_response(e.body(), status=e.status)
        return web.json_response(reply.to_json())

    # The sync's work, shared by the HTTP route and the stream (`stream.py`): apply the
    # results, decide, and hold an idle peer until the core has work for it.
    def sync_begin(self, t: SupernodeTask, msg: Sync) -> tuple[int, float, SyncReply, bool]:
        """Apply a sync's results and decide at once: (child, hold deadline, reply, final).
        Not final: the peer is idle and the core has nothing for it yet; `sync_hold` it."""
        child = t.apply(msg, time.monotonic())
        self.metrics.inc("dragonfly_scheduler_sync_total")
        deadline = time.monotonic() + LONG_POLL_S
        return (child, deadline, *self._decide(t, child, msg.idle, deadline))

    async def sync_hold(self, t: SupernodeTask, child: int, deadline: float, reply: SyncReply) -> SyncReply:
        """Wait (long poll) until the core has work for an idle peer or `LONG_POLL_S` passed."""
        while True:
            event = t.events.get(child)
            if event is not None:
                left = deadline - time.monotonic()
                try:
                    await asyncio.wait_for(event.wait(), timeout=min(reply.retry_after or left, left))
                except asyncio.TimeoutError:
                    pass
            if child not in t.events:        # dropped meanwhile
                raise Refused(409, "peer dropped from the task; register again")
            reply, final = self._decide(t, child, True, deadline)
            if final:
                return reply

    def _decide(self, t: SupernodeTask, child: int, idle: bool, deadline: float) -> tuple[SyncReply, bool]:
        t.events[child].clear()              # a wake-up from here on is for the next wait
        now = time.monotonic()
        reply = t.decide(child, now)
        if t.error:
            raise Refused(502, t.error, kind="origin")
        final = bool(reply.assign or reply.done or reply.back_to_source or not idle or deadline <= now)
        if final:
            self.metrics.inc("dragonfly_scheduler_piece_assigned_total", len(reply.assign))
        return reply, final

    async def leave(self, request: web.Request) -> web.Response:
        t, err = self._authorized(request)
        if err is not None:
            return err
        try:
            body = await _json(request)
            peer = body.get("peer") if isinstance(body, dict) else None
            if not isinstance(peer, str):
                raise ProtocolError("leave: missing 'peer'")
        except ProtocolError as e:
            return _error(400, str(e))
        t.leave(peer)
        return web.json_response({})

    def _authorized(self, request: web.Request):
        try:
            tid = check_task_id(request.match_info["task"])
        except StorageError:
            return None, _error(400, "bad task id")
        t = self._task_for(tid)
        token = request.headers.get(TOKEN_HEADER, "")
        if t is None or not secrets.compare_digest(token, t.token):
            return None, _error(404, "unknown task or token; register again")
        return t, None

    def _servable(self, tid: str) -> Servable | None:
        t = self._task_for(tid)
        return None if t is None or t.error else Servable(t.files, {t.token})

    # ---- settings from the config service ------------------------------------------------
    async def apply_settings(self, version: int, settings: dict) -> None:
        """A new cluster `policy` applies to running tasks at once; a bad one changes nothing."""
        uri = settings.get("policy")
        if not uri or uri == self.policy.uri:
            return
        from models.deploy import PolicyHandle
        from models.loader import PolicyError
        loop = asyncio.get_running_loop()
        try:          # resolving a models:/ URI does registry I/O: off the event loop
            handle = await loop.run_in_executor(None, lambda: PolicyHandle(uri, "piece-selector"))
        except PolicyError as e:
            log.error("cluster policy refused; keeping the current one", extra={"fields": {
                "policy": uri, "current": self.policy.uri, "reason": str(e)}})
            return
        log.info("policy changed", extra={"fields": {"from": self.policy.uri, "to": uri,
                                                     "version": handle.version, "settings_version": version}})
        self.policy = handle
        self._use_policy()

    async def follow_policy(self) -> None:
        """Every `policy_poll_s`: a moved registry alias swaps the selector of every task."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.policy_poll_s)
            handle = self.policy
            if not handle.follows:
                continue
            message = await loop.run_in_executor(None, handle.maybe_reload)
            if message and handle is self.policy:
                if handle.last_error:
                    log.error(message, extra={"fields": {"policy": handle.uri}})
                else:
                    log.info(message, extra={"fields": {"policy": handle.uri, "version": handle.version}})
                    self._use_policy()

    def _use_policy(self) -> None:
        for t in self.tasks.values():
            t.scheduler.selector = self.policy.policy

    # ---- GC ------------------------------------------------------------------------------
    def _gc(self) -> None:
        entries = [(t.files.last_used if not t.in_use else float("inf"), tid, t.files)
                   for tid, t in self.tasks.items()]
        entries += [(f.last_used, tid, f) for tid, f in self._stored.items()]
        total = sum(f.length for _, _, f in entries)
        if total <= self.cache_high:
            return
        for last_used, tid, files in sorted(entries, key=lambda e: e[:2]):
            if total <= self.cache_low or last_used == float("inf"):
                break
            key = files.meta.get("key")
            if key and self.current.get(key) == tid:
                del self.current[key]
            self.tasks.pop(tid, None)
            self._stored.pop(tid, None)
            files.remove()
            total -= files.length
            self.metrics.inc("dragonfly_cdn_gc_tasks_total")
            log.info("gc removed task", extra={"fields": {"task": tid[:16], "bytes": files.length}})

    async def _gc_loop(self) -> None:
        while True:
            await asyncio.sleep(10)
            for t in self.tasks.values():
                if t.in_use:
                    t.files.last_used = time.time()
            self._gc()

    # ---- app -----------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/v1/register", self.register)
        app.router.add_post("/v1/preheat", self.preheat)
        app.router.add_post("/v1/tasks/{task}/sync", self.sync)
        app.router.add_get("/v1/tasks/{task}/stream", lambda r: stream.accept(self, r))
        app.router.add_post("/v1/tasks/{task}/leave", self.leave)
        app.router.add_get("/v1/tasks/{task}/pieces/{piece}", piece_handler(
            self._servable, lambda: (self.upload_bucket,),
            lambda n: self.metrics.inc("dragonfly_cdn_upload_bytes_total", n)))
        app.router.add_get("/metrics", self.metrics.handler)
        app.router.add_get("/healthz", lambda r: web.json_response({"ok": True, "id": self.node_id}))
        app.cleanup_ctx.append(self._lifetime)
        app.on_shutdown.append(self._close_streams)
        return app

    async def _close_streams(self, app: web.Application) -> None:
        for s in list(self.streams):          # held syncs end now, not at the shutdown timeout
            s.close()

    async def _lifetime(self, app: web.Application):
        # a deep read buffer: the default 64 KiB pauses the socket between small reads
        self.session = aiohttp.ClientSession(auto_decompress=False, read_bufsize=READ_BUFFER)
        gc = asyncio.get_running_loop().create_task(self._gc_loop())
        follow = asyncio.get_running_loop().create_task(self.follow_policy())
        yield
        gc.cancel()
        follow.cancel()
        for job in list(self._fetches):
            job.cancel()
        await asyncio.gather(gc, follow, *self._fetches, return_exceptions=True)
        await self.session.close()
        for t in self.tasks.values():
            t.files.close()


def task_key(req) -> str:
    """The key a register or preheat request names: its digest alone for a registry blob
    (`key_by_digest`, sha256 only), else the normalised URL with its filter and digest."""
    if req.key_by_digest:
        return hashlib.sha256(f"digest\0{req.digest}".encode()).hexdigest()
    return task_id(req.url, req.filter, tag=req.digest or "")


def _same_version(meta: dict, resp) -> bool:
    """A 200 to a conditional GET that still names the cached validators and length."""
    same = (resp.etag and resp.etag == meta.get("etag")) or \
        (not resp.etag and resp.last_modified and resp.last_modified == meta.get("last_modified"))
    return bool(same) and resp.length == meta.get("length")


async def _json(request: web.Request):
    try:
        return await request.json(loads=json.loads)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("body is not JSON") from None
    except web.HTTPRequestEntityTooLarge:
        raise ProtocolError("body too large") from None


def _source_error(e: SourceError) -> web.Response:
    """An origin failure, relayed with its kind and status so the daemon picks the exit code."""
    return _error(400 if e.kind == "url" else 502, str(e), origin_status=e.status, kind=e.kind)


def _error(status: int, message: str, **extra) -> web.Response:
    return web.json_response({"error": " ".join(message.split()), **{k: v for k, v in extra.items() if v is not None}},
                             status=status)
