"""The daemon's client side of `dfnet.protocol`: talking to supernodes, with failover.

Rules kept here:
- Every call has a timeout; a supernode that does not answer, or answers 5xx without an
  origin error, is "unavailable" and the next one in the list is tried.
- An origin error relayed by the supernode (502 with `kind`) is the download's error, not the
  supernode's: it is not retried on other supernodes.
- The list comes from `--supernode` flags, or from the config service (nearest first), asked
  again when every known supernode failed.
- Syncs go over the supernode's sync stream when it offers one (`SyncStream`), else over HTTP
  POST; an error on either is the same exception for the same status. A sync whose connection
  ends before any byte of its answer (the supernode's idle close of a stream or a kept-alive
  connection crossing it, or a restart) is sent once more on a new connection: that is not
  the supernode failing (a result it applied already is ignored the second time), and a
  stream it closed while this end was quiet is reopened at the next sync. A sync that times
  out, gets garbage, cannot connect, or is cut again on the new connection is the supernode
  failing (`SupernodeUnavailable`, next supernode). 404 / 409 (on the stream's upgrade, as
  its error line, or as the POST's answer: the supernode no longer knows the task or this
  peer, e.g. it restarted) is `TaskGone`: the download registers again.
"""
from __future__ import annotations

import asyncio
import errno
import json
import logging
from urllib.parse import quote

import aiohttp

from dfnet.errors import PROTOCOL, SOURCE_KIND_CODES, DownloadError, status_code
from dfnet.protocol import (STREAM_UPGRADE, TOKEN_HEADER, ProtocolError, Registered, SyncReply, parse_registered,
                            parse_sync_reply)

REGISTER_TIMEOUT_S = 60.0       # the supernode waits for the origin's headers before it answers
SYNC_TIMEOUT_S = 30.0           # above the supernode's long poll
CONNECT_TIMEOUT_S = 5.0
MAX_REPLY = 4 << 20
log = logging.getLogger("dfnet.daemon")


class SupernodeUnavailable(Exception):
    pass


class TaskGone(Exception):
    """The supernode no longer knows the task or the peer (restart, GC): register again."""


async def _post(session: aiohttp.ClientSession, url: str, body: dict, timeout: float,
                token: str | None = None, again_if_cut: bool = False) -> dict:
    """POST a JSON body; its answer, or the exception for its error. `again_if_cut`: a request
    whose connection ended before any of the answer (a kept-alive connection the supernode
    closed as this went out, a restart) is sent once more on a new connection."""
    headers = {TOKEN_HEADER: token} if token else {}
    for again in (again_if_cut, False):
        answered = False
        try:
            async with session.post(url, json=body, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=5)) as resp:
                answered = True
                try:
                    data = await resp.json(content_type=None)
                except (ValueError, aiohttp.ContentTypeError):
                    data = None
                status = resp.status
            break
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            if again and not answered and _cut(e):
                log.debug("connection to the supernode ended before its answer; sending again",
                          extra={"fields": {"url": url, "reason": type(e).__name__}})
                continue
            raise SupernodeUnavailable(f"{type(e).__name__}: {e}") from None
    if status == 200 and isinstance(data, dict):
        return data
    _raise_for(status, data)


def _cut(e: BaseException) -> bool:
    """The connection ended under a request (closed or reset), as opposed to a timeout,
    a refused connection or a bad answer."""
    return isinstance(e, (aiohttp.ServerDisconnectedError, ConnectionResetError, BrokenPipeError,
                          ConnectionAbortedError)) or \
        (isinstance(e, aiohttp.ClientOSError) and e.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED))


def _raise_for(status: int, data: object) -> None:
    """The exception for a supernode's error answer (HTTP response or stream line)."""
    message = data.get("error", "") if isinstance(data, dict) else ""
    if status == 502 and isinstance(data, dict) and data.get("kind") in SOURCE_KIND_CODES | {"origin": 0}:
        kind = data.get("kind")
        code = status_code(data.get("origin_status")) if kind == "status" else SOURCE_KIND_CODES.get(kind, 4)
        raise DownloadError(message or "origin error", code)
    if status in (404, 409):
        raise TaskGone(message)
    if status == 400:
        raise DownloadError(f"supernode refused the request: {message}", PROTOCOL)
    raise SupernodeUnavailable(f"HTTP {status} {message}")


async def register(session: aiohttp.ClientSession, addr: str, body: dict) -> Registered:
    data = await _post(session, f"http://{addr}/v1/register", body, REGISTER_TIMEOUT_S)
    try:
        return parse_registered(data)
    except ProtocolError as e:
        raise SupernodeUnavailable(str(e)) from None


async def sync(session: aiohttp.ClientSession, addr: str, task_id: str, token: str, body: dict) -> SyncReply:
    # a sync is safe to send twice: the supernode applies a reported result once
    data = await _post(session, f"http://{addr}/v1/tasks/{task_id}/sync", body, SYNC_TIMEOUT_S, token,
                       again_if_cut=True)
    try:
        return parse_sync_reply(data)
    except ProtocolError as e:
        raise SupernodeUnavailable(str(e)) from None


async def leave(session: aiohttp.ClientSession, addr: str, task_id: str, token: str, peer: str) -> None:
    try:
        await _post(session, f"http://{addr}/v1/tasks/{task_id}/leave", {"peer": peer}, 5.0, token)
    except (SupernodeUnavailable, TaskGone, DownloadError):
        pass


class SyncStream:
    """The sync stream to one supernode for one peer and task (see `dfnet.protocol`).

    `sync` sends one sync body and returns its reply, as `sync()` does over HTTP; `open`
    returns None when the supernode answers the upgrade with something other than `101` or
    an error of its own (a proxy in between, say): the caller then syncs over HTTP.
    """

    def __init__(self, addr: str, task_id: str, token: str, peer: str):
        self.addr, self.task_id, self.token, self.peer = addr, task_id, token, peer
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    @classmethod
    async def open(cls, addr: str, task_id: str, token: str, peer: str) -> SyncStream | None:
        s = cls(addr, task_id, token, peer)
        return s if await s._connect() else None

    async def _connect(self) -> bool:
        host, _, port = self.addr.rpartition(":")
        try:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(host.strip("[]"), int(port), limit=MAX_REPLY), CONNECT_TIMEOUT_S)
            self.writer.write((f"GET /v1/tasks/{self.task_id}/stream?peer={quote(self.peer, safe='')} HTTP/1.1\r\n"
                               f"Host: {self.addr}\r\nConnection: Upgrade\r\nUpgrade: {STREAM_UPGRADE}\r\n"
                               f"{TOKEN_HEADER}: {self.token}\r\n\r\n").encode())
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), SYNC_TIMEOUT_S)
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            if status == 101:
                return True
            headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
            length = int({k.strip().lower(): v for k, v in headers.items()}.get("content-length", "0"))
            body = await asyncio.wait_for(self.reader.readexactly(min(length, MAX_REPLY)), SYNC_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError, IndexError) as e:
            self.close()
            raise SupernodeUnavailable(f"sync stream: {type(e).__name__}: {e}") from None
        self.close()
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict) and "error" in data:
            _raise_for(status, data)
        log.warning("supernode offered a sync stream but did not open it; syncing over HTTP",
                    extra={"fields": {"supernode": self.addr, "status": status}})
        return False

    async def sync(self, body: dict) -> SyncReply:
        fresh = False
        if self.writer is None or self.writer.is_closing() or self.reader.at_eof():
            # closed by the supernode while we were quiet (its idle timeout): open it again
            await self._reopen("closed while idle")
            fresh = True
        line = await self._exchange(body)
        if line is None and not fresh:
            # The stream ended before any byte of a reply, on a connection opened before this
            # sync: the supernode's idle close crossed this message (or a restart closed it).
            # Not the supernode failing: open it again and send the sync once more (a result
            # the supernode applied already is ignored the second time). A new process that
            # does not know this peer refuses the reopening with 409: `TaskGone`, register.
            await self._reopen("closed before the reply")
            line = await self._exchange(body)
        if line is None:
            raise SupernodeUnavailable("sync stream closed by the supernode")
        try:
            data = json.loads(line)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            self.close()
            raise SupernodeUnavailable("sync stream: the supernode's reply is not a JSON object")
        if "error" in data:
            self.close()
            _raise_for(data.get("status") if isinstance(data.get("status"), int) else 500, data)
        try:
            return parse_sync_reply(data)
        except ProtocolError as e:
            self.close()
            raise SupernodeUnavailable(str(e)) from None

    async def _reopen(self, why: str) -> None:
        self.close()
        if not await self._connect():
            raise SupernodeUnavailable("sync stream: the supernode stopped offering it")
        log.debug("sync stream reopened", extra={"fields": {"supernode": self.addr, "why": why}})

    async def _exchange(self, body: dict) -> bytes | None:
        """Send one sync and read its reply line; None if the stream ended before any of it."""
        try:
            self.writer.write(json.dumps(body, separators=(",", ":")).encode() + b"\n")
            line = await asyncio.wait_for(self.reader.readline(), SYNC_TIMEOUT_S)
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            line = b""
        except (OSError, asyncio.TimeoutError, ValueError) as e:      # ValueError: a line over MAX_REPLY
            self.close()
            raise SupernodeUnavailable(f"sync stream: {type(e).__name__}: {e}") from None
        if not line:
            self.close()
            return None
        return line

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
