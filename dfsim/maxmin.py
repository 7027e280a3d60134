"""Exact max-min fair rates by progressive filling: the reference for the fast flow model.

This module owns the textbook definition, written for clarity and exactness rather than
speed (hundreds of flows). The simulator's fast flow model is checked against it.

Rules it keeps:

- A flow uses a set of resources (``("up", 3)``, ``("down", 7)``, ``("link", "hz", "sg")``,
  any hashable); naming a resource twice in one flow counts once. Every resource a flow names
  must have a capacity (>= 0, ``inf`` allowed); resources no flow uses are ignored.
- Progressive filling: every unfrozen flow has the same rate, the current *level*, which
  rises until some resource saturates or some flow reaches its demand cap; flows through a
  saturated resource, and flows at their cap, freeze; repeat until all are frozen.
  Each round recomputes a resource's saturation level from scratch,
  ``(capacity - load of its frozen flows) / its unfrozen flows``, so errors do not accumulate.
- Ties are decided with relative tolerances (``RTOL``), and at least one resource or flow
  freezes every round, so the loop ends after at most ``flows + resources`` rounds.
- A flow that nothing bounds (no resources, or only infinite ones, and no finite demand) is
  an error: its max-min rate would be infinite.
- ``fluid_completion_times`` is the event-driven fluid model: rates are piecewise constant
  between flow starts and ends, and max-min is recomputed at each of them. A flow whose rate
  stays zero with nothing left to change it never completes (``inf``).
"""

from __future__ import annotations

import math
from typing import Hashable, Mapping, Sequence

import numpy as np

__all__ = ["max_min_rates", "fluid_completion_times", "RTOL"]

RTOL = 1e-12  # far above float rounding of a few dozen operations, far below any real gap


def _incidence(
    capacity: Mapping[Hashable, float], flows: Sequence[Sequence[Hashable]]
) -> tuple[np.ndarray, np.ndarray]:
    """(resources x flows) 0/1 matrix of the used resources, and their capacities."""
    index: dict[Hashable, int] = {}
    caps: list[float] = []
    members: list[list[int]] = []
    for f, flow in enumerate(flows):
        if isinstance(flow, (str, bytes)):
            raise ValueError(f"flow {f} must be a sequence of resources, not {flow!r}")
        used = []
        for res in flow:
            if res not in index:
                if res not in capacity:
                    raise ValueError(f"flow {f} uses resource {res!r}, which has no capacity")
                c = float(capacity[res])
                if not c >= 0:
                    raise ValueError(f"capacity of {res!r} must be >= 0, got {c!r}")
                index[res] = len(caps)
                caps.append(c)
            used.append(index[res])
        members.append(used)
    a = np.zeros((len(caps), len(flows)))
    for f, used in enumerate(members):
        a[used, f] = 1.0  # a repeated resource just sets the same cell again
    return a, np.asarray(caps, dtype=float)


def _demands(demand: Sequence[float] | None, n: int) -> np.ndarray:
    if demand is None:
        return np.full(n, np.inf)
    d = np.asarray(demand, dtype=float)
    if d.shape != (n,):
        raise ValueError(f"demand has shape {d.shape}, expected ({n},)")
    if not np.all(d >= 0):  # also refuses NaN
        raise ValueError("demands must be >= 0")
    return d


def _check_bounded(a: np.ndarray, cap: np.ndarray, demand: np.ndarray) -> None:
    # Checked up front so the message names the caller's flow index (the fluid model fills
    # subsets of the flows, whose indices would mean nothing to the caller).
    bounded = (a[np.isfinite(cap)].sum(axis=0) > 0) | np.isfinite(demand)
    if not bounded.all():
        f = int(np.flatnonzero(~bounded)[0])
        raise ValueError(f"flow {f} is unbounded: no finite-capacity resource and no finite demand")


def _fill(a: np.ndarray, cap: np.ndarray, demand: np.ndarray) -> np.ndarray:
    """Progressive filling on an incidence matrix; see the module docstring."""
    n_flows = a.shape[1]
    rates = np.zeros(n_flows)
    active = np.ones(n_flows, dtype=bool)
    level = 0.0
    while active.any():
        n_active = a @ active  # unfrozen flows per resource
        frozen_load = a @ np.where(active, 0.0, rates)
        busy = n_active > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            sat = np.where(busy, (cap - frozen_load) / np.where(busy, n_active, 1.0), np.inf)
        # In exact arithmetic the level never falls; clamp away rounding that says it does.
        sat = np.maximum(sat, level)
        caps_left = np.where(active, demand, np.inf)
        nxt = min(sat.min(initial=np.inf), caps_left.min(initial=np.inf))
        assert nxt < math.inf, "unbounded flows are refused by _check_bounded"
        level = nxt
        # Binding resources: saturation level equal to the new level, within a tolerance
        # scaled by the capacity (the size of the rounding in capacity - frozen load).
        # (An infinite resource never binds: its saturation level stays inf.)
        finite = busy & np.isfinite(cap)
        share = np.where(finite, cap / np.where(busy, n_active, 1.0), 0.0)
        binding = finite & (sat <= level + RTOL * np.maximum(level, share))
        freeze = active & (
            (a[binding].sum(axis=0) > 0) | (caps_left <= level * (1.0 + RTOL))
        )
        rates[freeze] = np.minimum(level, demand[freeze])
        active &= ~freeze
    return rates


def max_min_rates(
    capacity: Mapping[Hashable, float],
    flows: Sequence[Sequence[Hashable]],
    demand: Sequence[float] | None = None,
) -> np.ndarray:
    """Max-min fair rate of each flow, in the units of ``capacity``.

    ``flows[i]`` lists the resources flow ``i`` uses; ``demand[i]``, if given, caps its rate
    (``inf`` for no cap). Returns a float array with one rate per flow.
    """
    a, cap = _incidence(capacity, flows)
    dem = _demands(demand, len(flows))
    _check_bounded(a, cap, dem)
    return _fill(a, cap, dem)


def fluid_completion_times(
    capacity: Mapping[Hashable, float],
    flows: Sequence[Sequence[Hashable]],
    sizes: Sequence[float],
    start_times: Sequence[float] | None = None,
    *,
    demand: Sequence[float] | None = None,
) -> np.ndarray:
    """Completion time of each flow in the fluid model (exact piecewise-constant rates).

    Flow ``i`` starts at ``start_times[i]`` (default 0) with ``sizes[i]`` units to move and,
    while running, gets its max-min fair share among the running flows (capped by
    ``demand[i]`` if given). Rates are recomputed at every start and every completion.
    A zero-size flow completes when it starts; a flow starved for good gets ``inf``.
    """
    n = len(flows)
    a, cap = _incidence(capacity, flows)
    dem = _demands(demand, n)
    _check_bounded(a, cap, dem)
    size = np.asarray(sizes, dtype=float)
    start = np.zeros(n) if start_times is None else np.asarray(start_times, dtype=float)
    if size.shape != (n,) or start.shape != (n,):
        raise ValueError(f"sizes and start_times must have one entry per flow ({n})")
    if not (np.all(size >= 0) and np.all(np.isfinite(size))):
        raise ValueError("sizes must be finite and >= 0")
    if not np.all(np.isfinite(start)):
        raise ValueError("start_times must be finite")

    done = np.full(n, np.inf)
    remaining = size.copy()
    order = np.argsort(start, kind="stable")
    running = np.zeros(n, dtype=bool)
    k = 0  # next flow (in start order) not yet started
    t = float(start[order[0]]) if n else 0.0
    while True:
        # Start everything due now; zero-size flows are done the moment they start.
        while k < n and start[order[k]] <= t:
            f = order[k]
            if remaining[f] > 0:
                running[f] = True
            else:
                done[f] = t
            k += 1
        next_start = float(start[order[k]]) if k < n else math.inf
        if not running.any():
            if k == n:
                break
            t = next_start
            continue

        idx = np.flatnonzero(running)
        rates = _fill(a[:, idx], cap, dem[idx])
        with np.errstate(divide="ignore"):
            to_finish = np.where(rates > 0, remaining[idx] / rates, np.inf)
        dt = min(float(to_finish.min()), next_start - t)
        if dt == math.inf:
            break  # the running flows are starved and nothing will ever change that
        t_next = t + dt
        remaining[idx] -= rates * dt
        # Flows due within rounding of this instant finish here, exactly at t_next; the
        # tolerance is relative to each flow's own size and to the clock.
        finished = (to_finish <= dt + RTOL * max(abs(t_next), dt)) | (
            remaining[idx] <= RTOL * size[idx]
        )
        fin = idx[finished]
        done[fin] = t_next
        remaining[fin] = 0.0
        running[fin] = False
        t = t_next
    return done
