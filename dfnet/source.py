"""Fetching from the origin: the only code that talks to the source of a file.

Rules kept here:
- Only http and https URLs with a host are fetched; anything else is a `SourceError` of kind
  "url" before any connection is made.
- The caller's source headers (credentials included) go to the origin and nowhere else; this
  module never logs them. Headers the transfer itself controls (Range, Host, conditional
  headers, hop-by-hop ones) are dropped from them.
- A response's total length comes from Content-Range (206) or Content-Length (200); an origin
  that gives neither is refused (pieces need a length up front).
- Every network step has a timeout; every failure is one `SourceError` line whose `kind` tells
  the caller which exit code it maps to: url, network, status (with `status`), protocol.
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from .logs import redact_url

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0
_CONTROLLED = {"range", "host", "if-range", "if-none-match", "if-modified-since", "connection",
               "content-length", "transfer-encoding", "keep-alive", "upgrade", "te", "trailer",
               "proxy-connection", "accept-encoding"}
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


class SourceError(Exception):
    """The origin could not give what was asked; one line, with a kind for exit codes."""

    def __init__(self, message: str, kind: str = "network", status: int | None = None):
        super().__init__(" ".join(str(message).split()))
        self.kind = kind
        self.status = status


def check_url(url: object) -> str:
    if not isinstance(url, str) or len(url) > 8192:
        raise SourceError(f"bad URL {str(url)[:80]!r}", "url")
    try:
        parts = urlsplit(url)
        parts.port
    except ValueError as e:
        raise SourceError(f"bad URL {url[:80]!r}: {e}", "url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SourceError(f"bad URL {url[:80]!r}: only http:// and https:// URLs with a host", "url")
    if any(c in url for c in "\r\n\t "):
        raise SourceError(f"bad URL {url[:80]!r}: whitespace in URL", "url")
    return url


def source_headers(headers: dict[str, str]) -> dict[str, str]:
    """The caller's headers minus those the transfer controls."""
    return {k: v for k, v in headers.items() if k.lower() not in _CONTROLLED}


@dataclass
class SourceResponse:
    status: int               # 200, 206 or 304
    length: int               # the whole file's length (0 for 304)
    start: int                # offset of the first byte of the body
    etag: str | None
    last_modified: str | None
    response: aiohttp.ClientResponse

    @property
    def content(self) -> aiohttp.StreamReader:
        return self.response.content

    def close(self) -> None:
        self.response.release()


def client_timeout() -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S)


async def open_source(session: aiohttp.ClientSession, url: str, headers: dict[str, str], *,
                      start: int = 0, end: int | None = None, if_range: str | None = None,
                      etag: str | None = None, last_modified: str | None = None) -> SourceResponse:
    """GET `url` from byte `start` (to `end`, inclusive); conditional when validators are given.

    With `etag`/`last_modified` (a cached copy's validators), a 304 comes back as status 304.
    With `if_range`, an origin whose file changed answers 200 with the new file from byte 0.
    """
    check_url(url)
    h = source_headers(headers)
    if start or end is not None:
        h["Range"] = f"bytes={start}-{'' if end is None else end}"
        if if_range:
            h["If-Range"] = if_range
    if etag:
        h["If-None-Match"] = etag
    if last_modified:
        h["If-Modified-Since"] = last_modified
    h["Accept-Encoding"] = "identity"
    shown = redact_url(url)
    try:
        resp = await session.get(url, headers=h, allow_redirects=True, timeout=client_timeout())
    except asyncio.TimeoutError:
        raise SourceError(f"origin {shown} timed out") from None
    except aiohttp.InvalidURL:
        raise SourceError(f"bad URL {shown!r}", "url") from None
    except aiohttp.ClientError as e:
        raise SourceError(f"cannot reach origin {shown}: {_reason(e)}") from None
    except ValueError as e:       # e.g. a header value aiohttp refuses
        raise SourceError(f"bad request for {shown}: {e}", "url") from None
    status = resp.status
    if status == 304:
        resp.release()
        return SourceResponse(304, 0, 0, resp.headers.get("ETag"), resp.headers.get("Last-Modified"), resp)
    if status not in (200, 206):
        resp.release()
        raise SourceError(f"origin answered {status} {resp.reason or ''} for {shown}", "status", status)
    body_start, length = 0, None
    if status == 206:
        m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
        if not m:
            resp.release()
            raise SourceError(f"origin sent 206 without a usable Content-Range for {shown}", "protocol")
        body_start, length = int(m.group(1)), int(m.group(3))
    else:
        cl = resp.headers.get("Content-Length")
        if cl is not None and cl.isdigit():
            length = int(cl)
    if length is None:
        resp.release()
        raise SourceError(f"origin sent no length for {shown}", "protocol")
    return SourceResponse(status, length, body_start, resp.headers.get("ETag"),
                          resp.headers.get("Last-Modified"), resp)


def _reason(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return " ".join(text.split())[:200]
