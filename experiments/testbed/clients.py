"""The per-host download a testbed run times: dfget's request to the daemon, or a plain fetch.

Owns one host's download and its timing; each runs in its own thread that has entered the
host's namespace (`netns.enter`), so its sockets are the host's.

Rules kept here:
- P2P makes exactly the request dfget makes (`POST /v1/download` on the local daemon, then
  its NDJSON events until "done" or "error"), but from a thread, not a new dfget process: on
  two shared cores, forty Python start-ups at one instant would cost seconds of CPU and be
  timed as download (the README gives dfget's start-up cost, measured separately).
- Source mode is a plain HTTP GET of the whole file from the origin, hashed as it streams
  (the traditional way: no daemon, no pieces).
- The clock starts at the host's arrival and stops when the last byte is known good; output
  digests are checked afterwards, outside the timing.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import threading
import time
from dataclasses import dataclass

from experiments.testbed import netns

CLIENT_TIMEOUT_S = 60.0     # per socket operation; a whole download may take much longer


@dataclass
class Outcome:
    host: int
    started: float | None = None     # monotonic time the request went out
    finished: float | None = None
    error: str | None = None
    sha256: str | None = None        # source mode: digest of the bytes received

    @property
    def seconds(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started


def p2p_download(ns: str, daemon_port: int, url: str, output: str, out: Outcome) -> None:
    netns.enter(ns)
    body = json.dumps({"url": url, "output": output, "headers": {}, "digest": None, "filter": [],
                       "back_source": True, "limit_bps": None})
    conn = http.client.HTTPConnection("127.0.0.1", daemon_port, timeout=CLIENT_TIMEOUT_S)
    try:
        out.started = time.monotonic()
        conn.request("POST", "/v1/download", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            out.error = f"daemon answered HTTP {resp.status}: {resp.read(300).decode(errors='replace')}"
            return
        for line in resp:
            ev = json.loads(line)
            if ev.get("event") == "done":
                out.finished = time.monotonic()
                return
            if ev.get("event") == "error":
                out.error = str(ev.get("message", "download failed"))
                return
        out.error = "the daemon stopped before the download finished"
    except (OSError, http.client.HTTPException, ValueError) as e:
        out.error = f"lost the daemon: {type(e).__name__}: {e}"
    finally:
        conn.close()


def source_download(ns: str, origin: str, path: str, out: Outcome) -> None:
    netns.enter(ns)
    host, port = origin.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=CLIENT_TIMEOUT_S)
    digest = hashlib.sha256()
    try:
        out.started = time.monotonic()
        conn.request("GET", path)
        resp = conn.getresponse()
        if resp.status != 200:
            out.error = f"origin answered HTTP {resp.status}"
            return
        while chunk := resp.read(1 << 20):
            digest.update(chunk)
        out.finished = time.monotonic()
        out.sha256 = digest.hexdigest()
    except (OSError, http.client.HTTPException) as e:
        out.error = f"origin fetch failed: {type(e).__name__}: {e}"
    finally:
        conn.close()


def start_at(when: float, fn, *args) -> threading.Thread:
    """Run `fn(*args)` in a daemon thread at monotonic time `when`."""
    def run() -> None:
        delay = when - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        fn(*args)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t
