"""Exploration for data generation: a selector that sometimes picks at random.

Owns: `EpsilonSelector`, which wraps any `PieceSelector`. With probability `epsilon` per
decision it replaces the wrapped policy's scores by uniform random ones, so traces hold
choices the wrapped policy would not make (slow parents, far IDCs, rare pieces) and a cost
model trained on them sees the whole candidate space, not one policy's habits.

Rules kept here: seeded like every policy (one seed, one run); the wrapped policy is still
called on every decision, so its own random stream does not depend on epsilon's draws.
"""
from __future__ import annotations

import numpy as np

from models.interfaces import CandidateBatch, PeerView, PieceSelector


class EpsilonSelector:
    def __init__(self, base: PieceSelector, epsilon: float, seed: int = 0):
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in 0..1, got {epsilon!r}")
        self.base = base
        self.epsilon = float(epsilon)
        self.name = f"{base.name}+eps{epsilon:g}"
        self.upload_slots = getattr(base, "upload_slots", 200)
        self.seed_upload_slots = getattr(base, "seed_upload_slots", 2000)
        self._rng = np.random.default_rng([seed, 0xE95])

    def score(self, child: PeerView, candidates: CandidateBatch, now: float) -> np.ndarray:
        s = self.base.score(child, candidates, now)
        n = len(candidates)
        if n >= 2 and self._rng.random() < self.epsilon:
            return self._rng.random(n)
        return s
