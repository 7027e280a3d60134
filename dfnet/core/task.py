"""What a task is: one file at one URL, cut into fixed-size pieces.

This module owns task identity and the piece grid; it does no I/O.

Rules it keeps:

- A task's id is the sha256 hex of its *normalised* URL (plus an optional tag), so every
  peer that asks for the same bytes lands in the same swarm:
  scheme and host are lower-cased, a default port (80 for http, 443 for https) is dropped,
  an empty path becomes ``/``, the fragment is dropped, the query parameters named in
  ``filter_params`` are removed (Dragonfly's ``--filter``: expiring signatures and the like
  that differ per request but not per file), and the remaining parameters are sorted by name
  (stably, so repeated names keep their relative order, which servers may rely on).
  Paths, userinfo and parameter values are kept byte for byte: decoding them could merge
  URLs that a server tells apart.
- ``tag`` (e.g. an expected digest) separates otherwise equal URLs; an empty tag adds nothing,
  so ``task_id(url)`` is just the hash of the normalised URL.
- The piece size follows Dragonfly 1 in binary units, like its Go code: 4 MiB for files up to
  200 MiB; above, ``min(4 MiB + (floor(length / 100 MiB) - 2) * 1 MiB, 15 MiB)``.
- Piece ``i`` covers bytes ``[i * piece_size, min((i + 1) * piece_size, length))``; only the
  last piece may be short, and a zero-length file has no pieces.
"""

from __future__ import annotations

import hashlib
import operator
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import unquote_plus, urlsplit

__all__ = ["Task", "TaskError", "task_id", "normalize_url", "piece_size_for"]

MiB = 1024 * 1024
DEFAULT_PIECE_SIZE = 4 * MiB
MAX_PIECE_SIZE = 15 * MiB
_DEFAULT_PORTS = {"http": 80, "https": 443}


class TaskError(ValueError):
    """A URL, length or piece size that cannot describe a task."""


def _show(url: object) -> str:
    # repr() escapes newlines, so the message stays on one line; long URLs are cut.
    text = repr(url)
    return text if len(text) <= 120 else text[:117] + "..."


def _filter_names(filter_params: Iterable[str]) -> frozenset[str]:
    # A bare string is Dragonfly's own spelling, "Expires&Signature"; iterating it would
    # silently filter single characters instead.
    if isinstance(filter_params, str):
        filter_params = filter_params.split("&")
    return frozenset(name for name in filter_params if name)


def normalize_url(url: str, filter_params: Iterable[str] = ()) -> str:
    """Return the canonical form of ``url`` that :func:`task_id` hashes."""
    if not isinstance(url, str):
        raise TaskError(f"URL must be a string, not {type(url).__name__}")
    text = url.strip()
    # urlsplit silently deletes tabs and newlines inside a URL; a task id must not hide them.
    if any(ch <= " " or ch == "\x7f" for ch in text):
        raise TaskError(f"invalid URL {_show(url)}: contains whitespace or control characters")
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError as exc:
        raise TaskError(f"invalid URL {_show(url)}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise TaskError(f"invalid URL {_show(url)}: scheme must be http or https")
    host = parts.hostname  # already lower-cased, IPv6 brackets removed
    if not host:
        raise TaskError(f"invalid URL {_show(url)}: no host")

    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc = f"{netloc}:{port}"
    if "@" in parts.netloc:
        netloc = parts.netloc.rpartition("@")[0] + "@" + netloc

    drop = _filter_names(filter_params)
    fields = [f for f in parts.query.split("&") if f]  # "a=1&&b=2" has no empty parameter
    named = [(unquote_plus(f.partition("=")[0]), f) for f in fields]
    kept = sorted((nf for nf in named if nf[0] not in drop), key=lambda nf: nf[0])
    query = "&".join(f for _, f in kept)

    return f"{scheme}://{netloc}{parts.path or '/'}" + (f"?{query}" if query else "")


def task_id(url: str, filter_params: Iterable[str] = (), tag: str = "") -> str:
    """The sha256 hex id of the task at ``url`` (see the module docstring for the rules)."""
    key = normalize_url(url, filter_params)
    if tag:
        # NUL cannot occur in a normalised URL, so (url, tag) pairs never collide textually.
        key = f"{key}\0{tag}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _as_int(value: object, what: str) -> int:
    # Accept ints and int-like numbers (numpy.int64), refuse floats and bools: a float
    # length is usually a units bug (5e9 parsed as a float) and must not round silently.
    if isinstance(value, bool):
        raise TaskError(f"{what} must be an integer, not bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TaskError(f"{what} must be an integer, not {type(value).__name__}") from None


def piece_size_for(length: int) -> int:
    """Dragonfly 1's piece size for a file of ``length`` bytes."""
    length = _as_int(length, "length")
    if length < 0:
        raise TaskError(f"length must be >= 0, got {length}")
    if length <= 200 * MiB:
        return DEFAULT_PIECE_SIZE
    return min(DEFAULT_PIECE_SIZE + (length // (100 * MiB) - 2) * MiB, MAX_PIECE_SIZE)


@dataclass(frozen=True, slots=True)
class Task:
    """One file to distribute: its id, where it comes from, and its piece grid."""

    id: str
    url: str
    length: int
    piece_size: int

    def __post_init__(self) -> None:
        length = _as_int(self.length, "length")
        piece_size = _as_int(self.piece_size, "piece_size")
        if length < 0:
            raise TaskError(f"length must be >= 0, got {length}")
        if piece_size <= 0:
            raise TaskError(f"piece_size must be > 0, got {piece_size}")
        # Store plain ints (not numpy scalars) so arithmetic never overflows or changes type.
        object.__setattr__(self, "length", length)
        object.__setattr__(self, "piece_size", piece_size)

    @classmethod
    def for_url(
        cls,
        url: str,
        length: int,
        piece_size: int | None = None,
        filter_params: Iterable[str] = (),
        tag: str = "",
    ) -> Task:
        """The task for ``url``; ``piece_size`` defaults to :func:`piece_size_for`."""
        if piece_size is None:
            piece_size = piece_size_for(length)
        return cls(task_id(url, filter_params, tag), url, length, piece_size)

    @property
    def n_pieces(self) -> int:
        return -(-self.length // self.piece_size)  # ceiling division, exact for big ints

    def _check(self, i: int) -> int:
        i = operator.index(i)
        if not 0 <= i < self.n_pieces:
            raise IndexError(f"piece {i} out of range for {self.n_pieces} pieces")
        return i

    def piece_offset(self, i: int) -> int:
        """Byte offset of piece ``i``."""
        return self._check(i) * self.piece_size

    def piece_length(self, i: int) -> int:
        """Length of piece ``i``: ``piece_size``, except that the last piece may be short."""
        start = self._check(i) * self.piece_size
        return min(self.piece_size, self.length - start)
