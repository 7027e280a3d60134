"""Learned policies as numpy forward passes behind the two interfaces.

Owns: `LearnedPieceSelector` (a `PieceSelector`) and `LearnedRateController` (a
`RateController`), built from an exported `MLP` (`models.learned.export`), the input tables
each kind is trained on, and the check that a model file matches the running code's tables.

Rules kept here:
- numpy only: no torch, no mlflow. A forward pass is two small float32 matmuls; the
  normalisation and the first bias are folded into the first layer and the ReLU when the
  policy is built, so scoring a batch of 240 candidates costs some tens of microseconds
  (`tests/benchmarks/bench_learned.py`; the target is 50).
- A piece selector's model predicts the log transfer cost of a candidate (log seconds per MiB);
  its score is the negative prediction, so the cheapest predicted transfer wins.
- A rate controller's model predicts an upper quantile of the next interval's business traffic,
  as a fraction of the NIC, from the last `RATE_WINDOW` intervals; the P2P limit is the NIC's
  capacity minus that prediction and a margin.
- A model trained on another input table (schema version or names) is refused with a
  `ModelFileError`, never misread.
"""
from __future__ import annotations

import numpy as np

from models.interfaces import (COL, FEATURE_SCHEMA_VERSION, FEATURES, CandidateBatch, HostLoad,
                               Limits, PeerView)

from .export import MLP, ModelFileError

# Piece-selector inputs: the core's candidate features. Heavy-tailed columns go through log1p.
PIECE_LOG1P: tuple[str, ...] = (
    "piece_holders", "parent_uploads", "parent_upload_bps", "parent_tx_bps",
    "parent_sent_last_min", "parent_order", "child_download_bps",
)

# Rate-controller inputs: business traffic over the last RATE_WINDOW intervals, as a fraction
# of the NIC's capacity, oldest first. Versioned like the candidate features.
RATE_WINDOW = 16
RATE_FEATURE_SCHEMA_VERSION = 1
RATE_FEATURES: tuple[str, ...] = tuple(f"business_frac_lag{k}" for k in range(RATE_WINDOW - 1, -1, -1))

# What a kind expects: (schema version, feature names).
EXPECTED = {
    "piece-selector": (FEATURE_SCHEMA_VERSION, FEATURES),
    "rate-controller": (RATE_FEATURE_SCHEMA_VERSION, RATE_FEATURES),
}


def check_compatible(mlp: MLP, kind: str, where: str) -> None:
    """Refuse a model of another kind or trained on another input table."""
    if mlp.kind != kind:
        raise ModelFileError(f"{where}: is a {mlp.kind} model, not a {kind}")
    version, names = EXPECTED[kind]
    if mlp.feature_schema_version != version:
        raise ModelFileError(
            f"{where}: feature schema version {mlp.feature_schema_version} does not match the running "
            f"code's {version}; retrain the model on current traces")
    if tuple(mlp.feature_names) != tuple(names):
        raise ModelFileError(f"{where}: feature names do not match the running code's schema version {version}")


class _Folded:
    """An MLP rearranged for the fast pass (float32, as few numpy calls as possible; each costs
    a microsecond or more, so the call count, not the arithmetic, sets the time).

    With L the log1p columns, A = the first layer's rows / std, A' = A with the L rows zeroed
    and c = b0 - (mean / std) @ W0, the first layer is h = x @ A' + log1p(x[:, L]) @ A[L] + c.
    For one hidden layer, relu(h) @ w + b = max(h - c, -c) @ w + (b + c @ w), so c goes into
    the ReLU's threshold, and the output bias rides on one extra hidden unit that is always 1
    (a zero column, threshold 1).
    `sign` = -1 folds a negation into the last layer (a selector's score). Deeper nets run
    layer by layer.
    """

    def __init__(self, mlp: MLP, sign: float = 1.0):
        f32 = np.float32
        mask = np.asarray(mlp.log1p, dtype=bool)
        self.log_cols = np.flatnonzero(mask)
        self.lin_cols = np.flatnonzero(~mask)
        w0 = mlp.weights[0] / mlp.std[:, None]
        c = mlp.biases[0] - (mlp.mean / mlp.std) @ mlp.weights[0]
        layers = list(zip(mlp.weights[1:], mlp.biases[1:]))
        w_last, b_last = layers[-1]
        self.single = len(layers) == 1
        if self.single:
            w0 = np.hstack([w0, np.zeros((len(w0), 1))])             # the constant unit
            self.threshold = np.append(-c, 1.0).astype(f32)
            self.w_out = np.append(sign * w_last[:, 0], sign * (b_last[0] + c @ w_last[:, 0])).astype(f32)
            self.b_out = 0.0
        else:
            self.c = c.astype(f32)
            self.hidden = [(np.ascontiguousarray(w, dtype=f32), b.astype(f32)) for w, b in layers[:-1]]
            self.w_out = (sign * w_last[:, 0]).astype(f32)
            self.b_out = float(sign * b_last[0])
        self.a_log = np.ascontiguousarray(w0[self.log_cols], dtype=f32)
        w0 = w0.copy()
        w0[self.log_cols] = 0.0          # the raw log columns multiply zero: no gather of the rest
        self.a_lin = np.ascontiguousarray(w0, dtype=f32)
        self._zero = f32(0.0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """One output per row of `x` (float32)."""
        if len(self.log_cols):
            v = x[:, self.log_cols].astype(np.float32)
            v += 1.0
            np.log(v, out=v)
            h = x.astype(np.float32) @ self.a_lin
            h += v @ self.a_log
        else:
            h = x.astype(np.float32) @ self.a_lin
        if self.single:
            np.maximum(h, self.threshold, out=h)
            return h @ self.w_out
        h += self.c
        np.maximum(h, self._zero, out=h)
        for w, b in self.hidden:
            h = h @ w
            h += b
            np.maximum(h, self._zero, out=h)
        out = h @ self.w_out
        out += self.b_out
        return out


class LearnedPieceSelector:
    """Scores candidates by their negative predicted transfer cost (log seconds per MiB).

    `upload_slots` / `seed_upload_slots` come from the model's meta when it says, else
    Dragonfly 2's 200 / 2000.
    """

    def __init__(self, mlp: MLP, name: str, seed: int = 0, version: str = ""):
        check_compatible(mlp, "piece-selector", name)
        self.name = name
        self.version = version
        self.mlp = mlp
        self.meta = mlp.meta
        self.upload_slots = int(mlp.meta.get("upload_slots", 200))
        self.seed_upload_slots = int(mlp.meta.get("seed_upload_slots", 2000))
        self._score = _Folded(mlp, sign=-1.0)

    def score(self, child: PeerView, candidates: CandidateBatch, now: float) -> np.ndarray:
        n = len(candidates)
        if n < 2:
            return np.zeros(n)
        return self._score(candidates.x)

    def predict_cost(self, x: np.ndarray) -> np.ndarray:
        """Predicted log seconds per MiB of each candidate row (float32 precision)."""
        return -self._score(np.asarray(x, dtype=np.float64))

    def __repr__(self) -> str:
        return f"<LearnedPieceSelector {self.name} version={self.version!r}>"


def business_window(recent_total: np.ndarray, p2p_now: float, total_now: float, capacity: float,
                    window: int = RATE_WINDOW) -> np.ndarray:
    """Business traffic over the last `window` intervals as a fraction of `capacity`, oldest first.

    `HostLoad` carries the NIC's recent totals but only the current P2P rate, so past business
    traffic is taken as each recent total minus the current P2P rate (exact for the current
    interval, an estimate before it). A short history is padded with its oldest sample.
    """
    cap = max(float(capacity), 1.0)
    series = np.append(np.asarray(recent_total, dtype=np.float64), float(total_now)) - float(p2p_now)
    series = np.clip(series / cap, 0.0, 1.0)[-window:]
    if len(series) < window:
        series = np.concatenate([np.full(window - len(series), series[0]), series])
    return series


def limit_from_quantile(capacity: float, predicted_fraction: float, margin: float, floor: float) -> float:
    """The P2P limit: capacity minus the predicted business quantile and a margin (fractions)."""
    return float(capacity) * float(np.clip(1.0 - predicted_fraction - margin, floor, 1.0))


class LearnedRateController:
    """P2P limit = NIC capacity - predicted upper quantile of next-interval business traffic - margin.

    The model's meta carries `quantile` (what it was trained for), `margin` and `floor` (the
    smallest limit, as a fraction of the NIC), both overridable here. `download_bps` /
    `upload_bps`, when given, cap the limits like a static budget would. The download budget is
    split among tasks in proportion to their recent use, as `heuristic:static` does.
    """

    constant = False

    def __init__(self, mlp: MLP, name: str, seed: int = 0, version: str = "",
                 download_bps: float | None = None, upload_bps: float | None = None,
                 margin: float | None = None, floor: float | None = None):
        check_compatible(mlp, "rate-controller", name)
        self.name = name
        self.version = version
        self.mlp = mlp
        self.meta = mlp.meta
        self.margin = float(mlp.meta.get("margin", 0.05) if margin is None else margin)
        self.floor = float(mlp.meta.get("floor", 0.02) if floor is None else floor)
        for key, value in (("download_bps", download_bps), ("upload_bps", upload_bps)):
            if value is not None and not value >= 0:
                raise ValueError(f"{name}: {key} must be >= 0 bytes/s, got {value!r}")
        self.download_bps = download_bps
        self.upload_bps = upload_bps
        self._net = _Folded(mlp)

    def predict_fraction(self, windows: np.ndarray) -> np.ndarray:
        """Predicted business quantile (fraction of the NIC) for each window row."""
        return np.clip(self._net(np.asarray(windows, dtype=np.float64)), 0.0, 1.0)

    def limit(self, obs: HostLoad, now: float) -> Limits:
        windows = np.vstack([
            business_window(obs.recent_rx_bps, obs.p2p_rx_bps, obs.rx_bps, obs.download_capacity_bps),
            business_window(obs.recent_tx_bps, obs.p2p_tx_bps, obs.tx_bps, obs.upload_capacity_bps),
        ])
        q_down, q_up = self.predict_fraction(windows)
        down = limit_from_quantile(obs.download_capacity_bps, q_down, self.margin, self.floor)
        up = limit_from_quantile(obs.upload_capacity_bps, q_up, self.margin, self.floor)
        if self.download_bps is not None:
            down = min(down, self.download_bps)
        if self.upload_bps is not None:
            up = min(up, self.upload_bps)
        if not obs.tasks:
            return Limits(download_bps=down, upload_bps=up)
        used = np.array([t.used_bps for t in obs.tasks], dtype=np.float64)
        total = used.sum()
        shares = down * used / total if total > 0 else np.full(len(used), down / len(used))
        return Limits(download_bps=down, upload_bps=up,
                      per_task={t.task_id: float(s) for t, s in zip(obs.tasks, shares)})

    def __repr__(self) -> str:
        return f"<LearnedRateController {self.name} version={self.version!r}>"


def build_policy(mlp: MLP, kind: str, name: str, seed: int = 0, version: str = "", **params):
    """The policy object for an exported model of `kind` (checks compatibility first)."""
    if kind == "piece-selector":
        if params:
            raise ModelFileError(f"{name}: a piece selector takes no parameters, got {', '.join(params)}")
        return LearnedPieceSelector(mlp, name, seed=seed, version=version)
    if kind == "rate-controller":
        try:
            return LearnedRateController(mlp, name, seed=seed, version=version, **params)
        except TypeError as e:
            raise ModelFileError(f"{name}: {e}") from None
    raise ModelFileError(f"{name}: unknown policy kind {kind!r}")


__all__ = [
    "PIECE_LOG1P", "RATE_WINDOW", "RATE_FEATURES", "RATE_FEATURE_SCHEMA_VERSION", "EXPECTED",
    "check_compatible", "LearnedPieceSelector", "LearnedRateController", "business_window",
    "limit_from_quantile", "build_policy", "COL",
]
