"""A real registry for the mirror tests: Debian's docker-registry, a counting front, test images.

- `Registry`: `docker-registry serve CONFIG.yml` on a free loopback port, with a config written
  here (open, or htpasswd with bcrypt hashes made by the system's crypt(3)); storage in a
  folder of the test's.
- The front (`python -m tests.live.registry front UPSTREAM`): a pass-through in front of the
  registry that counts what it sends per request (`GET /_front/stats`), and can serve a
  blob with one byte flipped (`POST /_front/faults {"tamper": ["sha256:..."]}`), or answer a
  blob GET with a 307 to the registry's own address (`{"redirect": [...]}`, as registries
  redirect to storage), so the tests see exactly what left the registry and can make it
  lie. It forwards every header (each Accept line too) and never follows redirects.
- `build_image`: an OCI layout with real tar layers (random file contents, gzip level 0 so a
  big image builds fast), one image per platform sharing a base layer, and a multi-platform
  index tagged in `index.json`.
- `skopeo(...)`: runs skopeo with a registries.conf that forces the mirror (a `[[registry]]`
  whose `location` is the mirror: ANCHORS, a plain `[[registry.mirror]]` falls back silently).
"""
from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.request
import warnings
from pathlib import Path

from tests.live.nodes import PY, ROOT, Node

SKOPEO = shutil.which("skopeo")
REGISTRY_BIN = shutil.which("docker-registry")
MISSING = [n for n, p in (("skopeo", SKOPEO), ("docker-registry", REGISTRY_BIN)) if not p]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def htpasswd_line(user: str, password: str) -> str:
    """A bcrypt htpasswd entry (docker-registry accepts only bcrypt) from glibc's crypt(3)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    return f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 5))}"


class Registry:
    """docker-registry on 127.0.0.1:PORT; `users` {name: password} turns on htpasswd auth."""

    def __init__(self, folder: Path, users: dict[str, str] | None = None):
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        config = [
            "version: 0.1",
            "log:", "  level: info", "  accesslog:", "    disabled: false",
            "storage:", f"  filesystem:", f"    rootdirectory: {folder / 'data'}",
            "  delete:", "    enabled: true",
            "http:", f"  addr: {self.addr}",
        ]
        if users:
            (folder / "htpasswd").write_text("".join(htpasswd_line(u, p) + "\n" for u, p in users.items()))
            config += ["auth:", "  htpasswd:", "    realm: test-realm", f"    path: {folder / 'htpasswd'}"]
        (folder / "config.yml").write_text("\n".join(config) + "\n")
        self.log_path = folder / "registry.log"
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", str(folder / "config.yml")],
                                     stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                urllib.request.urlopen(f"http://{self.addr}/v2/", timeout=2).close()
                return
            except urllib.error.HTTPError:      # 401 from an auth registry: it is up
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"docker-registry did not start: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def front(upstream: str, log_dir: Path, name: str = "front", rate: float = 0.0) -> Node:
    """The counting / tampering pass-through in front of `upstream` (HOST:PORT); `rate` > 0
    caps everything it sends, all requests together, at that many bytes per second (a
    registry's uplink)."""
    return Node(name, [PY, "-m", "tests.live.registry", "front", upstream, "--rate", str(rate)], log_dir)


def front_stats(node: Node) -> dict:
    return node.get_json("/_front/stats")


def blob_bytes(stats: dict, digests) -> int:
    """Bytes the front sent for GETs of these blobs (any repository)."""
    want = set(digests)
    return sum(r["bytes"] for r in stats["requests"]
               if r["method"] == "GET" and "/blobs/" in r["path"] and r["path"].rsplit("/", 1)[1] in want)


# ---- test images -------------------------------------------------------------------------
def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Layout:
    """An OCI layout being written: blobs by digest, and what was put in it."""

    def __init__(self, folder: Path):
        self.folder = folder
        (folder / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (folder / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def put(self, data: bytes) -> str:
        digest = _sha(data)
        (self.folder / "blobs" / "sha256" / digest.split(":", 1)[1]).write_bytes(data)
        return digest

    def put_json(self, obj: dict) -> tuple[str, int]:
        data = json.dumps(obj, separators=(",", ":")).encode()
        return self.put(data), len(data)


def make_layer(name: str, size: int, seed: int) -> tuple[bytes, str]:
    """(gzip blob, diff id) of a tar holding one file of `size` random bytes."""
    body = random.Random(seed).randbytes(size)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"data/{name}.bin")
        info.size, info.mtime, info.mode = size, 0, 0o644
        tar.addfile(info, io.BytesIO(body))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, compresslevel=0, mtime=0), _sha(tar_bytes)


def build_image(folder: Path, tag: str = "v1", layer_sizes=(3 << 20, 2 << 20, 2 << 20),
                platforms=("linux/amd64", "linux/arm64"), seed: int = 1) -> dict:
    """An OCI layout at `folder` with a multi-platform index tagged `tag`.

    Each platform's image has the first layer in common (a shared base) and its own others.
    Returns {"index": digest, "manifests": {platform: {"digest", "blobs": {digest: size}}}}.
    """
    out = Layout(folder)
    base = make_layer("base", layer_sizes[0], seed)
    index_entries, summary = [], {}
    for pi, plat in enumerate(platforms):
        os_, arch = plat.split("/")[:2]
        layers = [base] + [make_layer(f"{arch}-{i}", s, seed * 1000 + pi * 100 + i)
                           for i, s in enumerate(layer_sizes[1:], 1)]
        descs = []
        for blob, _ in layers:
            descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                          "digest": out.put(blob), "size": len(blob)})
        config = {"architecture": arch, "os": os_, "created": "2024-01-01T00:00:00Z",
                  "config": {"Cmd": ["/bin/true"]},
                  "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]}}
        cdig, csize = out.put_json(config)
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdig, "size": csize},
                    "layers": descs}
        mdig, msize = out.put_json(manifest)
        index_entries.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdig,
                              "size": msize, "platform": {"architecture": arch, "os": os_}})
        summary[plat] = {"digest": mdig, "config": cdig,
                         "blobs": {cdig: csize, **{d["digest"]: d["size"] for d in descs}}}
    idig, isize = out.put_json({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                                "manifests": index_entries})
    top = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
           "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": idig, "size": isize,
                          "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (folder / "index.json").write_text(json.dumps(top))
    return {"index": idig, "tag": tag, "manifests": summary}


# ---- skopeo ------------------------------------------------------------------------------
def registries_conf(path: Path, mirror: dict[str, str]) -> Path:
    """A registries.conf sending each registry (prefix) to its mirror (location), plain HTTP."""
    text = "".join(f'[[registry]]\nprefix = "{reg}"\nlocation = "{loc}"\ninsecure = true\n\n'
                   for reg, loc in mirror.items())
    path.write_text(text)
    return path


def skopeo(*args: str, conf: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    # skopeo 1.9 reads the global (hidden) --registries-conf flag; CONTAINERS_REGISTRIES_CONF
    # is set too for newer versions
    env = dict(os.environ)
    flags = ["--insecure-policy"]
    if conf is not None:
        env["CONTAINERS_REGISTRIES_CONF"] = str(conf)
        flags += ["--registries-conf", str(conf)]
    return subprocess.run([SKOPEO, *flags, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def layout_blobs(folder: Path) -> dict[str, bytes]:
    """{digest: bytes} of every blob in an OCI layout."""
    return {f"sha256:{p.name}": p.read_bytes() for p in (folder / "blobs" / "sha256").iterdir()}


# ---- the front ---------------------------------------------------------------------------
def front_app(upstream: str, rate: float = 0.0):
    import aiohttp
    from aiohttp import web
    from multidict import CIMultiDict

    stats = {"requests": []}
    faults = {"tamper": set(), "redirect": set()}
    hop = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}
    session: list = []
    uplink = {"free_at": 0.0}             # when the shared uplink has sent everything so far

    async def pace(n: int) -> None:
        if rate > 0:
            now = time.monotonic()
            uplink["free_at"] = max(now, uplink["free_at"]) + n / rate
            await asyncio.sleep(uplink["free_at"] - now)

    async def forward(request: web.Request) -> web.StreamResponse:
        if not session:
            session.append(aiohttp.ClientSession(auto_decompress=False))
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in hop)
        body = await request.read() if request.body_exists else None
        record = {"method": request.method, "path": request.path, "status": 0, "bytes": 0,
                  "header_names": sorted({k.lower() for k in request.headers}),
                  "headers": [[k, v] for k, v in request.headers.items()]}
        stats["requests"].append(record)
        if request.method == "GET" and request.path.rsplit("/", 1)[-1] in faults["redirect"]:
            record["status"] = 307
            return web.Response(status=307, headers={"Location": f"http://{upstream}{request.raw_path}"})
        async with session[0].request(request.method, f"http://{upstream}{request.raw_path}", headers=headers,
                                      data=body, allow_redirects=False) as up:
            resp = web.StreamResponse(status=up.status, reason=up.reason)
            for k, v in up.headers.items():
                if k.lower() not in hop:
                    resp.headers.add(k, v)
            record["status"] = up.status
            await resp.prepare(request)
            tamper = request.path.rsplit("/", 1)[-1] in faults["tamper"] and up.status in (200, 206)
            async for chunk in up.content.iter_any():
                if tamper and chunk:            # same length, one byte flipped: only the digest tells
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                    tamper = False
                await pace(len(chunk))
                await resp.write(chunk)
                record["bytes"] += len(chunk)
            await resp.write_eof()
            return resp

    async def get_stats(request):
        return web.json_response(stats)

    async def set_faults(request):
        body = await request.json()
        for kind in faults:
            faults[kind] = set(body.get(kind, []))
        return web.json_response({k: sorted(v) for k, v in faults.items()})

    async def reset(request):
        stats["requests"].clear()
        return web.json_response({})

    app = web.Application(client_max_size=1 << 30)
    app.router.add_get("/_front/stats", get_stats)
    app.router.add_post("/_front/faults", set_faults)
    app.router.add_post("/_front/reset", reset)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def _serve_front(upstream: str, listen: str, rate: float) -> None:
    from aiohttp import web
    host, port = listen.rsplit(":", 1)
    runner = web.AppRunner(front_app(upstream, rate), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, int(port))
    await site.start()
    h, p = site._server.sockets[0].getsockname()[:2]
    print(json.dumps({"listening": f"{h}:{p}"}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("front")
    f.add_argument("upstream")
    f.add_argument("--listen", default="127.0.0.1:0")
    f.add_argument("--rate", type=float, default=0.0, help="bytes/s for everything sent; 0: no cap")
    a = ap.parse_args()
    asyncio.run(_serve_front(a.upstream, a.listen, a.rate))
