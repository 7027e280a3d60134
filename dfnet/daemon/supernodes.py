"""The daemon's client side of `dfnet.protocol`: talking to supernodes, with failover.

Rules kept here:
- Every call has a timeout; a supernode that does not answer, or answers 5xx without an
  origin error, is "unavailable" and the next one in the list is tried.
- An origin error relayed by the supernode (502 with `kind`) is the download's error, not the
  supernode's: it is not retried on other supernodes.
- The list comes from `--supernode` flags, or from the config service (nearest first), asked
  again when every known supernode failed.
- Syncs go over the supernode's sync stream when it offers one (`SyncStream`), else over HTTP
  POST; an error on either is the same exception for the same status. A stream the supernode
  closed while this end was quiet (its idle timeout) is reopened at the next sync; one that
  fails during an exchange is the supernode failing (`SupernodeUnavailable`, next supernode).
"""
from __future__ import annotations

import asyncio
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
                token: str | None = None) -> dict:
    headers = {TOKEN_HEADER: token} if token else {}
    try:
        async with session.post(url, json=body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=5)) as resp:
            try:
                data = await resp.json(content_type=None)
            except (ValueError, aiohttp.ContentTypeError):
                data = None
            status = resp.status
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
        raise SupernodeUnavailable(f"{type(e).__name__}: {e}") from None
    if status == 200 and isinstance(data, dict):
        return data
    _raise_for(status, data)


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
    data = await _post(session, f"http://{addr}/v1/tasks/{task_id}/sync", body, SYNC_TIMEOUT_S, token)
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
        if self.writer is None or self.writer.is_closing() or self.reader.at_eof():
            # closed by the supernode while we were quiet (idle timeout): open it again
            self.close()
            if not await self._connect():
                raise SupernodeUnavailable("sync stream: the supernode stopped offering it")
        try:
            self.writer.write(json.dumps(body, separators=(",", ":")).encode() + b"\n")
            line = await asyncio.wait_for(self.reader.readline(), SYNC_TIMEOUT_S)
            data = json.loads(line) if line else None
        except (OSError, asyncio.TimeoutError, asyncio.LimitOverrunError, ValueError) as e:
            self.close()
            raise SupernodeUnavailable(f"sync stream: {type(e).__name__}: {e}") from None
        if not isinstance(data, dict):
            self.close()
            raise SupernodeUnavailable("sync stream closed by the supernode")
        if "error" in data:
            self.close()
            _raise_for(data.get("status") if isinstance(data.get("status"), int) else 500, data)
        try:
            return parse_sync_reply(data)
        except ProtocolError as e:
            self.close()
            raise SupernodeUnavailable(str(e)) from None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
