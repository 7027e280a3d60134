"""`--compare`: the same scenario in the simulator and on the testbed, and how far apart they are.

Owns the error measure and the figure.

Rules kept here:
- Error is r = sim / live - 1 per metric (DESIGN): positive when the simulator is slower.
  The metrics are completion p50, p95 and max (DESIGN's keys) plus origin egress.
- Both runs use the same scenario, seed and piece selector; the testbed draws the simulator's
  hosts (`plan`), so the two differ only in what the simulator does not model.
- matplotlib is imported only when a figure is asked for, with the Agg backend (no display).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def simulate(scenario, policy: str, seed: int) -> tuple[dict, list[float]]:
    from dfsim.sim import Simulation
    from models.loader import load_piece_selector, load_rate_controller

    sim = Simulation(scenario, load_piece_selector(policy, seed=seed), load_rate_controller("heuristic:static", seed=seed),
                     seed=seed, progress=False)
    summary = sim.run()
    return summary, [float(x) for x in sim.completion_times()]


def errors(sim: dict, live: dict) -> dict:
    def r(a, b):
        return round(a / b - 1.0, 4) if a is not None and b else None
    out = {k: r(sim["completion_s"][k], live["completion_s"][k]) for k in ("p50", "p95", "max")}
    out["source_egress"] = r(sim["source_egress_bytes"], live["source_egress_bytes"])
    return out


def figure(path: str | Path, sim_times: list[float], live_times: list[float], title: str, note: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for times, label, style in ((sim_times, "simulated (dfsim)", "-"), (live_times, "live (testbed)", "--")):
        if times:
            x = np.sort(np.asarray(times))
            ax.step(x, np.arange(1, len(x) + 1) / len(x), style, where="post", label=f"{label}, n={len(x)}")
    ax.set_xlabel("completion time (s)")
    ax.set_ylabel("fraction of hosts finished")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    ax.set_title(title, fontsize=10)
    if note:
        fig.text(0.01, 0.005, note, fontsize=7, color="0.35")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
