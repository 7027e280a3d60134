"""The host's NIC as the rate controller sees it: counters that include business traffic.

Reads `/proc/net/dev` (bytes received and sent by an interface, whoever sent them) and
`/sys/class/net/IF/speed` (the link's capacity, when the driver reports one).
"""
from __future__ import annotations

from pathlib import Path


def default_interface() -> str:
    """The interface of the default route, else the first non-loopback one, else `lo`."""
    try:
        for line in Path("/proc/net/route").read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) > 2 and parts[1] == "00000000":
                return parts[0]
    except OSError:
        pass
    names = [n for n in counters_all() if n != "lo"]
    return names[0] if names else "lo"


def counters_all() -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    try:
        lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    except OSError:
        return out
    for line in lines:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if len(fields) >= 9:
            out[name.strip()] = (int(fields[0]), int(fields[8]))
    return out


def counters(nic: str) -> tuple[int, int] | None:
    """(rx bytes, tx bytes) of `nic`, or None if it does not exist."""
    return counters_all().get(nic)


def capacity_bps(nic: str) -> float:
    """The link speed in bytes/s, or inf when unknown (loopback, virtual links)."""
    try:
        mbps = int(Path(f"/sys/class/net/{nic}/speed").read_text())
        return mbps * 1e6 / 8 if mbps > 0 else float("inf")
    except (OSError, ValueError):
        return float("inf")
