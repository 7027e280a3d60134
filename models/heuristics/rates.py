"""Hand-written rate controllers: how fast P2P traffic may go on a host.

Owns: the `heuristic:static` (Dragonfly 1) and `heuristic:sampling` (Dragonfly 2's adaptive
traffic shaper) RateControllers.

Rules kept here:
- Limits are bytes per second. A budget the caller does not give is the NIC's capacity.
- `per_task` splits the download budget among the host's running tasks, keyed by task id, and
  sums to the budget; it is None when no task runs.
- `constant` tells the simulator whether an answer can depend on traffic; a constant controller
  is asked once, not every interval.
- The controllers keep no state between calls, so the same observation gives the same limits.
"""
from __future__ import annotations

import numpy as np

from models.interfaces import HostLoad, Limits, TaskLoad


def _split(budget: float, weights: np.ndarray) -> np.ndarray:
    """`budget` in proportion to `weights`; equally when every weight is zero."""
    total = weights.sum()
    if total > 0:
        return budget * weights / total
    return np.full(len(weights), budget / len(weights))


def _by_task(tasks: tuple[TaskLoad, ...], shares: np.ndarray) -> dict[str, float]:
    return {task.task_id: float(share) for task, share in zip(tasks, shares)}


class _Controller:
    """Host budgets from constructor parameters, falling back to the NIC's capacity."""

    name: str
    constant: bool

    def __init__(self, seed: int = 0, download_bps: float | None = None,
                 upload_bps: float | None = None):
        for key, value in (("download_bps", download_bps), ("upload_bps", upload_bps)):
            if value is not None and not value >= 0:
                raise ValueError(f"{self.name}: {key} must be >= 0 bytes/s, got {value!r}")
        self.download_bps = download_bps
        self.upload_bps = upload_bps

    def _budgets(self, obs: HostLoad) -> tuple[float, float]:
        down = obs.download_capacity_bps if self.download_bps is None else self.download_bps
        up = obs.upload_capacity_bps if self.upload_bps is None else self.upload_bps
        return float(down), float(up)

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.name} download_bps={self.download_bps} "
                f"upload_bps={self.upload_bps}>")


class StaticController(_Controller):
    """Dragonfly 1: fixed host limits, the download budget shared in proportion to each task's
    recent rate, so a task that moves more keeps more.
    """

    name = "heuristic:static"
    constant = True

    def limit(self, obs: HostLoad, now: float) -> Limits:
        down, up = self._budgets(obs)
        if not obs.tasks:
            return Limits(download_bps=down, upload_bps=up)
        used = np.array([task.used_bps for task in obs.tasks], dtype=np.float64)
        return Limits(download_bps=down, upload_bps=up, per_task=_by_task(obs.tasks, _split(down, used)))


class SamplingController(_Controller):
    """Dragonfly 2's "sampling" traffic shaper, re-split every interval.

    Each task needs what it moved last interval (capped by what it has left) minus one piece;
    each gets one piece's worth per interval, so no task starves, plus the rest of the budget in
    proportion to its need. When one piece each already exceeds the budget, the budget is
    split equally.
    """

    name = "heuristic:sampling"
    constant = False

    def limit(self, obs: HostLoad, now: float) -> Limits:
        down, up = self._budgets(obs)
        if not obs.tasks:
            return Limits(download_bps=down, upload_bps=up)
        n = len(obs.tasks)
        interval = obs.interval_s
        if not interval > 0:
            raise ValueError(f"{self.name}: interval_s must be > 0, got {interval!r}")
        used, left, piece = np.array(
            [(t.used_bps, t.bytes_left, t.piece_bytes) for t in obs.tasks], dtype=np.float64
        ).reshape(n, 3).T
        floor = piece / interval
        rest = down - floor.sum()
        if rest < 0:
            shares = np.full(n, down / n)
        else:
            need = np.maximum(0.0, np.minimum(used * interval, left) - piece)
            shares = floor + _split(rest, need)
        return Limits(download_bps=down, upload_bps=up, per_task=_by_task(obs.tasks, shares))


RATE_CONTROLLERS: tuple[type[_Controller], ...] = (StaticController, SamplingController)
