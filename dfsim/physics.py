"""The physics every run is held to: client-server time and the P2P lower bound.

Owns the two closed forms of DESIGN.md, computed from the hosts a run actually drew:

- client-server: `D_cs = max(N*F/u_s, F/d_min)`;
- P2P lower bound (Kumar and Ross): `max(F/u_origin, F/d_min, N*F/(u_origin + u_seeds + sum u_i))`.

With staggered arrivals the last term bounds the last *finish time*, so a host's download
time can be shorter by the arrival spread; the bound subtracts it to stay a true bound.
"""
from __future__ import annotations

import numpy as np


def client_server_s(file_bytes: float, n_hosts: int, origin_bps: float, downloads: np.ndarray) -> float:
    if n_hosts == 0:
        return 0.0
    return max(n_hosts * file_bytes / origin_bps, file_bytes / float(np.min(downloads)))


def p2p_lower_bound_s(file_bytes: float, origin_bps: float, seeds_upload_bps: float,
                      downloads: np.ndarray, uploads: np.ndarray, arrival_spread_s: float = 0.0) -> float:
    """`downloads`: the hosts that must finish; `uploads`: every host that can upload, churned
    ones included (they serve while they stay), so the bound holds with churn."""
    n = len(downloads)
    if n == 0:
        return 0.0
    total_upload = origin_bps + seeds_upload_bps + float(np.sum(uploads))
    return max(file_bytes / origin_bps,
               file_bytes / float(np.min(downloads)),
               n * file_bytes / total_upload - arrival_spread_s)
