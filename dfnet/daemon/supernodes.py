"""The daemon's client side of `dfnet.protocol`: talking to supernodes, with failover.

Rules kept here:
- Every call has a timeout; a supernode that does not answer, or answers 5xx without an
  origin error, is "unavailable" and the next one in the list is tried.
- An origin error relayed by the supernode (502 with `kind`) is the download's error, not the
  supernode's: it is not retried on other supernodes.
- The list comes from `--supernode` flags, or from the config service (nearest first), asked
  again when every known supernode failed.
"""
from __future__ import annotations

import asyncio
import logging

import aiohttp

from dfnet.errors import PROTOCOL, SOURCE_KIND_CODES, DownloadError, status_code
from dfnet.protocol import TOKEN_HEADER, ProtocolError, Registered, SyncReply, parse_registered, parse_sync_reply

REGISTER_TIMEOUT_S = 60.0       # the supernode waits for the origin's headers before it answers
SYNC_TIMEOUT_S = 30.0           # above the supernode's long poll
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
