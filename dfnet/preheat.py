"""Preheat: warm a file or an image's blobs in the supernodes before anyone asks for them.

Owns turning a target into supernode tasks and asking each supernode to fetch them
(`POST /v1/preheat`, which answers once the task is cached). An image
(`docker://REGISTRY/REPO:TAG`) is resolved with the registry's own API: an index picks the
platform, and the config blob and every layer become tasks keyed by their digest, the same
tasks a daemon's registry mirror registers, so the first pull is already P2P.

Rules kept here:
- Every supernode named (or every healthy one the config service lists) is warmed: a daemon
  may be sent to any of them.
- Registry credentials go to the registry (to resolve the manifest) and, as the
  `Authorization` the registry accepted, to the supernodes that fetch the blobs; they are
  never printed. A task fetched with them is private in the supernode (peers are checked).
- Progress goes to `progress` (stderr); the result is a summary dict; every failure is one
  `PreheatError` line with a wget-style exit code (dfnet.errors).
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable

import aiohttp

from dfnet.errors import AUTH, GENERIC, NETWORK, SERVER_ERROR, USAGE
from dfnet.oci import OCIError, RegistryClient, parse_image_ref
from dfnet.source import SourceError, check_url

CONCURRENCY = 4


class PreheatError(Exception):
    def __init__(self, message: str, code: int = GENERIC):
        super().__init__(" ".join(str(message).split()))
        self.code = code


@dataclass
class Item:
    url: str
    digest: str | None = None
    size: int = 0
    media_type: str = ""


async def preheat(target: str, *, supernodes: list[str] = (), config_service: str | None = None,
                  platform: str = "linux/amd64", creds: tuple[str, str] | None = None, plain_http: bool = False,
                  timeout: float = 3600.0, progress: Callable[[str], None] = lambda line: None) -> dict:
    t0 = time.monotonic()
    async with aiohttp.ClientSession() as session:
        addrs = await _supernodes(session, list(supernodes), config_service)
        summary: dict = {"target": target, "supernodes": addrs}
        headers: dict[str, str] = {}
        if target.startswith("docker://"):
            try:
                ref = parse_image_ref(target, plain_http)
            except OCIError as e:
                raise PreheatError(str(e), USAGE) from None
            client = RegistryClient(session, ref, creds)
            try:
                manifest, blobs = await client.resolve(platform)
            except OCIError as e:
                text = str(e)
                raise PreheatError(text, AUTH if " 401 " in text or " 403 " in text else
                                   NETWORK if "cannot reach" in text else SERVER_ERROR) from None
            if client.auth:
                headers["Authorization"] = client.auth
            items = [Item(ref.blob_url(b.digest), b.digest, b.size, b.media_type) for b in blobs]
            summary.update(manifest=manifest, platform=platform)
            progress(f"{target} ({platform}): manifest {manifest}, {len(items)} blobs, "
                     f"{sum(i.size for i in items)} bytes")
        else:
            try:
                check_url(target)
            except SourceError as e:
                raise PreheatError(f"{e} (or docker://REGISTRY/REPO:TAG for an image)", USAGE) from None
            items = [Item(target)]
        sem = asyncio.Semaphore(CONCURRENCY)
        jobs = [_warm(session, sem, addr, item, headers, timeout, progress) for addr in addrs for item in items]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            first = errors[0]
            if not isinstance(first, PreheatError):
                raise first
            raise PreheatError(f"{len(errors)} of {len(results)} warm-ups failed; first: {first}", first.code)
        lengths = {}
        for item, r in zip([i for _ in addrs for i in items], results):
            lengths[item.url] = r["length"]
        summary["blobs" if target.startswith("docker://") else "files"] = [
            {"digest": i.digest, "bytes": lengths[i.url], "media_type": i.media_type} if i.digest
            else {"url": i.url, "bytes": lengths[i.url]} for i in items]
        summary["bytes"] = sum(lengths[i.url] for i in items)
        summary["seconds"] = round(time.monotonic() - t0, 3)
        return summary


async def _supernodes(session: aiohttp.ClientSession, flags: list[str], config_service: str | None) -> list[str]:
    if flags:
        return flags
    if not config_service:
        raise PreheatError("name a supernode (--supernode ADDR) or a config service (--config-service URL)", USAGE)
    from dfnet.configservice.client import ConfigServiceError, nearest_supernodes
    try:
        found = [s["addr"] for s in await nearest_supernodes(session, config_service)]
    except ConfigServiceError as e:
        raise PreheatError(f"config service: {e}", NETWORK) from None
    if not found:
        raise PreheatError(f"the config service {config_service} lists no healthy supernode", NETWORK)
    return found


async def _warm(session: aiohttp.ClientSession, sem: asyncio.Semaphore, addr: str, item: Item,
                headers: dict[str, str], timeout: float, progress: Callable[[str], None]) -> dict:
    body = {"url": item.url, "headers": headers}
    if item.digest:
        body.update(digest=item.digest, key_by_digest=True)
    name = item.digest or item.url
    async with sem:
        t0 = time.monotonic()
        try:
            async with session.post(f"http://{addr}/v1/preheat", json=body,
                                    timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=10)) as r:
                data = await r.json(content_type=None)
                status = r.status
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
            raise PreheatError(f"supernode {addr}: {type(e).__name__} {e}".strip(), NETWORK) from None
    if status != 200 or not isinstance(data, dict) or not isinstance(data.get("length"), int):
        message = data.get("error", "") if isinstance(data, dict) else ""
        origin = data.get("origin_status") if isinstance(data, dict) else None
        code = AUTH if origin in (401, 403) else SERVER_ERROR if status in (502, 507) else GENERIC
        raise PreheatError(f"supernode {addr} could not warm {name}: HTTP {status} {message}".strip(), code)
    progress(f"warmed {name} on {addr}: {data['length']} bytes in {time.monotonic() - t0:.1f} s")
    return data


