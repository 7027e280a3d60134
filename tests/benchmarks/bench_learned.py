"""Inference cost of the exported learned policies (issue 5: <= 50 us per 240-candidate batch).

    .venv/bin/python tests/benchmarks/bench_learned.py [--model FILE.npz] [--batch 240]

Without --model it benchmarks a randomly initialised 19 -> 32 -> 1 MLP of the exported format
(the cost does not depend on the weights). Prints one JSON line per measurement: the median
and best of many repeats, in microseconds, of `LearnedPieceSelector.score` on a batch drawn
like the core's, the same for `heuristic:d2` for scale, and of `LearnedRateController.limit`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from models.interfaces import (COL, FEATURES, N_FEATURES, CandidateBatch, HostLoad,  # noqa: E402
                               PeerView)
from models.learned.export import MLP, load_mlp  # noqa: E402
from models.learned.policies import (PIECE_LOG1P, RATE_FEATURES, LearnedPieceSelector,  # noqa: E402
                                     LearnedRateController, RATE_FEATURE_SCHEMA_VERSION)
from models.interfaces import FEATURE_SCHEMA_VERSION  # noqa: E402
from models.loader import load_piece_selector  # noqa: E402


def random_mlp(kind: str, hidden: int = 32, seed: int = 0) -> MLP:
    rng = np.random.default_rng(seed)
    names = FEATURES if kind == "piece-selector" else RATE_FEATURES
    f = len(names)
    log1p = np.array([n in PIECE_LOG1P for n in names])
    version = FEATURE_SCHEMA_VERSION if kind == "piece-selector" else RATE_FEATURE_SCHEMA_VERSION
    return MLP(kind, version, tuple(names), log1p, rng.normal(size=f), rng.uniform(0.5, 2, f),
               [rng.normal(size=(f, hidden)) / np.sqrt(f), rng.normal(size=(hidden, 1)) / np.sqrt(hidden)],
               [rng.normal(size=hidden) * 0.1, np.zeros(1)], {})


def candidates(n: int, seed: int = 1) -> CandidateBatch:
    rng = np.random.default_rng(seed)
    x = rng.random((n, N_FEATURES))
    for name, scale in (("piece_holders", 500), ("parent_uploads", 50), ("parent_upload_bps", 1.25e9),
                        ("parent_tx_bps", 1e8), ("parent_sent_last_min", 6e9), ("parent_order", 1000),
                        ("child_download_bps", 1.25e8)):
        x[:, COL[name]] *= scale
    return CandidateBatch(rng.integers(0, 1000, n), rng.integers(0, 1000, n), x)


def timeit(fn, repeats: int = 20000) -> tuple[float, float]:
    for _ in range(500):
        fn()
    samples = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter_ns()
        fn()
        samples[i] = time.perf_counter_ns() - t0
    return float(np.median(samples)) / 1e3, float(samples.min()) / 1e3


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="an exported piece-selector .npz (default: a random 19-32-1 MLP)")
    ap.add_argument("--batch", type=int, default=240)
    ap.add_argument("--repeats", type=int, default=20000)
    a = ap.parse_args()
    mlp = load_mlp(a.model) if a.model else random_mlp("piece-selector")
    sel = LearnedPieceSelector(mlp, "bench")
    batch = candidates(a.batch)
    child = PeerView(0, "hz", "a|b", 3, 100, 2)
    med, best = timeit(lambda: sel.score(child, batch, 0.0), a.repeats)
    hidden = mlp.weights[0].shape[1]
    print(json.dumps({"what": "learned piece-selector score", "batch": a.batch, "hidden": hidden,
                      "median_us": round(med, 2), "best_us": round(best, 2), "target_us": 50,
                      "ok": med <= 50}))
    d2 = load_piece_selector("heuristic:d2")
    med2, best2 = timeit(lambda: d2.score(child, batch, 0.0), a.repeats)
    print(json.dumps({"what": "heuristic:d2 score (for scale)", "batch": a.batch,
                      "median_us": round(med2, 2), "best_us": round(best2, 2)}))
    rc = LearnedRateController(random_mlp("rate-controller"), "bench")
    obs = HostLoad(1.25e8, 1.25e8, 6e7, 5e7, 3e7, 2e7, 1.0,
                   recent_rx_bps=np.full(30, 5e7), recent_tx_bps=np.full(30, 4e7))
    med3, best3 = timeit(lambda: rc.limit(obs, 0.0), a.repeats // 4)
    print(json.dumps({"what": "learned rate-controller limit", "median_us": round(med3, 2),
                      "best_us": round(best3, 2)}))
    return 0 if med <= 50 else 1


if __name__ == "__main__":
    sys.exit(main())
