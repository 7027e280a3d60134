"""`dfget`: wget-like downloads through the host's daemon (P2P), with wget's exit codes.

    dfget URL -O FILE [--digest sha256:HEX|md5:HEX] [-H 'Name: value']... [--limit-rate 20M]
          [--timeout SECONDS] [--daemon HOST:PORT] [--no-back-source] [-q]

Rules kept here:
- Bad input (URL, header, digest, rate, output folder) is refused before anything starts:
  one line, exit code 2 (3 for an output folder that cannot be written).
- If no daemon answers at `--daemon`, one is started in the background at that address. It
  keeps serving peers until it has been idle for `DFLY_DAEMON_IDLE_S` seconds (default 300)
  and finds supernodes in `DFLY_SUPERNODES` (comma-separated HOST:PORT) or through
  `DFLY_CONFIG_SERVICE`; with neither it can only go back to the source.
- A progress bar is drawn on stderr when stderr is a terminal, never with `-q`.
- Exit codes are wget's (`dfnet.errors`), plus 9 for a digest mismatch.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from dfnet.errors import FILE_IO, GENERIC, NETWORK, OK, PROTOCOL, USAGE

DAEMON_START_TIMEOUT_S = 15.0
DEFAULT_IDLE_S = 300
CONNECT_TIMEOUT_S = 5.0
HEALTH_TIMEOUT_S = 3.0
HEADER_TIMEOUT_S = 30.0
MAX_LINE = 1 << 20


class Fail(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(" ".join(str(message).split()))
        self.code = code


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dfget", description="Download a file through the P2P network.")
    p.add_argument("url", metavar="URL")
    p.add_argument("-O", "--output", metavar="FILE", help="output file (default: the URL's file name)")
    p.add_argument("--digest", metavar="sha256:HEX|md5:HEX", help="expected digest of the whole file")
    p.add_argument("-H", "--header", action="append", default=[], metavar="'Name: value'",
                   help="header for the source (credentials stay on the hosts that fetch from it)")
    p.add_argument("--limit-rate", metavar="RATE", help="download limit, e.g. 20M (bytes/s, wget style)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after this long")
    p.add_argument("--daemon", default="127.0.0.1:65001", metavar="HOST:PORT", help="local daemon")
    p.add_argument("--filter", default="", metavar="NAMES",
                   help="query parameters that do not identify the file, '&'-separated (e.g. Expires&Signature)")
    p.add_argument("--no-back-source", action="store_true", help="never download from the source itself")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def _request(args: argparse.Namespace) -> dict:
    from dfnet.core.units import parse_limit
    from dfnet.protocol import ProtocolError, check_digest
    from dfnet.sourceurl import SourceError, check_url

    try:
        url = check_url(args.url)
        digest = check_digest(args.digest)
    except (SourceError, ProtocolError) as e:
        raise Fail(str(e), USAGE) from None
    headers: dict[str, str] = {}
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep or not name.strip() or any(c in h for c in "\r\n") or " " in name.strip():
            raise Fail(f"bad header {h[:80]!r}: expected 'Name: value'", USAGE)
        headers[name.strip()] = value.strip()
    limit = None
    if args.limit_rate:
        try:
            limit = parse_limit(args.limit_rate)
        except ValueError as e:
            raise Fail(f"--limit-rate: {e}", USAGE) from None
    if args.timeout is not None and not args.timeout > 0:
        raise Fail("--timeout must be > 0 seconds", USAGE)
    name = args.output or unquote(Path(urlsplit(url).path).name) or "index.html"
    output = Path(name).expanduser().absolute()
    if output.is_dir():
        raise Fail(f"output {output} is a folder", FILE_IO)
    if not output.parent.is_dir() or not os.access(output.parent, os.W_OK):
        raise Fail(f"cannot write to {output.parent}", FILE_IO)
    return {"url": url, "output": str(output), "headers": headers, "digest": digest,
            "filter": [f for f in args.filter.split("&") if f], "back_source": not args.no_back_source,
            "limit_bps": limit}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        req = _request(args)
        return asyncio.run(_run(args, req))
    except Fail as e:
        print(f"dfget: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("dfget: interrupted", file=sys.stderr)
        return 130


async def _run(args: argparse.Namespace, req: dict) -> int:
    if args.timeout:
        try:
            return await asyncio.wait_for(_download(args, req), args.timeout)
        except asyncio.TimeoutError:
            raise Fail(f"timed out after {args.timeout:g} s", NETWORK) from None
    return await _download(args, req)


async def _download(args: argparse.Namespace, req: dict) -> int:
    from dfnet.serve import parse_addr
    try:
        parse_addr(args.daemon, "--daemon")
    except ValueError as e:
        raise Fail(str(e), USAGE) from None
    bar = _Bar(enabled=not args.quiet and sys.stderr.isatty())
    if not await _daemon_alive(args.daemon):
        await asyncio.to_thread(_start_daemon, args.daemon)
    answer = None
    try:
        answer = await _ask(args.daemon, "POST", "/v1/download", req)
        if answer.status != 200:
            try:
                body = json.loads(b"".join([line async for line in answer.lines()]))
            except ValueError:
                body = None
            body = body if isinstance(body, dict) else {}
            raise Fail(body.get("error", f"daemon answered HTTP {answer.status}"), body.get("code", PROTOCOL))
        async for line in answer.lines():
            try:
                ev = json.loads(line)
            except ValueError:
                raise Fail("daemon sent a malformed message", PROTOCOL) from None
            kind = ev.get("event")
            if kind == "progress":
                bar.update(ev.get("bytes", 0), ev.get("length", 0))
            elif kind == "done":
                bar.update(ev.get("bytes", 0), ev.get("bytes", 0))
                bar.close()
                return OK
            elif kind == "error":
                bar.close()
                raise Fail(ev.get("message", "download failed"), int(ev.get("code", GENERIC)))
    except (OSError, EOFError, ValueError, asyncio.TimeoutError) as e:
        bar.close()
        raise Fail(f"lost the daemon at {args.daemon}: {type(e).__name__}", NETWORK) from None
    finally:
        if answer is not None:
            answer.close()
    bar.close()
    raise Fail(f"the daemon at {args.daemon} stopped before the download finished", NETWORK)


async def _daemon_alive(addr: str) -> bool:
    async def ask() -> bool:
        answer = await _ask(addr, "GET", "/healthz")
        answer.close()
        return answer.status == 200
    try:
        return await asyncio.wait_for(ask(), HEALTH_TIMEOUT_S)
    except (OSError, EOFError, ValueError, asyncio.TimeoutError):
        return False


# ---- the local daemon's HTTP, client side --------------------------------------------------
# dfget speaks to one server, its own daemon's `dfnet.daemon.service`, on loopback: a request,
# then an answer whose body is JSON lines. These few lines of HTTP/1.1 replace aiohttp here,
# whose import alone took 0.3-0.4 s of CPU before each download could start.

class _Answer:
    """The daemon's answer: status and headers read; `lines()` yields its body line by line."""

    def __init__(self, status: int, headers: dict[str, str], reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter):
        self.status, self.headers = status, headers
        self._reader, self._writer = reader, writer

    async def lines(self):
        """The body's lines (a last one without a newline included), de-chunked."""
        rest = b""
        async for data in self._body():
            rest += data
            *lines, rest = rest.split(b"\n")
            for line in lines:
                yield line
            if len(rest) > MAX_LINE:
                raise ValueError("a line of the answer is too long")
        if rest:
            yield rest

    async def _body(self):
        r = self._reader
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            while True:
                size = int((await r.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
                if size == 0:
                    while await r.readuntil(b"\r\n") != b"\r\n":    # trailer lines
                        pass
                    return
                yield await r.readexactly(size)
                await r.readexactly(2)
        elif "content-length" in self.headers:
            yield await r.readexactly(int(self.headers["content-length"]))
        else:
            while data := await r.read(1 << 16):
                yield data

    def close(self) -> None:
        self._writer.close()


async def _ask(addr: str, method: str, path: str, body: dict | None = None) -> _Answer:
    """Send one request to the daemon at `addr` and read its answer's header (errors: OSError,
    EOFError, ValueError or a timeout)."""
    from dfnet.serve import parse_addr
    host, port = parse_addr(addr, "--daemon")
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=MAX_LINE), CONNECT_TIMEOUT_S)
    try:
        data = json.dumps(body).encode() if body is not None else b""
        writer.write((f"{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data)
        # the daemon answers the header at once; the body then takes as long as the download
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEADER_TIMEOUT_S)
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        if not version.startswith("HTTP/1."):
            raise ValueError("not an HTTP answer")
        status = int(rest[:3])
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return _Answer(status, headers, reader, writer)
    except asyncio.LimitOverrunError:
        writer.close()
        raise ValueError("the answer's header is too long") from None
    except BaseException:
        writer.close()
        raise


def _start_daemon(addr: str) -> None:
    """Start a daemon at `addr` in the background and wait until it listens."""
    home = Path(os.environ.get("DFLY_HOME", Path.home() / ".dfly"))
    home.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "experiments.cli", "daemon", "--listen", addr, "--data", str(home / "daemon"),
           "--idle-exit", os.environ.get("DFLY_DAEMON_IDLE_S", str(DEFAULT_IDLE_S))]
    for s in filter(None, os.environ.get("DFLY_SUPERNODES", "").split(",")):
        cmd += ["--supernode", s.strip()]
    if os.environ.get("DFLY_CONFIG_SERVICE"):
        cmd += ["--config-service", os.environ["DFLY_CONFIG_SERVICE"]]
    with open(home / "daemon.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    deadline = time.monotonic() + DAEMON_START_TIMEOUT_S
    line = proc.stdout.readline() if proc.stdout else b""
    if proc.stdout:
        proc.stdout.close()
    if not line.startswith(b"{") or time.monotonic() > deadline:
        code = proc.poll()
        raise Fail(f"no daemon at {addr} and starting one failed"
                   f"{f' (exit {code})' if code is not None else ''}; see {home / 'daemon.log'}", NETWORK)


class _Bar:
    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.t0 = time.monotonic()
        self.shown = False

    def update(self, done: int, total: int) -> None:
        if not self.enabled or not total:
            return
        frac = min(done / total, 1.0)
        rate = done / max(time.monotonic() - self.t0, 1e-6)
        width = 30
        fill = int(frac * width)
        sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {frac * 100:5.1f}% "
                         f"{done / 2**20:8.1f} MiB  {rate / 2**20:7.1f} MiB/s")
        sys.stderr.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            self.shown = False


if __name__ == "__main__":
    sys.exit(main())
