"""Which supernodes a host should use first: the nearest-first order.

Rules kept here (a pure function of the records and the host; no clock, no I/O):
1. Same IDC first. An empty IDC matches nothing (a host that does not say where it is gets
   no IDC preference).
2. Then more shared location parts first: locations are '|'-separated paths
   ("asia|sg|dc2|r17") compared part by part from the left; the count of leading equal
   parts is the affinity. An empty location shares nothing.
3. Then the least loaded (fewest tasks; a supernode that reports no load counts as 0).
4. Then by id, so the order is the same on every call.
"""
from __future__ import annotations

from typing import Iterable, Mapping

__all__ = ["shared_location_parts", "nearest_first"]


def shared_location_parts(a: str, b: str) -> int:
    """How many leading '|'-separated parts `a` and `b` share: 'a|b|c' vs 'a|b|d' -> 2."""
    if not a or not b:
        return 0
    shared = 0
    for x, y in zip(a.split("|"), b.split("|")):
        if x != y:
            break
        shared += 1
    return shared


def nearest_first(supernodes: Iterable[Mapping], idc: str, location: str) -> list[Mapping]:
    """The records ({"id", "idc", "location", "tasks", ...}) sorted nearest first for a host."""
    def key(sn: Mapping):
        same_idc = bool(idc) and sn["idc"] == idc
        return (not same_idc, -shared_location_parts(location, sn["location"]), sn.get("tasks") or 0, sn["id"])
    return sorted(supernodes, key=key)
