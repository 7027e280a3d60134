"""What supernodes and daemons call: the config service's client.

Owns the wire format on the client side and the heartbeat loop.

Rules kept here:
- Every request has a timeout (``aiohttp.ClientTimeout(total=timeout)``, default 3 s).
- Every failure (no answer, refused connection, an error status, an answer of the wrong
  shape) raises ``ConfigServiceError`` with one line naming the request and the reason; the
  service's own ``{"error": ...}`` text is passed on.
- ``base_url`` is ``http://HOST:PORT`` (a bare ``HOST:PORT`` means http).
- ``SupernodeHeartbeat`` heartbeats every ``ttl_s / 3`` (the TTL the service answers; 6 s until
  it has answered), never stops because the service is down: it logs one warning when
  heartbeats start failing, retries at the same period, and logs once when they succeed again.
- ``poll_settings`` calls back only when the settings version changes, with the same
  log-once behaviour, so nodes apply new settings without a restart.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable

import aiohttp

__all__ = [
    "ConfigServiceError", "SupernodeInfo", "DEFAULT_TIMEOUT_S", "DEFAULT_TTL_S",
    "heartbeat", "nearest_supernodes", "get_settings", "put_settings",
    "SupernodeHeartbeat", "poll_settings",
]

DEFAULT_TIMEOUT_S = 3.0
DEFAULT_TTL_S = 6.0        # until the service says otherwise (its --supernode-ttl default)

log = logging.getLogger("dfnet.configservice.client")


class ConfigServiceError(Exception):
    """A config-service request that failed; the message is one line."""


@dataclass(frozen=True)
class SupernodeInfo:
    """What a supernode tells the service about itself. `addr` is the HOST:PORT peers use."""
    id: str
    addr: str
    idc: str = ""
    location: str = ""
    tasks: int | None = None      # its load: tasks it is serving now

    def to_json(self) -> dict:
        body = {"id": self.id, "addr": self.addr, "idc": self.idc, "location": self.location}
        if self.tasks is not None:
            body["tasks"] = self.tasks
        return body


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _url(base_url: str, path: str) -> str:
    base = base_url if "://" in base_url else f"http://{base_url}"
    return base.rstrip("/") + path


async def _request(session: aiohttp.ClientSession, method: str, base_url: str, path: str, *,
                   timeout: float, json: Any = None, params: dict | None = None) -> dict:
    url = _url(base_url, path)
    what = f"{method} {url}"
    try:
        async with session.request(method, url, json=json, params=params,
                                   timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            status = resp.status
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = None
    except asyncio.TimeoutError:
        raise ConfigServiceError(f"{what}: no answer within {timeout:g} s") from None
    except (aiohttp.ClientError, OSError) as e:
        raise ConfigServiceError(f"{what}: {_one_line(e) or type(e).__name__}") from None
    if status != 200:
        reason = body.get("error") if isinstance(body, dict) else None
        raise ConfigServiceError(f"{what}: HTTP {status}: {_one_line(reason or 'no error message')}")
    if not isinstance(body, dict):
        raise ConfigServiceError(f"{what}: the answer is not a JSON object")
    return body


def _field(body: dict, name: str, kind: type | tuple, what: str):
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigServiceError(f"{what}: the answer has no valid {name!r}")
    return value


async def heartbeat(session: aiohttp.ClientSession, base_url: str, info: SupernodeInfo, *,
                    timeout: float = DEFAULT_TIMEOUT_S) -> float:
    """Register or refresh `info`; returns the TTL in seconds (heartbeat again within ttl/3)."""
    body = await _request(session, "POST", base_url, "/v1/supernodes/heartbeat", json=info.to_json(), timeout=timeout)
    ttl = float(_field(body, "ttl_s", (int, float), "heartbeat"))
    if not ttl > 0:
        raise ConfigServiceError(f"heartbeat: the answer's ttl_s {ttl} is not positive")
    return ttl


async def nearest_supernodes(session: aiohttp.ClientSession, base_url: str, idc: str = "", location: str = "", *,
                             timeout: float = DEFAULT_TIMEOUT_S) -> list[dict]:
    """The healthy supernodes for a host in `idc` at `location`, nearest first: dicts with
    "id", "addr", "idc", "location", "tasks", "last_seen_s_ago"."""
    params = {k: v for k, v in (("idc", idc), ("location", location)) if v}
    body = await _request(session, "GET", base_url, "/v1/supernodes", params=params, timeout=timeout)
    supernodes = _field(body, "supernodes", list, "supernodes")
    if not all(isinstance(sn, dict) and isinstance(sn.get("addr"), str) for sn in supernodes):
        raise ConfigServiceError("supernodes: the answer has a supernode without an address")
    return supernodes


async def get_settings(session: aiohttp.ClientSession, base_url: str, *,
                       timeout: float = DEFAULT_TIMEOUT_S) -> tuple[int, dict]:
    """(version, settings): rates in bytes/s, policies as URIs (dfnet.configservice.settings)."""
    body = await _request(session, "GET", base_url, "/v1/settings", timeout=timeout)
    return _field(body, "version", int, "settings"), _field(body, "settings", dict, "settings")


async def put_settings(session: aiohttp.ClientSession, base_url: str, changes: dict, *,
                       timeout: float = DEFAULT_TIMEOUT_S) -> tuple[int, dict]:
    """Set keys (None deletes) all at once; returns (version, settings) after the update."""
    body = await _request(session, "PUT", base_url, "/v1/settings", json=changes, timeout=timeout)
    return _field(body, "version", int, "settings"), _field(body, "settings", dict, "settings")


class SupernodeHeartbeat:
    """Keeps one supernode registered: heartbeats every ttl/3 until cancelled or exited.

        async with SupernodeHeartbeat(session, url, info, load=lambda: len(tasks)):
            ...                                   # serve
    or  tg.create_task(SupernodeHeartbeat(session, url, info).run())

    `load`, if given, is called before each heartbeat for the current task count.
    `ttl_s` and `settings_version` hold the service's latest answer; `ok` says whether the
    latest heartbeat got through.
    """

    def __init__(self, session: aiohttp.ClientSession, base_url: str, info: SupernodeInfo, *,
                 load: Callable[[], int] | None = None, timeout: float = DEFAULT_TIMEOUT_S):
        self.session, self.base_url, self.info = session, base_url, info
        self.load, self.timeout = load, timeout
        self.ttl_s = DEFAULT_TTL_S
        self.ok: bool | None = None      # None until the first heartbeat
        self._task: asyncio.Task | None = None

    async def beat(self) -> None:
        """One heartbeat; updates ttl_s and ok; logs only when ok turns into failing or back."""
        info = self.info if self.load is None else replace(self.info, tasks=self.load())
        try:
            self.ttl_s = await heartbeat(self.session, self.base_url, info, timeout=min(self.timeout, self.ttl_s / 3))
        except ConfigServiceError as e:
            if self.ok is not False:
                log.warning("config service heartbeat failing; retrying",
                            extra={"fields": {"id": self.info.id, "error": str(e), "every_s": round(self.ttl_s / 3, 3)}})
            self.ok = False
            return
        if self.ok is not True:
            log.info("config service heartbeat ok",
                     extra={"fields": {"id": self.info.id, "ttl_s": self.ttl_s, "url": self.base_url}})
        self.ok = True

    async def run(self) -> None:
        """Heartbeat forever, every ttl/3."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self.beat()
            await asyncio.sleep(max(0.0, self.ttl_s / 3 - (loop.time() - started)))

    async def __aenter__(self) -> "SupernodeHeartbeat":
        self._task = asyncio.create_task(self.run(), name=f"heartbeat {self.info.id}")
        return self

    async def __aexit__(self, *exc) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


async def poll_settings(session: aiohttp.ClientSession, base_url: str,
                        on_change: Callable[[int, dict], Awaitable[None] | None], *,
                        interval_s: float = 5.0, timeout: float = DEFAULT_TIMEOUT_S) -> None:
    """Poll the settings every `interval_s` forever; call `on_change(version, settings)` (a
    function or a coroutine function) at the first answer and whenever the version changes."""
    seen: int | None = None
    failing = False
    while True:
        try:
            version, settings = await get_settings(session, base_url, timeout=timeout)
        except ConfigServiceError as e:
            if not failing:
                log.warning("config service settings unreachable; retrying",
                            extra={"fields": {"error": str(e), "every_s": interval_s}})
            failing = True
        else:
            if failing:
                log.info("config service settings reachable again", extra={"fields": {"url": base_url}})
            failing = False
            if version != seen:
                seen = version
                result = on_change(version, settings)
                if inspect.isawaitable(result):
                    await result
        await asyncio.sleep(interval_s)
