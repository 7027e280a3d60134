"""``HOST:PORT`` text: the one place a listen flag or a peer address becomes (host, port).

Rules kept here:
- ``HOST:PORT``, or ``[IPV6]:PORT`` for IPv6 literals; the host is a name or an address
  with no spaces, the port a decimal integer.
- Port 0 (ask the kernel for a free port) is allowed only where the caller says so: a
  listen address may use it, an address others connect to may not.
- Whether the host resolves, or the port can be bound, is found out by using it, not here.
- Every error is a ``ValueError`` with a one-line message that quotes the text.
"""
from __future__ import annotations

import re

__all__ = ["split_hostport", "join_hostport"]

_HOSTPORT = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.%\w]+)\]|(?P<host>[^\s:\[\]/]+)):(?P<port>\d{1,5})")


def split_hostport(text: object, *, allow_port_zero: bool = False) -> tuple[str, int]:
    """'127.0.0.1:8080' -> ('127.0.0.1', 8080); '[::1]:80' -> ('::1', 80)."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not an address (expected HOST:PORT)")
    m = _HOSTPORT.fullmatch(text)
    if m is None:
        raise ValueError(f"{text!r} is not an address (expected HOST:PORT, or [IPV6]:PORT)")
    port = int(m.group("port"))
    lowest = 0 if allow_port_zero else 1
    if not lowest <= port <= 65535:
        raise ValueError(f"{text!r}: port {port} is out of range ({lowest}-65535)")
    return m.group("v6") or m.group("host"), port


def join_hostport(host: str, port: int) -> str:
    """('::1', 80) -> '[::1]:80'; ('127.0.0.1', 80) -> '127.0.0.1:80'."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
