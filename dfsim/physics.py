"""The physics every run is held to: client-server time and the P2P lower bound.

Owns the closed forms of DESIGN.md, computed from the hosts a run actually drew:

- client-server: `D_cs = max(N*F/u_s, F/d_min)`;
- P2P lower bound (Kumar and Ross): `max(F/u_origin, F/d_min, N*F/(u_origin + u_seeds + sum u_i))`;
- and, with several IDCs joined by limited links, one more term per IDC (below).

With staggered arrivals the N*F/U terms bound the last *finish time*, so a host's download
time can be shorter by the arrival spread; the bound subtracts it to stay a true bound.

The inter-IDC term. Take an IDC k that does not hold the origin, with N_k hosts that must
finish, U_k the upload capacity of every node in it (hosts, churned ones included, and
supernodes), and, for every other IDC j, a link j->k of capacity c_jk (unlisted pairs are
unconstrained, and then k gets no term). Nothing in k holds a byte of the file at the start:
supernodes fetch from the origin too. So every byte any node of k ever holds crossed into k,
at a rate of at most L_k = sum_j min(c_jk, U_j), where U_j is all upload in IDC j (the origin
included): a link carries no more than its own capacity, nor more than its side can send.

1. Seeding: each host of k needs all F bytes, so at least F distinct bytes crossed in:
   T >= F / L_k.
2. Volume: the N_k hosts of k receive N_k * F bytes, each sent either by a node inside k
   (at most U_k in all) or across the links (at most L_k): T >= N_k * F / (U_k + L_k).

Both hold in the fluid limit whatever the scheduling (they are cut bounds), so
`lower_bound_s` is the largest of the global terms and these, for every such IDC. A scenario
with one IDC, or with unlimited paths between IDCs, is bounded as before.

The piece bound (`piece_bound_s`). Kumar and Ross let a host upload a byte the moment it has
it; ours, like Dragonfly, only upload a piece once it is whole and verified, so a flash crowd
starts with idle uplinks. Let B(t) be the bytes the hosts have received by t and H(t) the
hosts holding a whole piece. Each such host received at least p bytes, so H <= B/p; only they
and the seeds (supernodes and origin, S in all) can send, each host at most u_max, all hosts at
most U = sum u_i. So B' <= S + min(U, u_max * B / p), and by comparison with the equation
itself, with a = u_max / p:

- while a*B < U:  B(t) <= (S/a) * (e^(a t) - 1), which reaches U/a at t1 = ln(1 + U/S) / a;
- after that:     B(t) <= U/a + (S + U) * (t - t1).

The last host finishes no earlier than B reaches N*F. For homogeneous hosts U/a = N*p: the
start-up costs about ln(1 + U/S) piece times at a host's upload. It is a true bound whatever
the scheduling (fluid: a piece may come from many parents at once), and it tends to Kumar and
Ross's N*F/(S + U) as p -> 0. Seed Fig. 8 with a 2 Gbps origin, 1,000 hosts at 100 Mbit/s up,
4 MiB pieces: 3.58 s against 3.28 s for 50 MB (the 57x the seed reports is then out of reach:
55.9x at most), 13.41 s against 13.12 s for 200 MB.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class IdcSide:
    """One IDC as the inter-IDC term sees it."""

    finishing: int            # hosts in it that must finish (churned ones do not)
    upload_bps: float         # upload of every node in it: hosts, supernodes, the origin
    has_origin: bool


def client_server_s(file_bytes: float, n_hosts: int, origin_bps: float, downloads: np.ndarray) -> float:
    if n_hosts == 0:
        return 0.0
    return max(n_hosts * file_bytes / origin_bps, file_bytes / float(np.min(downloads)))


def p2p_lower_bound_s(file_bytes: float, origin_bps: float, seeds_upload_bps: float,
                      downloads: np.ndarray, uploads: np.ndarray, arrival_spread_s: float = 0.0,
                      idcs: dict[str, IdcSide] | None = None,
                      links: dict[tuple[str, str], float] | None = None) -> float:
    """`downloads`: the hosts that must finish; `uploads`: every host that can upload, churned
    ones included (they serve while they stay), so the bound holds with churn. `idcs` and
    `links` (capacity of the directed link (from, to)) add the inter-IDC term."""
    n = len(downloads)
    if n == 0:
        return 0.0
    total_upload = origin_bps + seeds_upload_bps + float(np.sum(uploads))
    bound = max(file_bytes / origin_bps,
                file_bytes / float(np.min(downloads)),
                n * file_bytes / total_upload - arrival_spread_s)
    return max(bound, inter_idc_bound_s(file_bytes, idcs or {}, links or {}) - arrival_spread_s)


def piece_bound_s(file_bytes: float, piece_bytes: float, seeds_bps: float, n_finishing: int,
                  uploads: np.ndarray, arrival_spread_s: float = 0.0) -> float:
    """The volume term with whole-piece forwarding (above): when the hosts' received bytes
    can first reach N*F. `seeds_bps`: the origin's and supernodes' upload; `uploads`: every
    host that can upload."""
    need = n_finishing * file_bytes
    if need <= 0 or seeds_bps <= 0:
        return 0.0
    total = float(np.sum(uploads))
    u_max = float(np.max(uploads)) if len(uploads) else 0.0
    if total <= 0 or u_max <= 0:
        return max(0.0, need / seeds_bps - arrival_spread_s)
    a = u_max / piece_bytes
    ramp = total / a                       # bytes received when every host could be sending
    if need <= ramp:
        t = math.log1p(a * need / seeds_bps) / a
    else:
        t = math.log1p(total / seeds_bps) / a + (need - ramp) / (seeds_bps + total)
    return max(0.0, t - arrival_spread_s)


def inter_idc_bound_s(file_bytes: float, idcs: dict[str, IdcSide],
                      links: dict[tuple[str, str], float]) -> float:
    """The largest of the seeding and volume terms over the IDCs without the origin."""
    bound = 0.0
    for k, side in idcs.items():
        if side.has_origin or side.finishing == 0:
            continue
        inflow = 0.0
        for j, other in idcs.items():
            if j != k:
                inflow += min(links.get((j, k), math.inf), other.upload_bps)
        if math.isinf(inflow) or inflow <= 0.0:
            continue                 # unconstrained; or unreachable, which no bound describes
        bound = max(bound, file_bytes / inflow,
                    side.finishing * file_bytes / (side.upload_bps + inflow))
    return bound
