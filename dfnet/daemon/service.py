"""The daemon's services: the local API for dfget, the upload server for peers, rate control.

Owns the host's view: its peer id (kept in its data folder, so a restarted daemon is the same
peer), its task store, the downloads running (one per task, however many dfget runs ask for
it), its rate buckets, and its two listeners.

Rules kept here:
- The local API (downloads, which write files on this host) answers loopback clients only;
  the upload server, which peers reach, serves pieces and nothing else.
- Two dfget runs for the same file share one download; each gets its own output copy.
- Every second the rate controller gets the host's load (NIC counters, business traffic
  included) and sets the download and upload buckets; `--download-limit`/`--upload-limit`
  are the controller's budgets.
- With `idle_exit_s`, the daemon stops after that long with no download and no upload (a
  daemon dfget started keeps serving peers for a while, then goes away).
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import secrets
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
from aiohttp import web

from dfnet.errors import FILE_IO, GENERIC, USAGE, DownloadError
from dfnet.logs import redact_url
from dfnet.metrics import Metrics
from dfnet.protocol import ProtocolError, check_digest
from dfnet.source import SourceError, check_url
from dfnet.storage import StorageError, TaskFiles
from dfnet.throttle import bucket, set_rate
from dfnet.upload import Servable, piece_handler
from models.interfaces import HostLoad

from . import nic as nicmod
from .download import Download, Request, place
from .piecefetch import Pool

log = logging.getLogger("dfnet.daemon")
PROGRESS_EVERY_S = 0.25
READ_BUFFER = 1 << 20


@dataclass
class Job:
    task: asyncio.Task
    listeners: set = field(default_factory=set)
    done: int = 0
    total: int = 0

    def progress(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        for fn in list(self.listeners):
            fn()


class Daemon:
    def __init__(self, data: Path, *, supernodes: list[str] = (), config_service: str | None = None,
                 idc: str = "", location: str = "", rate_controller=None,
                 nic: str | None = None, idle_exit_s: float = 0.0, advertise: str | None = None,
                 policy_poll_s: float = 30.0, budgets: tuple[float | None, float | None] = (None, None)):
        self.data = Path(data)
        (self.data / "tasks").mkdir(parents=True, exist_ok=True)
        self.static_supernodes = list(supernodes)
        self.config_service = config_service
        self.idc, self.location = idc, location
        self.rates = rate_controller            # a models.deploy.PolicyHandle (rate controller)
        self.rate_policy_flag = rate_controller.uri if rate_controller is not None else None
        self.budgets = budgets                  # --download-limit / --upload-limit: win over the cluster's
        self.policy_poll_s = policy_poll_s
        self.task_limit = float("inf")
        self.nic = nic or nicmod.default_interface()
        self.idle_exit_s = idle_exit_s
        self.advertise = advertise
        self.peer_id = self._peer_id()
        self.upload_addr = ""
        self.servable: dict[str, Servable] = {}
        self.jobs: dict[str, Job] = {}
        self.session: aiohttp.ClientSession | None = None
        self.piece_pool = Pool()            # keep-alive connections to parents, for pieces
        self.download_bucket, self.upload_bucket, self.disk_bucket = bucket(), bucket(), bucket()
        self.metrics = Metrics()
        self._rx = self._tx = 0
        self.last_activity = time.monotonic()
        self.stop = asyncio.Event()
        m = self.metrics
        m.declare("dragonfly_dfdaemon_download_task_total", "counter", "Downloads asked for by dfget.")
        m.declare("dragonfly_dfdaemon_download_failure_total", "counter", "Downloads that failed.")
        m.declare("dragonfly_dfdaemon_download_traffic", "counter", "Bytes downloaded, by type (p2p, back_source).")
        m.declare("dragonfly_dfdaemon_upload_traffic", "counter", "Piece bytes served to peers.")
        m.declare("dragonfly_dfdaemon_back_source_total", "counter", "Downloads that went back to the source.")
        m.declare("dragonfly_dfdaemon_piece_corrupt_total", "counter", "Pieces that failed their digest.")
        m.declare("dragonfly_dfdaemon_download_limit_bps", "gauge", "Current P2P download limit (bytes/s).")
        m.declare("dragonfly_dfdaemon_upload_limit_bps", "gauge", "Current P2P upload limit (bytes/s).")

    def _peer_id(self) -> str:
        path = self.data / "peer-id"
        try:
            pid = path.read_text().strip()
            if pid:
                return pid
        except OSError:
            pass
        pid = f"{socket.gethostname()}-{secrets.token_hex(6)}"
        path.write_text(pid)
        return pid

    def peer_json(self) -> dict:
        return {"id": self.peer_id, "addr": self.upload_addr, "idc": self.idc, "location": self.location,
                "upload_bps": 0.0 if math.isinf(self.upload_bucket.rate) else self.upload_bucket.rate,
                "download_bps": 0.0 if math.isinf(self.download_bucket.rate) else self.download_bucket.rate}

    async def supernodes(self) -> list[str]:
        """Supernodes to try, best first: the config service's nearest healthy ones, else flags."""
        if self.config_service:
            try:
                from dfnet.configservice.client import nearest_supernodes
                found = await nearest_supernodes(self.session, self.config_service, self.idc, self.location)
                addrs = [s["addr"] for s in found]
                return addrs + [a for a in self.static_supernodes if a not in addrs]
            except Exception as e:          # the config service down must not stop downloads
                log.warning("config service unavailable", extra={"fields": {"reason": str(e)[:200]}})
        return list(self.static_supernodes)

    def open_task(self, tid: str, length: int, piece_size: int) -> TaskFiles:
        entry = self.servable.get(tid)
        if entry is not None:
            return entry.files
        files = TaskFiles.open(self.data / "tasks", tid, verify=True)
        if files is None or files.length != length or files.piece_size != piece_size:
            if files is not None:
                files.close()
            files = TaskFiles.create(self.data / "tasks", tid, {"length": length, "piece_size": piece_size})
        elif files.finished:
            log.info("resuming", extra={"fields": {"task": tid[:16], "pieces_held": files.finished}})
        return files

    def count_rx(self, n: int) -> None:
        self._rx += n
        self.last_activity = time.monotonic()

    def _count_tx(self, n: int) -> None:
        self._tx += n
        self.last_activity = time.monotonic()
        self.metrics.inc("dragonfly_dfdaemon_upload_traffic", n)

    # ---- local API -----------------------------------------------------------------------
    async def download(self, request: web.Request) -> web.StreamResponse:
        if not _loopback(request.remote):
            return web.json_response({"error": "the local API answers this host only"}, status=403)
        try:
            req = _parse_download(await request.json())
        except (ValueError, ProtocolError, SourceError) as e:
            return web.json_response({"error": " ".join(str(e).split()), "code": USAGE}, status=400)
        self.metrics.inc("dragonfly_dfdaemon_download_task_total")
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        key = json.dumps([req.url, req.filter, req.digest])
        job = self.jobs.get(key)
        if job is None or job.task.done():
            job = Job(asyncio.get_running_loop().create_task(self._run(key, req)))
            job.task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)
            self.jobs[key] = job
        changed = asyncio.Event()
        job.listeners.add(changed.set)
        try:
            await _send(resp, {"event": "start", "peer": self.peer_id})
            while not job.task.done():
                changed.clear()
                waiter = asyncio.ensure_future(changed.wait())
                try:
                    await asyncio.wait([job.task, waiter], timeout=PROGRESS_EVERY_S * 4,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                await _send(resp, {"event": "progress", "bytes": job.done, "length": job.total})
                # at most one progress line per PROGRESS_EVERY_S, but the end goes out at once:
                # a plain sleep here held every download's "done" for the rest of it (0.125 s
                # on average, 3% of a 1 GiB download at 250 MB/s)
                await asyncio.wait([job.task], timeout=PROGRESS_EVERY_S)
            try:
                files = job.task.result()
                if req.output is not None:
                    await asyncio.to_thread(place, files, req.output)
                await _send(resp, {"event": "done", "bytes": files.length, "task": files.meta["task_id"]})
            except DownloadError as e:
                self.metrics.inc("dragonfly_dfdaemon_download_failure_total")
                await _send(resp, {"event": "error", "code": e.code, "message": str(e)})
        except ConnectionResetError:
            pass                     # dfget went away; the download goes on and keeps seeding
        finally:
            job.listeners.discard(changed.set)
        return resp

    async def _run(self, key: str, req: Request) -> TaskFiles:
        dl = Download(self, req, progress=lambda d, t: self.jobs[key].progress(d, t) if key in self.jobs else None)
        try:
            return await dl.run()
        except DownloadError:
            raise
        except (OSError, StorageError) as e:
            raise DownloadError(f"cannot store the download: {getattr(e, 'strerror', None) or e}", FILE_IO) from None
        except Exception as e:        # a bug must reach dfget as one line, and the log in full
            log.exception("download crashed", extra={"fields": {"url": redact_url(req.url)}})
            raise DownloadError(f"internal error: {type(e).__name__}: {e}", GENERIC) from None
        finally:
            self.last_activity = time.monotonic()

    # ---- settings from the config service ------------------------------------------------
    async def _settings_loop(self) -> None:
        if not self.config_service:
            return
        from dfnet.configservice.client import poll_settings
        await poll_settings(self.session, self.config_service, self.apply_settings)

    async def apply_settings(self, version: int, settings: dict) -> None:
        """Cluster limits and rate policy, picked up without a restart; host flags win."""
        self.task_limit = float(settings.get("task_limit") or float("inf"))
        h = self.rates
        if h is not None:
            down = self.budgets[0] if self.budgets[0] is not None else settings.get("download_limit")
            up = self.budgets[1] if self.budgets[1] is not None else settings.get("upload_limit")
            uri = settings.get("rate_policy") or self.rate_policy_flag
            if (uri, down, up) != (h.uri, h.params.get("download_bps"), h.params.get("upload_bps")):
                from models.deploy import PolicyHandle
                from models.loader import PolicyError
                loop = asyncio.get_running_loop()
                try:          # a models:/ URI means registry I/O: off the event loop
                    new = await loop.run_in_executor(None, lambda: PolicyHandle(
                        uri, "rate-controller", download_bps=down, upload_bps=up))
                except PolicyError as e:
                    log.error("cluster rate policy refused; keeping the current one",
                              extra={"fields": {"policy": uri, "reason": str(e)}})
                else:
                    log.info("rate policy changed", extra={"fields": {
                        "from": h.uri, "to": uri, "version": new.version, "download_bps": down, "upload_bps": up}})
                    self.rates = new
        log.info("settings applied", extra={"fields": {"settings_version": version}})

    async def _follow_policy(self) -> None:
        """Every `policy_poll_s`: a moved registry alias swaps the rate controller."""
        loop = asyncio.get_running_loop()
        while self.rates is not None:
            await asyncio.sleep(self.policy_poll_s)
            h = self.rates
            if not h.follows:
                continue
            message = await loop.run_in_executor(None, h.maybe_reload)
            if message:
                (log.error if h.last_error else log.info)(message, extra={"fields": {"policy": h.uri}})

    # ---- rate control --------------------------------------------------------------------
    async def _rate_loop(self) -> None:
        if self.rates is None:
            return
        cap = nicmod.capacity_bps(self.nic)
        last = nicmod.counters(self.nic) or (0, 0)
        last_p2p = (self._rx, self._tx)
        t_last = time.monotonic()
        recent_rx: deque = deque(maxlen=30)
        recent_tx: deque = deque(maxlen=30)
        first = True
        while True:
            if not first:
                await asyncio.sleep(1.0)
            first = False
            now = time.monotonic()
            dt = max(now - t_last, 1e-3)
            cur = nicmod.counters(self.nic) or last
            rx, tx = (cur[0] - last[0]) / dt, (cur[1] - last[1]) / dt
            p_rx, p_tx = (self._rx - last_p2p[0]) / dt, (self._tx - last_p2p[1]) / dt
            recent_rx.append(rx)
            recent_tx.append(tx)
            obs = HostLoad(cap, cap, rx, tx, p_rx, p_tx, dt, (), np.array(recent_rx), np.array(recent_tx))
            try:
                lim = self.rates.policy.limit(obs, now)
                set_rate(self.download_bucket, max(lim.download_bps, 1.0))
                set_rate(self.upload_bucket, max(lim.upload_bps, 1.0))
            except Exception as e:       # a broken policy keeps the last limits, and says so
                log.error("rate controller failed; keeping limits", extra={"fields": {"reason": str(e)[:200]}})
            self.metrics.set("dragonfly_dfdaemon_download_limit_bps", self.download_bucket.rate)
            self.metrics.set("dragonfly_dfdaemon_upload_limit_bps", self.upload_bucket.rate)
            last, last_p2p, t_last = cur, (self._rx, self._tx), now

    async def _idle_loop(self) -> None:
        if self.idle_exit_s <= 0:
            return
        while True:
            await asyncio.sleep(min(1.0, self.idle_exit_s))
            busy = any(not j.task.done() for j in self.jobs.values())
            if not busy and time.monotonic() - self.last_activity > self.idle_exit_s:
                log.info("idle; exiting", extra={"fields": {"idle_s": self.idle_exit_s}})
                self.stop.set()
                return

    # ---- apps ----------------------------------------------------------------------------
    def local_app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/v1/download", self.download)
        app.router.add_get("/metrics", self.metrics.handler)
        app.router.add_get("/healthz", lambda r: web.json_response({"ok": True, "peer": self.peer_id,
                                                                    "upload": self.upload_addr}))
        app.cleanup_ctx.append(self._lifetime)
        return app

    def upload_app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 16)
        app.router.add_get("/v1/tasks/{task}/pieces/{piece}", piece_handler(
            self.servable.get, lambda: (self.upload_bucket,), self._count_tx))
        app.router.add_get("/healthz", lambda r: web.json_response({"ok": True}))
        return app

    def proxy_app(self, registry: str | None, rules: tuple[str, ...] | None = None) -> web.Application:
        """The registry mirror / HTTP proxy (`dfnet.daemon.mirror`), on a listener of its own.

        Run it beside `local_app()`, whose lifetime opens the session it uses."""
        from .mirror import DEFAULT_RULES, Mirror
        return Mirror(self, registry, tuple(rules or DEFAULT_RULES)).app()

    async def _lifetime(self, app: web.Application):
        # a deep read buffer: the default 64 KiB pauses each piece's socket between small reads
        self.session = aiohttp.ClientSession(auto_decompress=False, read_bufsize=READ_BUFFER,
                                             connector=aiohttp.TCPConnector(limit=256, limit_per_host=32))
        loops = [asyncio.get_running_loop().create_task(c)
                 for c in (self._rate_loop(), self._idle_loop(), self._settings_loop(), self._follow_policy())]
        yield
        for job in self.jobs.values():
            job.task.cancel()
        for t in loops:
            t.cancel()
        await asyncio.gather(*loops, *(j.task for j in self.jobs.values()), return_exceptions=True)
        await self.session.close()
        self.piece_pool.close()
        for entry in self.servable.values():
            entry.files.close()


def _loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote.split("%")[0]).is_loopback
    except ValueError:
        return False


async def _send(resp: web.StreamResponse, obj: dict) -> None:
    await resp.write((json.dumps(obj) + "\n").encode())


def _parse_download(obj: object) -> Request:
    if not isinstance(obj, dict):
        raise ProtocolError("download request must be a JSON object")
    url = check_url(obj.get("url"))
    output = obj.get("output")
    if output is not None:
        if not isinstance(output, str) or not Path(output).is_absolute():
            raise ProtocolError("output must be an absolute path")
        output = Path(output)
    headers = obj.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise ProtocolError("headers must map names to strings")
    filt = obj.get("filter") or []
    if not isinstance(filt, list) or not all(isinstance(f, str) for f in filt):
        raise ProtocolError("filter must be a list of names")
    limit = obj.get("limit_bps")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
        raise ProtocolError("limit_bps must be a positive number")
    return Request(url, output, headers, check_digest(obj.get("digest")), tuple(filt),
                   bool(obj.get("back_source", True)), float(limit) if limit else float("inf"))
