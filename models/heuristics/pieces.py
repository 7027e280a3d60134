"""Hand-written piece selectors: the baselines every learned policy is measured against.

Owns: the `heuristic:*` PieceSelectors and the upload slot defaults each one brings with it
(`upload_slots` for a normal peer, `seed_upload_slots` for a supernode/seed; the scheduling
core reads them when the scenario does not say otherwise).

Rules kept here:
- Each policy follows the public behaviour recorded in `shared/reference/ANCHORS.md`; none
  copies another project's code.
- `score` is one vectorized numpy pass over the batch, no Python loop over rows: the core calls
  it millions of times per simulated run. Weights live in tables, not in branch chains.
- Every policy owns its random generator, seeded in `__init__`, so one seed replays one run.
  A 0- or 1-row batch returns at once without drawing, since there is nothing to order.
  Coins come from a block drawn ahead (`_coins`): a batch has a few rows, and one generator
  call costs more than the numbers it draws.
- Strict orders (Dragonfly 1, Kraken) are exact lexicographic sorts, returned as negative ranks,
  so no weight can let a lower key outvote a higher one.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from models.interfaces import COL, N_FEATURES, CandidateBatch, LinearScore, PeerView

# Dragonfly 2's host type term: a seed peer scores 1.0, a normal peer 0.5.
HOST_TYPE_SCORE = {"seed": 1.0, "normal": 0.5}

# Ties broken at random stay below this, so they never reorder genuinely different scores
# by more than rounding noise (the brief's bound is 1e-6).
_TIE_SCALE = 1e-7
_COIN_BLOCK = 4096


def _linear(weights: Mapping[str, float]) -> tuple[np.ndarray, float]:
    """Fold a table of term weights into `x @ vector + constant`.

    Terms are feature columns, plus `host_type`, which is affine in `parent_is_seed`; folding it
    here keeps `score` to a single matrix-vector product.
    """
    vector = np.zeros(N_FEATURES)
    constant = 0.0
    for term, weight in weights.items():
        if term == "host_type":
            normal, seed = HOST_TYPE_SCORE["normal"], HOST_TYPE_SCORE["seed"]
            vector[COL["parent_is_seed"]] += weight * (seed - normal)
            constant += weight * normal
        else:
            vector[COL[term]] += weight
    return vector, constant


def _negative_rank(keys: tuple[np.ndarray, ...]) -> np.ndarray:
    """Scores from an exact lexicographic order; `keys` as for np.lexsort (last key primary)."""
    order = np.lexsort(keys)
    score = np.empty(len(order))
    score[order] = -np.arange(len(order), dtype=np.float64)
    return score


class _Selector:
    """Seeded generator and upload slot defaults shared by the hand-written selectors."""

    name: str
    parent_only = False
    upload_slots: int = 200
    seed_upload_slots: int = 2000

    def __init__(self, seed: int = 0):
        self._rng = np.random.default_rng(seed)
        self._block = np.zeros(0)
        self._used = 0

    def _coins(self, n: int) -> np.ndarray:
        """`n` uniform draws in [0, 1): the next `n` of a block drawn ahead from the generator."""
        i = self._used
        if i + n > len(self._block):
            self._block = self._rng.random(max(n, _COIN_BLOCK))
            i = 0
        self._used = i + n
        return self._block[i:i + n]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class RandomSelector(_Selector):
    """Uniform random: the floor any policy has to beat."""

    name = "heuristic:random"
    parent_only = True          # it ignores the piece (and everything else)
    upload_slots = 8
    seed_upload_slots = 2000

    def score(self, child: PeerView, candidates: CandidateBatch, now: float) -> np.ndarray:
        n = len(candidates)
        if n < 2:
            return np.zeros(n)
        return self._coins(n).copy()


class RarestFirstSelector(_Selector):
    """BitTorrent: random pieces until the child holds a few, then rarest first.

    The random start gets a newcomer something to trade quickly; a rare piece would come from
    the few peers that hold it and take longer.
    """

    name = "heuristic:rarest-first"
    upload_slots = 8
    seed_upload_slots = 2000
    random_first_pieces = 4

    def score(self, child: PeerView, candidates: CandidateBatch, now: float) -> np.ndarray:
        n = len(candidates)
        if n < 2:
            return np.zeros(n)
        coin = self._coins(n)
        if child.finished < self.random_first_pieces:
            return coin.copy()
        # Holder counts are integers and the coin lies in [0, 1), so the coin only breaks ties.
        return coin - candidates.x[:, COL["piece_holders"]]


class DragonflyV1Selector(_Selector):
    """Dragonfly 1 supernode: rarest piece, then nearest the running pieces, then random;
    from the first normal holder, the supernode only when no normal peer holds the piece.

    The supernode has no upload cap in Dragonfly 1; a normal peer serves 5 pieces at once.
    """

    name = "heuristic:v1"
    upload_slots = 5
    seed_upload_slots = 1_000_000
    _cols = [COL[c] for c in ("piece_holders", "piece_distance", "parent_is_seed", "parent_order")]

    def score(self, child: PeerView, candidates: CandidateBatch, now: float) -> np.ndarray:
        n = len(candidates)
        if n < 2:
            return np.zeros(n)
        holders, distance, is_seed, order = candidates.x[:, self._cols].T
        # One coin per piece, not per row: the random key orders pieces, and all rows of a
        # piece must stay together for the parent keys below it to decide the parent. A
        # piece's rows take the coin drawn for its first row.
        first: dict[int, float] = {}
        coin = np.array([first.setdefault(p, c) for p, c in
                         zip(candidates.piece.tolist(), self._coins(n).tolist())])
        return _negative_rank((order, is_seed, candidates.piece, coin, distance, holders))


class Dragonfly2Selector(_Selector):
    """Dragonfly 2's rule-based evaluator as used 2022-2025: a weighted sum of parent terms.

    It ranks parents only; pieces of equally scored parents are spread by a tiny random
    tie-break. The "seed while receiving or running" condition on the host type term is not
    observable in the feature table; every seed counts as one.
    """

    name = "heuristic:d2"
    parent_only = True          # parent and pair terms only; pieces tie, broken at random
    upload_slots = 200
    seed_upload_slots = 2000
    weights = {
        "parent_finished": 0.2,
        "parent_upload_success": 0.2,
        "parent_free_slots": 0.15,
        "host_type": 0.15,
        "same_idc": 0.15,
        "location_match": 0.15,
    }
    _vector, _constant = _linear(weights)
    # what `score` computes, declared: the core sums it without building the batch's matrix
    linear = LinearScore(tuple(_vector.tolist()), _constant, _TIE_SCALE)

    def score(self, child: PeerView, candidates: CandidateBatch, now: float) -> np.ndarray:
        n = len(candidates)
        if n < 2:
            return np.zeros(n)
        score = candidates.x.dot(self._vector)
        score += self._constant
        score += _TIE_SCALE * self._coins(n)
        return score


class Dragonfly2LoadSelector(_Selector):
    """Dragonfly 2's current evaluator: mostly how much upload headroom the parent has left.

    load_quality = 0.5 (1 - tx/maxTx) + 0.3 (1 - sent last minute / (maxTx * 60 s)) + 0.2 free
    slots, each term clipped to 0..1. A parent reporting no upload capacity has no headroom.
    """

    name = "heuristic:d2-load"
    parent_only = True
    upload_slots = 200
    seed_upload_slots = 2000
    load_weights = {"tx_headroom": 0.5, "minute_headroom": 0.3, "parent_free_slots": 0.2}
    weights = {"load_quality": 0.6, "same_idc": 0.2, "location_match": 0.1, "host_type": 0.1}
    window_s = 60.0

    _vector, _constant = _linear({k: w for k, w in weights.items() if k != "load_quality"})
    _headroom_weights = weights["load_quality"] * np.array(
        [load_weights["tx_headroom"], load_weights["minute_headroom"]]
    )
    _free_weight = weights["load_quality"] * load_weights["parent_free_slots"]
    _used_cols = [COL["parent_tx_bps"], COL["parent_sent_last_min"]]
    _per_capacity = np.array([1.0, window_s])   # maxTx, and maxTx over the minute

    def score(self, child: PeerView, candidates: CandidateBatch, now: float) -> np.ndarray:
        n = len(candidates)
        if n < 2:
            return np.zeros(n)
        x = candidates.x
        capacity = x[:, COL["parent_upload_bps"], None] * self._per_capacity
        # A zero capacity reads as fully used, so its headroom terms come out 0, not inf.
        used = np.divide(x[:, self._used_cols], capacity, out=np.ones((n, 2)), where=capacity > 0)
        headroom = np.clip(1.0 - used, 0.0, 1.0)
        free = np.clip(x[:, COL["parent_free_slots"]], 0.0, 1.0)
        return (
            headroom @ self._headroom_weights
            + self._free_weight * free
            + x @ self._vector
            + (self._constant + _TIE_SCALE * self._coins(n))
        )


class KrakenSelector(_Selector):
    """Uber Kraken: completed peers first (its tracker's order), then rarest-first, then random."""

    name = "heuristic:kraken"
    upload_slots = 10
    seed_upload_slots = 2000
    _cols = [COL["parent_completed"], COL["piece_holders"]]

    def score(self, child: PeerView, candidates: CandidateBatch, now: float) -> np.ndarray:
        n = len(candidates)
        if n < 2:
            return np.zeros(n)
        completed, holders = candidates.x[:, self._cols].T
        return _negative_rank((self._coins(n), holders, -completed))


PIECE_SELECTORS: tuple[type[_Selector], ...] = (
    RandomSelector,
    RarestFirstSelector,
    DragonflyV1Selector,
    Dragonfly2Selector,
    Dragonfly2LoadSelector,
    KrakenSelector,
)
