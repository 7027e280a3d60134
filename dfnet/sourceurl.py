"""Which source URLs are fetched, and the error the source reports: apart from `dfnet.source`.

`dfnet.source` talks to origins through aiohttp, whose import takes 0.3-0.4 s of CPU here
(most of it `aiohttp.connector` building its TLS context); dfget checks its URL before it
contacts the daemon, and imports nothing that heavy. `dfnet.source` re-exports both names.
"""
from __future__ import annotations

from urllib.parse import urlsplit


class SourceError(Exception):
    """The origin could not give what was asked; one line, with a kind for exit codes."""

    def __init__(self, message: str, kind: str = "network", status: int | None = None):
        super().__init__(" ".join(str(message).split()))
        self.kind = kind
        self.status = status


def check_url(url: object) -> str:
    if not isinstance(url, str) or len(url) > 8192:
        raise SourceError(f"bad URL {str(url)[:80]!r}", "url")
    try:
        parts = urlsplit(url)
        parts.port
    except ValueError as e:
        raise SourceError(f"bad URL {url[:80]!r}: {e}", "url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SourceError(f"bad URL {url[:80]!r}: only http:// and https:// URLs with a host", "url")
    if any(c in url for c in "\r\n\t "):
        raise SourceError(f"bad URL {url[:80]!r}: whitespace in URL", "url")
    return url
