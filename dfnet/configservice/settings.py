"""Cluster-wide settings: which keys exist, which values they take, and their normal forms.

Owns the table of known keys. The service stores and serves only normal forms, so a node
reads a setting without parsing it again.

| key | meaning | value given | stored as |
| --- | --- | --- | --- |
| ``download_limit`` | a host's total P2P download rate | a rate (below) | int bytes/s |
| ``upload_limit`` | a host's total P2P upload rate | a rate | int bytes/s |
| ``task_limit`` | one task's download rate on a host (Dragonfly 1's ``--locallimit``) | a rate | int bytes/s |
| ``policy`` | the piece selector supernodes run | a policy URI | the URI |
| ``rate_policy`` | the rate controller daemons run | a policy URI | the URI |

Rules kept here:
- A rate is what ``dfnet.core.units.parse_limit`` reads (the daemon's ``--download-limit``
  and dfget's ``--limit-rate`` read the same): a number of bytes per second, a number with a
  wget/dfget suffix (``20M``: k, M, G are powers of 1024 bytes per second), or a number with
  one of DESIGN's case-sensitive rate units (``100Mbps``, ``12.5MB/s``, ``4MiB/s``). The
  result is rounded to whole bytes per second and must be at least 1.
- A policy URI is ``heuristic:NAME`` naming a known policy of the right interface (from
  ``models.loader``), or ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``file:PATH``
  (learned policies, checked for shape only: the node that loads one reports its errors).
- An update is all or nothing: every key is checked before anything changes. ``null``
  deletes a key (the node falls back to its own flag or default). Unknown keys are refused.
- Every error is a ``SettingsError`` with one line naming the key.
"""
from __future__ import annotations

import re

from dfnet.core.units import parse_limit

__all__ = ["KNOWN_KEYS", "SettingsError", "parse_rate_limit", "validate_changes"]


class SettingsError(ValueError):
    """A settings update that is refused; the message is one line naming the key."""


_MAX_RATE = 2**53  # bytes/s: far above any link, and still exact as a JSON number


def _shown(value: object, limit: int = 64) -> str:
    """repr(value), cut short so an error about a huge value stays a short line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def parse_rate_limit(value: object) -> int:
    """Whole bytes per second from 20971520, "20M", "100Mbps" or "12.5 MB/s" (the syntax of
    ``dfnet.core.units.parse_limit``); ValueError with one line if it is not a limit."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)) or len(str(value)) > 64:
        raise ValueError(f"{_shown(value)} is not a rate (a number of bytes/s, 20M, or a rate such as 100Mbps)")
    rate = round(parse_limit(str(value)))
    if rate < 1:
        raise ValueError(f"{_shown(value)} is not a limit (must be at least 1 byte/s)")
    if rate > _MAX_RATE:
        raise ValueError(f"{_shown(value)} is not a limit (more than {_MAX_RATE} bytes/s)")
    return rate


_LEARNED = re.compile(r"models:/[^/@\s]+(@[^/@\s]+|/\d+)|file:\S.*")
_MAX_URI = 1024


def _policy_uri(kind: str):
    def check(value: object) -> str:
        if not isinstance(value, str):
            raise ValueError(f"{_shown(value)} is not a policy URI (expected a string)")
        if len(value) > _MAX_URI or "\n" in value or "\r" in value:
            raise ValueError(f"not a policy URI (one line of at most {_MAX_URI} characters)")
        if _LEARNED.fullmatch(value):
            return value
        # imported here, not at the top: the table pulls in numpy, and only updates need it
        from models.loader import KNOWN_PIECE_SELECTORS, KNOWN_RATE_CONTROLLERS
        known = KNOWN_PIECE_SELECTORS if kind == "piece selector" else KNOWN_RATE_CONTROLLERS
        if value in known:
            return value
        if value.startswith("heuristic:"):
            raise ValueError(f"unknown {kind} {_shown(value)}; known: {', '.join(known)}")
        raise ValueError(f"{_shown(value)} is not a {kind} URI: expected heuristic:NAME, "
                         f"models:/NAME@ALIAS, models:/NAME/VERSION or file:PATH; known: {', '.join(known)}")
    return check


# key -> the function that turns a given value into its normal form (ValueError if it cannot)
KNOWN_KEYS = {
    "download_limit": parse_rate_limit,
    "upload_limit": parse_rate_limit,
    "task_limit": parse_rate_limit,
    "policy": _policy_uri("piece selector"),
    "rate_policy": _policy_uri("rate controller"),
}


def validate_changes(changes: object) -> dict[str, object]:
    """The normal forms of an update ({key: value or None to delete}); SettingsError if any is bad."""
    if not isinstance(changes, dict):
        raise SettingsError("settings must be a JSON object of keys to set (null deletes a key)")
    normal: dict[str, object] = {}
    for key, value in changes.items():
        check = KNOWN_KEYS.get(key)
        if check is None:
            raise SettingsError(f"unknown setting {_shown(key)}; known: {', '.join(KNOWN_KEYS)}")
        if value is None:
            normal[key] = None
            continue
        try:
            normal[key] = check(value)
        except ValueError as e:
            raise SettingsError(f"{key}: {' '.join(str(e).split())}") from None
    return normal
