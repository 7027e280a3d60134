"""Fine-tuning a cost-predicting piece selector on completion time itself.

A transfer-cost model is myopic: the label of a decision is how long that one piece took, so
nothing in it rewards what a choice does for the swarm (a rare piece brought into an IDC, a
scarce link left free). This module adds a few linear terms to the predicted cost and picks
their coefficients by simulated episodes, scored by the p95 completion time:

    cost'(x) = MLP(x) + sum_i c_i * x'_i        (x' = the model's input after its log1p)

Owns: `add_linear_terms`, which folds such terms into the exported MLP itself (two extra
hidden units carry the linear function as relu(v) - relu(-v), the constants go into the output
bias), so the result is an ordinary exported file, scored by the same numpy forward pass at
the same cost; and `grid_search`, a search over the coefficients on training-seed episodes.

Rules kept here: the search never sees held-out scenarios (the caller passes training seeds);
numpy only here, simulations run through a caller-given `evaluate(mlp_path) -> float`.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from .export import MLP, save_mlp


def add_linear_terms(mlp: MLP, coefs: dict[str, float]) -> MLP:
    """A copy of the one-hidden-layer cost model with `coefs` (feature -> c) added to its output."""
    if len(mlp.weights) != 2:
        raise ValueError("add_linear_terms folds into a one-hidden-layer MLP")
    names = list(mlp.feature_names)
    v = np.zeros(len(names))
    const = 0.0
    for name, c in coefs.items():
        i = names.index(name)
        v[i] = c * mlp.std[i]            # c * x'_i = c * std_i * z_i + c * mean_i
        const += c * mlp.mean[i]
    w0, b0 = mlp.weights[0], mlp.biases[0]
    w1, b1 = mlp.weights[1], mlp.biases[1]
    w0n = np.hstack([w0, v[:, None], -v[:, None]])
    b0n = np.concatenate([b0, [0.0, 0.0]])
    w1n = np.vstack([w1, [[1.0], [-1.0]]])
    b1n = b1 + const
    meta = dict(mlp.meta)
    meta["linear_terms"] = {k: float(c) for k, c in coefs.items()}
    return MLP(mlp.kind, mlp.feature_schema_version, mlp.feature_names, mlp.log1p, mlp.mean, mlp.std,
               [w0n, w1n], [b0n, b1n], meta)


def grid_search(mlp: MLP, grid: dict[str, list[float]], evaluate, work: str | Path, log=print) -> dict:
    """Every combination of `grid` (feature -> candidate coefficients): write the folded model,
    score it with `evaluate(path)` (lower is better, e.g. the geometric-mean p95 over training
    episodes), and return {"best": coefs, "score": s, "trials": [...]}."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    keys = list(grid)
    trials = []
    for k, combo in enumerate(itertools.product(*(grid[key] for key in keys))):
        coefs = {key: float(c) for key, c in zip(keys, combo) if c != 0}
        path = save_mlp(work / f"trial-{k:02d}.npz", add_linear_terms(mlp, coefs) if coefs else mlp)
        score = float(evaluate(str(path)))
        trials.append({"coefs": coefs, "score": score, "path": str(path)})
        log(f"fine-tune trial {k}: {json.dumps(coefs)} -> {score:.3f}")
    best = min(trials, key=lambda t: t["score"])
    return {"best": best["coefs"], "score": best["score"], "path": best["path"], "trials": trials}


__all__ = ["add_linear_terms", "grid_search"]
