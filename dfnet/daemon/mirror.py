"""The daemon's registry mirror and HTTP proxy: image layers through P2P, the rest untouched.

A container engine (or skopeo) talks to this listener as if it were the registry (a mirror:
`/v2/...` requests, forwarded to `--registry-mirror` or to the registry an
`X-Dragonfly-Registry: https://host[:port]` header names) or as an HTTP proxy (absolute-URI
requests, `GET http://host/path`). Owns the routing rules, the pass-through, and serving blobs
from the daemon's store; the P2P download itself is the daemon's `Download`.

Rules kept here:
- Only requests whose method is GET and whose URL matches a P2P rule (regular expressions,
  searched in the upstream URL; default: `.../v2/<repo>/blobs/sha256:<hex>`) go P2P.
  Everything else passes through: every request header (each of several `Accept` lines
  too) except hop-by-hop ones, every response header likewise, status, body, HEAD, and
  redirects (returned to the client, not followed).
- A blob is one task per digest (`key_by_digest`): the same layer through any repository or
  tag is fetched from the registry once, by whoever goes back to source (the supernode).
  Redirects the registry sends for a blob are followed by that fetcher; a redirect to
  another host drops the registry's `Authorization` (aiohttp's rule, kept on purpose:
  pre-signed storage URLs carry their own credentials, and the registry token must not leak
  to a storage host).
- Nothing is served unverified: a blob is served only after its bytes in the store matched
  its digest (the download's whole-file check; the supernode checks its copy too). A blob
  whose download failed is removed from the store (a failed blob is fetched again from
  scratch, never resumed), and the client gets an error (`DIGEST_INVALID` when this
  daemon's check failed, the registry's own error or a 502 otherwise). A URL matched by a
  custom rule without a digest is served once every piece is verified against the
  supernode's piece digests.
- The client's `Authorization` (and other source headers) go only into the download request,
  i.e. to whoever fetches from the registry; never to peers, logs or metrics. A blob this
  daemon already holds (or is fetching) for a request with other credentials is served only
  after a HEAD of the blob with this request's own headers succeeds at the registry.
- A P2P blob that fails (blob unknown, unauthorized, registry down) gets the registry's own
  answer: the request is passed through once, and an error status from the registry is
  relayed verbatim; if the registry answers 2xx there, the client gets a 502 instead of
  unverified bytes.
- `Range` on a P2P blob: one range gets 206 with `Content-Range`; several ranges are ignored
  and the whole blob is sent with 200 (RFC 9110 allows it; no registry client asks for
  multipart/byteranges); an unsatisfiable one gets 416 with `Content-Range: bytes */LEN`.
- CONNECT (HTTPS tunnelling) is refused with 405: this proxy does not intercept TLS.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from dfnet.errors import DIGEST_MISMATCH, FILE_IO, GENERIC, DownloadError
from dfnet.logs import redact_url
from dfnet.oci import BLOB_PATH
from dfnet.serve import hang_up
from dfnet.storage import StorageError, TaskFiles
from dfnet.upload import send_file_range

from .download import Download, Request
from .service import Job

log = logging.getLogger("dfnet.daemon.mirror")
DEFAULT_RULES = (r"/v2/.+/blobs/sha256:[0-9a-f]{64}$",)
REGISTRY_HEADER = "X-Dragonfly-Registry"
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
              "te", "trailer", "transfer-encoding", "upgrade"}
# headers the P2P transfer controls itself; the rest of the client's headers go to the source
NOT_FOR_SOURCE = HOP_BY_HOP | {"host", "range", "if-range", "if-none-match", "if-modified-since",
                               "accept-encoding", "content-length", REGISTRY_HEADER.lower()}
CREDENTIALS = ("authorization", "cookie", "x-amz-security-token")
PASS_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_UPSTREAM = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+")


class Mirror:
    def __init__(self, daemon, upstream: str | None = None, rules: tuple[str, ...] = DEFAULT_RULES):
        """`daemon`: the `Daemon` (session, store, jobs, metrics); `upstream`: the default registry."""
        self.daemon = daemon
        self.upstream = check_upstream(upstream) if upstream else None
        self.rules = [re.compile(r) for r in rules]
        self.job_creds: dict[str, str] = {}       # job key -> fingerprint of the starter's credentials
        m = daemon.metrics
        m.declare("dragonfly_dfdaemon_proxy_request_total", "counter",
                  "Requests the mirror/proxy answered, by type (p2p, passthrough).")
        m.declare("dragonfly_dfdaemon_proxy_request_bytes_total", "counter",
                  "Body bytes the mirror/proxy sent to clients, by type (p2p, passthrough).")
        m.declare("dragonfly_dfdaemon_proxy_request_failure_total", "counter",
                  "Requests the mirror/proxy could not answer from upstream or P2P, by type.")

    def app(self) -> web.Application:
        # a listener of its own: every path here is the registry's (or, as a proxy, any
        # site's), so none may collide with the local API's /v1/download, /metrics, /healthz
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    # ---- routing -------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "CONNECT":
            return _registry_error(405, "UNSUPPORTED", "CONNECT is not supported: use the mirror or plain HTTP")
        chosen = request.headers.get(REGISTRY_HEADER)
        if chosen is not None:
            try:
                check_upstream(chosen)
            except ValueError as e:
                return _registry_error(400, "UNSUPPORTED", f"{REGISTRY_HEADER}: {e}")
        url = self._target(request)
        if url is None:
            return _registry_error(400, "UNSUPPORTED", f"no upstream registry: start the daemon with "
                                   f"--registry-mirror or send {REGISTRY_HEADER}")
        if request.method == "GET" and any(r.search(url) for r in self.rules):
            return await self._p2p(request, url)
        return await self._passthrough(request, url)

    def _target(self, request: web.Request) -> str | None:
        """The upstream URL: the absolute URI of a proxy request, else registry + path."""
        raw = request._message.url          # aiohttp rewrites request.url's scheme; keep the client's
        if raw.absolute:
            return str(raw)
        chosen = request.headers.get(REGISTRY_HEADER)
        base = check_upstream(chosen) if chosen else self.upstream     # checked in handle()
        return None if base is None else base + request.raw_path

    # ---- pass-through --------------------------------------------------------------------
    async def _passthrough(self, request: web.Request, url: str, errors_only: bool = False) -> web.StreamResponse | None:
        """Forward `request` to `url` and relay the answer; with `errors_only`, relay only an
        error status (>= 400) and return None for anything else."""
        kind = "passthrough"
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if _end_to_end(k, request.headers))
        headers.popall("Host", None)
        headers.popall(REGISTRY_HEADER, None)
        body = request.content if request.body_exists else None
        if not errors_only:
            self.daemon.metrics.inc("dragonfly_dfdaemon_proxy_request_total", type=kind)
        try:
            up = await self.daemon.session.request(request.method, url, headers=headers, data=body,
                                                   allow_redirects=False, timeout=PASS_TIMEOUT)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
            self.daemon.metrics.inc("dragonfly_dfdaemon_proxy_request_failure_total", type=kind)
            log.warning("upstream unreachable", extra={"fields": {"url": redact_url(url), "reason": type(e).__name__}})
            return _registry_error(502, "UNAVAILABLE", f"the mirror cannot reach {redact_url(url)}: "
                                   f"{' '.join(str(e).split())[:200] or type(e).__name__}")
        try:
            if errors_only and up.status < 400:
                return None
            resp = web.StreamResponse(status=up.status, reason=up.reason)
            for k, v in up.headers.items():
                if _end_to_end(k, up.headers):
                    resp.headers.add(k, v)
            if up.content_length is not None:
                resp.content_length = up.content_length
            await resp.prepare(request)
            sent = 0
            if request.method != "HEAD":
                async for chunk in up.content.iter_any():
                    await resp.write(chunk)
                    sent += len(chunk)
            await resp.write_eof()
            self.daemon.metrics.inc("dragonfly_dfdaemon_proxy_request_bytes_total", sent, type=kind)
            return resp
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as e:
            if request.transport is None or request.transport.is_closing():
                return hang_up(request, resp)         # the client went away: not our failure
            # the upstream failed after the headers went out: cut the connection so the
            # client sees the body end early instead of a short body that looks complete
            self.daemon.metrics.inc("dragonfly_dfdaemon_proxy_request_failure_total", type=kind)
            log.warning("pass-through cut", extra={"fields": {"url": redact_url(url), "reason": type(e).__name__}})
            return hang_up(request, resp)
        finally:
            up.release()

    # ---- P2P -----------------------------------------------------------------------------
    async def _p2p(self, request: web.Request, url: str) -> web.StreamResponse:
        m = BLOB_PATH.search(urlsplit(url).path)
        digest = m.group("digest") if m else None
        headers = source_headers(request.headers)
        creds = _fingerprint(headers)
        key = json.dumps(["mirror", digest or url])
        metrics = self.daemon.metrics
        metrics.inc("dragonfly_dfdaemon_proxy_request_total", type="p2p")
        job = self.daemon.jobs.get(key)
        if job is None or (job.task.done() and (job.task.cancelled() or job.task.exception() is not None)):
            req = Request(url, None, headers, digest, (), True, key_by_digest=digest is not None)
            job = Job(asyncio.get_running_loop().create_task(self._fetch(req)))
            job.task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)
            self.daemon.jobs[key] = job                # the daemon's jobs: idle exit and shutdown see it
            self.job_creds[key] = creds
        elif self.job_creds.get(key) and self.job_creds[key] != creds:
            # held for someone else's credentials: this client must prove its own first
            denied = await self._check_entitled(request, url)
            if denied is not None:
                return denied
        try:
            files = await asyncio.shield(job.task)        # a client going away must not stop the download
        except DownloadError as e:
            metrics.inc("dragonfly_dfdaemon_proxy_request_failure_total", type="p2p")
            log.warning("P2P blob failed", extra={"fields": {"url": redact_url(url), "reason": str(e)[:300]}})
            if e.code == DIGEST_MISMATCH:
                return _registry_error(502, "DIGEST_INVALID", f"the registry's bytes do not match {digest}")
            relayed = await self._passthrough(request, url, errors_only=True)
            return relayed if relayed is not None else _registry_error(502, "UNKNOWN", str(e))
        return await self._serve(request, files, digest)

    async def _fetch(self, req: Request) -> TaskFiles:
        dl = Download(self.daemon, req)
        try:
            return await dl.run()
        except DownloadError:
            # a failed blob leaves nothing behind: its pieces matched only the digests the
            # supernode cut, which are wrong if the registry sent other bytes, and a new task
            # version may reuse the task id (same validator and length)
            if dl.files is not None:
                self._discard(dl.files)
            raise
        except (OSError, StorageError) as e:
            raise DownloadError(f"cannot store the blob: {getattr(e, 'strerror', None) or e}", FILE_IO) from None
        except Exception as e:       # a bug reaches the client as one line, and the log in full
            log.exception("blob download crashed", extra={"fields": {"url": redact_url(req.url)}})
            raise DownloadError(f"internal error: {type(e).__name__}: {e}", GENERIC) from None

    def _discard(self, files: TaskFiles) -> None:
        """A failed blob's bytes leave the store: served neither to clients nor to peers."""
        tid = files.meta.get("task_id", "")
        self.daemon.servable.pop(tid, None)
        files.remove()
        log.warning("failed blob removed from the store", extra={"fields": {"task": tid[:16]}})

    async def _check_entitled(self, request: web.Request, url: str) -> web.StreamResponse | None:
        """None if the registry accepts this request's own headers for the blob (HEAD)."""
        headers = {k: v for k, v in source_headers(request.headers).items()}
        try:
            async with self.daemon.session.head(url, headers=headers, allow_redirects=True,
                                                timeout=PASS_TIMEOUT) as r:
                if r.status < 400:
                    return None
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass
        relayed = await self._passthrough(request, url, errors_only=True)
        return relayed or _registry_error(502, "UNAVAILABLE", "the registry did not confirm access to the blob")

    async def _serve(self, request: web.Request, files: TaskFiles, digest: str | None) -> web.StreamResponse:
        length = files.length
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        if digest:
            headers.update({"Docker-Content-Digest": digest, "ETag": f'"{digest}"'})
        span = parse_range(request.headers.get("Range"), length)
        if span == "unsatisfiable":
            return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{length}"})
        start, end, status = (0, length - 1, 200) if span is None else (*span, 206)
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{length}"
        n = max(end - start + 1, 0)
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = n
        await resp.prepare(request)
        metrics = self.daemon.metrics
        try:
            await send_file_range(request, resp, files.data_path, start, n,
                                  on_sent=lambda k: metrics.inc("dragonfly_dfdaemon_proxy_request_bytes_total", k,
                                                                type="p2p"))
        except ConnectionError:
            return hang_up(request, resp)            # the client went away mid-send
        except OSError as e:
            self.daemon.metrics.inc("dragonfly_dfdaemon_proxy_request_failure_total", type="p2p")
            log.warning("serving a blob failed", extra={"fields": {"reason": e.strerror or type(e).__name__}})
            return hang_up(request, resp)
        await resp.write_eof()
        self.daemon.last_activity = time.monotonic()      # serving keeps an idle-exit daemon up
        return resp


def check_upstream(text: str) -> str:
    """A registry base URL, `http(s)://host[:port]`, without a trailing slash."""
    base = str(text).strip().rstrip("/")
    if not _UPSTREAM.fullmatch(base) or not urlsplit(base).hostname:
        raise ValueError(f"bad registry URL {str(text)[:80]!r}: expected http(s)://HOST[:PORT]")
    return base


def source_headers(headers) -> dict[str, str]:
    """The client's end-to-end headers for the source fetch; repeated ones joined with ', '."""
    out: dict[str, str] = {}
    for k, v in headers.items():
        if k.lower() in NOT_FOR_SOURCE:
            continue
        name = next((n for n in out if n.lower() == k.lower()), k)
        out[name] = f"{out[name]}, {v}" if name in out else v
    return out


def parse_range(value: str | None, length: int):
    """(start, end) of a single `bytes=` range; None to send everything (no range, several
    ranges, or one we cannot parse); "unsatisfiable" for a range past the end."""
    if not value or "," in value:
        return None
    m = _RANGE.fullmatch(value.strip())
    if not m or not (m.group(1) or m.group(2)):
        return None
    if m.group(1):
        start = int(m.group(1))
        end = min(int(m.group(2)), length - 1) if m.group(2) else length - 1
        if m.group(2) and int(m.group(2)) < start:
            return None
    else:                                   # a suffix: the last N bytes
        start, end = max(length - int(m.group(2)), 0), length - 1
        if int(m.group(2)) == 0:
            return "unsatisfiable"
    if start >= length:
        return "unsatisfiable"
    return start, end


def _end_to_end(name: str, headers) -> bool:
    low = name.lower()
    if low in HOP_BY_HOP:
        return False
    listed = {t.strip().lower() for v in headers.getall("Connection", []) for t in v.split(",")}
    return low not in listed


def _fingerprint(headers: dict[str, str]) -> str:
    """A hash of the request's credential headers (never the values themselves)."""
    creds = sorted((k.lower(), v) for k, v in headers.items() if k.lower() in CREDENTIALS)
    return hashlib.sha256(json.dumps(creds).encode()).hexdigest() if creds else ""


def _registry_error(status: int, code: str, message: str) -> web.Response:
    """An error in the registry's own format, which registry clients print."""
    return web.json_response({"errors": [{"code": code, "message": " ".join(message.split())}]}, status=status)
