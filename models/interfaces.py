"""The two policy interfaces and the observations they consume.

Owns: what a policy sees and what it answers. Every policy, hand-written or learned,
lives behind `PieceSelector` or `RateController`; the scheduling core (`dfnet.core`) builds
the observations, the simulator and the live runtime never talk to a policy directly.

Rules kept here:
- Batch-first. A `CandidateBatch` is one matrix: one row per (piece, parent) candidate, one
  column per feature named in `FEATURES`. A policy answers one float per row in one call.
- The feature table is versioned (`FEATURE_SCHEMA_VERSION`). Traces record it and learned
  models carry it, so a model trained on another schema is refused instead of misread.
- Units: bytes, bytes per second, seconds. Ratios are in 0..1.
- This package imports neither `dfnet` nor `dfsim`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

FEATURE_SCHEMA_VERSION = 1

# One column per feature, in this order. Add columns only at the end and bump the version.
FEATURES: tuple[str, ...] = (
    # the piece
    "piece_holders",          # online peers (seeds included) holding the piece
    "piece_rarity",           # piece_holders / online peers of the task
    "piece_position",         # piece index / number of pieces
    "piece_distance",         # |index - mean index of the child's running pieces| / pieces; 0 if none run
    # the parent
    "parent_is_seed",         # 1 for a supernode (seed), 0 for a normal peer
    "parent_finished",        # fraction of the task's pieces the parent holds
    "parent_completed",       # 1 if the parent holds every piece
    "parent_upload_success",  # pieces served / pieces attempted (1 with no history)
    "parent_free_slots",      # free upload slots / upload slot limit
    "parent_uploads",         # uploads running now
    "parent_upload_bps",      # upload capacity, bytes/s
    "parent_tx_bps",          # P2P bytes/s the parent is sending now (as last reported)
    "parent_sent_last_min",   # bytes sent, exponentially weighted over about the last 60 s
    "parent_mean_cost_s",     # mean seconds per served piece so far (0 with no history)
    "parent_order",           # the order in which the parent joined the task (0 = first)
    # the pair
    "same_idc",               # 1 if parent and child are in the same IDC
    "location_match",         # matched leading '|' parts of the locations, / 5
    # the child
    "child_finished",         # fraction of the task's pieces the child holds
    "child_download_bps",     # the child's download capacity, bytes/s
)
COL: dict[str, int] = {name: i for i, name in enumerate(FEATURES)}
N_FEATURES = len(FEATURES)


@dataclass(slots=True)
class PeerView:
    """The child that asks for work."""

    peer: int                 # the child's index in the task's swarm
    idc: str
    location: str
    finished: int             # pieces held
    n_pieces: int
    running: int              # pieces in flight to this child


@dataclass(slots=True)
class CandidateBatch:
    """Candidate (piece, parent) pairs: `piece[i]` from `parent[i]`, described by row `x[i]`."""

    piece: np.ndarray         # int64, piece indices
    parent: np.ndarray        # int64, parent indices in the task's swarm
    x: np.ndarray             # float64, shape (n, N_FEATURES), columns as in FEATURES

    def __len__(self) -> int:
        return len(self.piece)

    def col(self, name: str) -> np.ndarray:
        return self.x[:, COL[name]]


@dataclass(frozen=True, slots=True)
class LinearScore:
    """A selector's score as a weighted sum of feature columns (see `PieceSelector`)."""

    weights: tuple[float, ...]      # one per column of FEATURES
    constant: float = 0.0
    tie_scale: float = 0.0          # random tie-break: tie_scale * U[0, 1) added per row

    def __post_init__(self) -> None:
        if len(self.weights) != N_FEATURES:
            raise ValueError(f"a linear score has {N_FEATURES} weights, not {len(self.weights)}")


@runtime_checkable
class PieceSelector(Protocol):
    """Which piece should a child fetch, and from whom? Higher score is better.

    Optional attribute (not part of the protocol check): `parent_only = True` declares that
    a row's score does not depend on the piece columns, and that equal scores are ordered
    uniformly at random. The core then does not call `score` for a batch whose rows all share
    one parent, and picks among them at random itself (Dragonfly 2's evaluator ranks parents
    only). A policy without the attribute is always asked.

    Optional attribute: `linear = LinearScore(...)` declares that `score` is
    `x @ weights + constant` plus `tie_scale` times a uniform draw in [0, 1) per row. The core
    then computes that sum itself from the few columns with a non-zero weight, without
    building the batch's matrix (a numpy batch costs tens of microseconds; the sum, a few),
    and draws the tie-breaks from its own generator. `score` stays the definition: the tests
    hold the two to the same values.
    """

    name: str

    def score(self, child: PeerView, candidates: CandidateBatch, now: float) -> np.ndarray: ...


@dataclass(slots=True)
class TaskLoad:
    """One running task on a host, as a rate controller sees it."""

    task_id: str
    used_bps: float           # bytes/s this task moved in the last interval
    bytes_left: int
    piece_bytes: int


@dataclass(slots=True)
class HostLoad:
    """A host's NIC and P2P traffic over the last interval (bytes/s)."""

    download_capacity_bps: float
    upload_capacity_bps: float
    rx_bps: float             # everything the NIC received, business traffic included
    tx_bps: float             # everything the NIC sent, business traffic included
    p2p_rx_bps: float
    p2p_tx_bps: float
    interval_s: float = 1.0
    tasks: tuple[TaskLoad, ...] = ()
    # recent totals, oldest first, one sample per interval (may be empty)
    recent_rx_bps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    recent_tx_bps: np.ndarray = field(default_factory=lambda: np.zeros(0))


@dataclass(slots=True)
class Limits:
    """How fast P2P traffic may go on the host; `per_task` splits the download budget."""

    download_bps: float
    upload_bps: float
    per_task: dict[str, float] | None = None


@runtime_checkable
class RateController(Protocol):
    """How fast may P2P traffic go on this host right now?"""

    name: str

    def limit(self, obs: HostLoad, now: float) -> Limits: ...
