"""The wire between daemons and supernodes: message shapes and their checks, no I/O.

Owns every JSON message a node accepts from another, and the rule that a message is checked
completely before any of it is used: a malformed one is a `ProtocolError` (one line, answered
with HTTP 400), never a traceback and never half-applied.

Messages (JSON bodies; the task token travels in the `X-Dfly-Token` header):
- `POST /v1/register` (daemon -> supernode): `{"url", "filter": [names], "digest": "sha256:HEX"
  | "md5:HEX" | null, "headers": {name: value}, "peer": PEER}` ->
  `{"task_id", "length", "piece_size", "token"}`. PEER = `{"id", "addr": "host:port", "idc",
  "location", "upload_bps", "download_bps"}`. The source headers are for the supernode's own
  origin fetch; they are never stored, logged or passed on.
- `POST /v1/tasks/{id}/sync` (daemon -> supernode): `{"peer", "done": [[piece, parent, bytes,
  cost_s], ...], "failed": [[piece, parent, corrupt], ...], "source": [[piece, sha256], ...],
  "have": [piece, ...], "idle": bool}` -> `{"assign": [[piece, parent, "host:port", sha256], ...], "retry_after": s,
  "back_to_source": bool, "done": bool}`. Results and the next request share one round trip;
  an idle daemon's sync is held by the supernode until there is work (long poll). `have`
  lists pieces a resumed daemon proved on its disk (its first sync after registering).
- The sync stream (Dragonfly 2's long-lived AnnouncePeer stream, one per peer and task):
  `GET /v1/tasks/{id}/stream?peer=PEER_ID` with `Connection: Upgrade`, `Upgrade: dfly-sync`
  and the token; the supernode answers `101 Switching Protocols` (or the sync route's HTTP
  error) and the connection then carries newline-delimited JSON: each line from the daemon is
  one sync body (its `peer` must be the stream's), each line back is its reply, in order, one
  message at a time. An error is one line `{"error", "status", ...}` (the status the HTTP
  route would answer) and the supernode closes the stream. 404 (unknown task or token) and 409
  (a peer it does not know: it restarted, or the peer left) mean "register again", on either
  route. A stream silent for the supernode's idle timeout is closed; the daemon reopens it. A
  supernode offers the stream with `"stream": true` in its register reply; without it (older
  supernodes) daemons use the POST.
- `POST /v1/tasks/{id}/leave`: `{"peer"}`.
- `GET /v1/tasks/{id}/pieces/{n}` (peer -> peer or supernode): the piece's bytes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

MAX_LIST = 100_000
MAX_STR = 8192
TOKEN_HEADER = "X-Dfly-Token"
STREAM_UPGRADE = "dfly-sync"          # the `Upgrade:` token of the sync stream
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DIGEST = re.compile(r"(sha256:[0-9a-f]{64}|md5:[0-9a-f]{32})")
_ADDR = re.compile(r"[A-Za-z0-9.\-\[\]:]{1,255}:\d{1,5}")


class ProtocolError(ValueError):
    """A message that breaks the wire contract; the text is one line."""


class Refused(Exception):
    """A request answered with an error: its HTTP status, one line, and extra fields (the
    same body, `{"error", ...}`, as an HTTP response or as a line on the sync stream)."""

    def __init__(self, status: int, message: str, **extra):
        super().__init__(" ".join(message.split()))
        self.status = status
        self.extra = extra

    def body(self) -> dict:
        return {"error": str(self), **{k: v for k, v in self.extra.items() if v is not None}}


def _get(obj: dict, key: str, kind: type | tuple[type, ...], default=..., where: str = "message"):
    if not isinstance(obj, dict):
        raise ProtocolError(f"{where} must be a JSON object")
    if key not in obj:
        if default is ...:
            raise ProtocolError(f"{where}: missing {key!r}")
        return default
    value = obj[key]
    if kind in (int, float, (int, float)) and isinstance(value, bool):
        raise ProtocolError(f"{where}: {key!r} must be a number")
    if not isinstance(value, kind):
        raise ProtocolError(f"{where}: {key!r} has the wrong type")
    if isinstance(value, str) and len(value) > MAX_STR:
        raise ProtocolError(f"{where}: {key!r} is too long")
    if isinstance(value, list) and len(value) > MAX_LIST:
        raise ProtocolError(f"{where}: {key!r} has too many items")
    return value


def check_addr(addr: str, where: str = "peer") -> str:
    if not isinstance(addr, str) or not _ADDR.fullmatch(addr) or not 0 < int(addr.rsplit(":", 1)[1]) < 65536:
        raise ProtocolError(f"{where}: bad address {str(addr)[:80]!r}")
    return addr


def check_digest(digest: object) -> str | None:
    """`sha256:HEX` or `md5:HEX` (lower-cased), or None."""
    if digest is None or digest == "":
        return None
    if isinstance(digest, str) and _DIGEST.fullmatch(digest.lower()):
        return digest.lower()
    raise ProtocolError(f"bad digest {str(digest)[:80]!r}: expected sha256:HEX(64) or md5:HEX(32)")


def _piece(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 31:
        raise ProtocolError(f"{where}: bad piece index {str(value)[:40]}")
    return value


def _sha(value: object, where: str) -> str:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise ProtocolError(f"{where}: bad sha256 {str(value)[:80]!r}")
    return value


@dataclass(frozen=True)
class PeerInfo:
    id: str
    addr: str
    idc: str = ""
    location: str = ""
    upload_bps: float = 0.0
    download_bps: float = 0.0

    def to_json(self) -> dict:
        return {"id": self.id, "addr": self.addr, "idc": self.idc, "location": self.location,
                "upload_bps": self.upload_bps, "download_bps": self.download_bps}


def parse_peer(obj: object) -> PeerInfo:
    w = "peer"
    pid = _get(obj, "id", str, where=w)
    if not pid or len(pid) > 200:
        raise ProtocolError("peer: bad id")
    up = float(_get(obj, "upload_bps", (int, float), 0.0, w))
    down = float(_get(obj, "download_bps", (int, float), 0.0, w))
    if not (0 <= up < 1e13 and 0 <= down < 1e13):
        raise ProtocolError("peer: rates out of range")
    return PeerInfo(pid, check_addr(_get(obj, "addr", str, where=w)), _get(obj, "idc", str, "", w),
                    _get(obj, "location", str, "", w), up, down)


@dataclass(frozen=True)
class Register:
    url: str
    filter: tuple[str, ...]
    digest: str | None
    headers: dict[str, str]
    peer: PeerInfo
    # the digest alone names the bytes (a registry blob): the task is keyed by it, so the same
    # blob reached through different URLs (repositories) is one task; sha256 digests only
    key_by_digest: bool = False


def _task_fields(obj: object, w: str) -> tuple:
    """What names a task and how to fetch it: (url, filter, digest, headers, key_by_digest)."""
    url = _get(obj, "url", str, where=w)
    filt = _get(obj, "filter", list, [], w)
    if not all(isinstance(f, str) and len(f) < 256 for f in filt):
        raise ProtocolError(f"{w}: filter must be a list of names")
    headers = _get(obj, "headers", dict, {}, w)
    if len(headers) > 100 or not all(isinstance(k, str) and isinstance(v, str) and len(k) < 256
                                     and len(v) < MAX_STR and "\n" not in k + v and "\r" not in k + v
                                     for k, v in headers.items()):
        raise ProtocolError(f"{w}: headers must map names to one-line strings")
    digest = check_digest(_get(obj, "digest", (str, type(None)), None, w))
    by_digest = _get(obj, "key_by_digest", bool, False, w)
    if by_digest and not (digest or "").startswith("sha256:"):
        raise ProtocolError(f"{w}: key_by_digest needs a sha256 digest")
    return url, tuple(filt), digest, dict(headers), by_digest


def parse_register(obj: object) -> Register:
    url, filt, digest, headers, by_digest = _task_fields(obj, "register")
    return Register(url, filt, digest, headers, parse_peer(_get(obj, "peer", dict, where="register")), by_digest)


@dataclass(frozen=True)
class Preheat:
    """Warm a task in the supernode's cache without a peer: the seed fetch alone."""

    url: str
    filter: tuple[str, ...]
    digest: str | None
    headers: dict[str, str]
    key_by_digest: bool = False


def parse_preheat(obj: object) -> Preheat:
    return Preheat(*_task_fields(obj, "preheat"))


@dataclass(frozen=True)
class Sync:
    peer: str
    done: list[tuple[int, str, int, float]] = field(default_factory=list)
    failed: list[tuple[int, str, bool]] = field(default_factory=list)
    source: list[tuple[int, str]] = field(default_factory=list)
    have: tuple[int, ...] = ()
    idle: bool = False


_NUMBER = (int, float)


def parse_sync(obj: object) -> Sync:
    w = "sync"
    peer = _get(obj, "peer", str, where=w)
    done = []
    for item in _get(obj, "done", list, [], w):
        # the common case in one expression: a sync carries a window's results and this runs
        # for each (`type(x) is int` also turns bools away); anything else takes the checks
        # that name the fault
        if type(item) is list and len(item) == 4:
            piece, parent, nbytes, cost = item
            if (type(piece) is int and type(parent) is str and type(nbytes) is int and type(cost) in _NUMBER
                    and 0 <= piece < 1 << 31 and nbytes >= 0 and 0 <= cost < 1e6):
                done.append((piece, parent, nbytes, float(cost)))
                continue
        if not (isinstance(item, list) and len(item) == 4 and isinstance(item[1], str)
                and isinstance(item[2], int) and not isinstance(item[2], bool)
                and isinstance(item[3], (int, float)) and not isinstance(item[3], bool)
                and item[2] >= 0 and 0 <= item[3] < 1e6):
            raise ProtocolError("sync: bad 'done' entry")
        done.append((_piece(item[0], w), item[1], item[2], float(item[3])))
    failed = []
    for item in _get(obj, "failed", list, [], w):
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[1], str) and isinstance(item[2], bool)):
            raise ProtocolError("sync: bad 'failed' entry")
        failed.append((_piece(item[0], w), item[1], item[2]))
    source = []
    for item in _get(obj, "source", list, [], w):
        if not (isinstance(item, list) and len(item) == 2):
            raise ProtocolError("sync: bad 'source' entry")
        source.append((_piece(item[0], w), _sha(item[1], w)))
    have = tuple(_piece(p, w) for p in _get(obj, "have", list, [], w))
    return Sync(peer, done, failed, source, have, bool(_get(obj, "idle", bool, False, w)))


class Assign(NamedTuple):
    """One assignment; a tuple (JSON encodes it as the wire's list), cheap to make by the
    thousand on the supernode's hot path."""

    piece: int
    parent: str
    addr: str
    sha256: str


@dataclass(frozen=True)
class SyncReply:
    assign: list[Assign]
    retry_after: float = 0.0
    back_to_source: bool = False
    done: bool = False

    def to_json(self) -> dict:
        return {"assign": self.assign,
                "retry_after": self.retry_after, "back_to_source": self.back_to_source, "done": self.done}


def parse_sync_reply(obj: object) -> SyncReply:
    w = "sync reply"
    out = []
    for item in _get(obj, "assign", list, [], w):
        if not (isinstance(item, list) and len(item) == 4 and isinstance(item[1], str)):
            raise ProtocolError("sync reply: bad 'assign' entry")
        out.append(Assign(_piece(item[0], w), item[1], check_addr(item[2], w), _sha(item[3], w)))
    retry = float(_get(obj, "retry_after", (int, float), 0.0, w))
    return SyncReply(out, min(max(retry, 0.0), 60.0), bool(_get(obj, "back_to_source", bool, False, w)),
                     bool(_get(obj, "done", bool, False, w)))


@dataclass(frozen=True)
class Registered:
    task_id: str
    length: int
    piece_size: int
    token: str
    stream: bool = False                  # the supernode offers the sync stream


def parse_registered(obj: object) -> Registered:
    w = "register reply"
    tid = _get(obj, "task_id", str, where=w)
    if not _HEX64.fullmatch(tid):
        raise ProtocolError("register reply: bad task id")
    length = _get(obj, "length", int, where=w)
    size = _get(obj, "piece_size", int, where=w)
    token = _get(obj, "token", str, where=w)
    if length < 0 or not 0 < size <= 64 << 20 or not 16 <= len(token) <= 128:
        raise ProtocolError("register reply: bad length, piece size or token")
    return Registered(tid, length, size, token, _get(obj, "stream", bool, False, w))
