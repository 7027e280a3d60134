"""Business traffic on a host's NIC: synthetic traces, and how rate controllers fare on them.

Owns: the business-traffic trace format (Parquet, one row per host and interval; schema in
`datasets/README.md`), a seeded generator of such traces (diurnal drift, on/off bursts, noise),
and the evaluation of P2P limits on held-out traces: P2P throughput against business impact.

Rules kept here:
- Traffic is a fraction of the NIC's capacity in every computation; bytes/s only in files.
- The NIC is shared as the simulator shares it (`dfsim.sim`): with a P2P limit L, business
  demand b and capacity c, P2P gets min(L, c) when both fit, else max(c - b, min(L, c) / 2);
  business gets the rest. P2P is assumed to always want the whole NIC (a large download).
- Same seed, same trace.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

TRAFFIC_SCHEMA_VERSION = 1
GBPS = 1e9 / 8
# NIC capacities (bytes/s) and their weights
NIC_MIX = ((0.1 * GBPS, 0.3), (1.0 * GBPS, 0.5), (10.0 * GBPS, 0.2))


def generate_host(rng: np.random.Generator, n: int, interval_s: float = 1.0) -> np.ndarray:
    """Business traffic of one host, as a fraction of its NIC, over `n` intervals.

    base level x diurnal drift (a sine with a random period and phase; simulated "days" are
    minutes long so short traces see them) + on/off bursts (exponential on and off times)
    with multiplicative log-normal noise, clipped to 0..1.
    """
    t = np.arange(n) * interval_s
    base = rng.uniform(0.03, 0.35)
    amplitude = rng.uniform(0.0, 0.8)
    period = rng.uniform(300.0, 1800.0)
    phase = rng.uniform(0, 2 * np.pi)
    level = base * (1.0 + amplitude * np.sin(2 * np.pi * t / period + phase))
    on_s, off_s = rng.uniform(2.0, 30.0), rng.uniform(10.0, 120.0)
    height = rng.uniform(0.1, 0.6)
    bursts = np.zeros(n)
    i, on = 0, rng.random() < on_s / (on_s + off_s)
    while i < n:
        length = max(1, int(round(rng.exponential(on_s if on else off_s) / interval_s)))
        if on:
            bursts[i:i + length] = height * rng.uniform(0.6, 1.0)
        i += length
        on = not on
    noise = rng.lognormal(0.0, rng.uniform(0.05, 0.3), n)
    return np.clip((level + bursts) * noise, 0.0, 1.0)


def generate_host_bursty(rng: np.random.Generator, n: int, interval_s: float = 1.0) -> np.ndarray:
    """Business traffic of one host (fraction of its NIC) with heavy tails, `n` intervals.

    - diurnal drift: a sine "day" of 10..60 minutes times a slow AR(1) log-level random walk
      (a time constant of minutes), so the level wanders as well as cycles;
    - 1 to 3 superposed on/off sources (the superposition of heavy-tailed on/off sources is what
      makes measured LAN/WAN traffic self-similar, Willinger et al. 1997): on and off times
      Pareto with shape 1.2..1.9 (infinite variance below 2), burst heights log-normal, and the
      off times shortened in the busy part of the day;
    - rare one-interval spikes (Pareto heights), and AR(1) multiplicative noise;
    clipped to 0..1.
    """
    t = np.arange(n) * interval_s
    base = rng.uniform(0.02, 0.3)
    amp = rng.uniform(0.2, 0.9)
    period = rng.uniform(600.0, 3600.0)
    phase = rng.uniform(0, 2 * np.pi)
    day = 1.0 + amp * np.sin(2 * np.pi * t / period + phase)           # 1-amp .. 1+amp
    tau = rng.uniform(60.0, 600.0) / interval_s
    phi = np.exp(-1.0 / tau)
    sigma = rng.uniform(0.1, 0.4)
    walk = np.empty(n)
    e = rng.normal(0.0, sigma * np.sqrt(1 - phi ** 2), n)
    w = rng.normal(0.0, sigma)
    for i in range(n):
        w = phi * w + e[i]
        walk[i] = w
    level = base * day * np.exp(walk)
    bursts = np.zeros(n)
    for _ in range(int(rng.integers(1, 4))):
        a_on, a_off = rng.uniform(1.2, 1.9), rng.uniform(1.2, 1.9)
        x_on, x_off = rng.uniform(1.0, 4.0), rng.uniform(5.0, 40.0)
        mu_h = np.log(rng.uniform(0.05, 0.4))
        i, on = 0, rng.random() < 0.3
        while i < n:
            if on:
                dur = x_on * (1.0 + rng.pareto(a_on))
            else:                        # busier part of the day: shorter gaps
                dur = x_off * (1.0 + rng.pareto(a_off)) / max(day[i], 0.1)
            length = max(1, int(round(dur / interval_s)))
            if on:
                bursts[i:i + length] += min(1.0, rng.lognormal(mu_h, 0.5))
            i += length
            on = not on
    spikes = np.zeros(n)
    hit = rng.random(n) < rng.uniform(0.002, 0.01)
    spikes[hit] = np.minimum(1.0, 0.1 * (1.0 + rng.pareto(1.5, int(hit.sum()))))
    rho, s_n = rng.uniform(0.3, 0.8), rng.uniform(0.05, 0.25)
    noise = np.empty(n)
    z = 0.0
    eps = rng.normal(0.0, s_n * np.sqrt(1 - rho ** 2), n)
    for i in range(n):
        z = rho * z + eps[i]
        noise[i] = z
    return np.clip((level + bursts + spikes) * np.exp(noise), 0.0, 1.0)


STYLES = {"onoff": generate_host, "bursty": generate_host_bursty}


def generate(seed: int, hosts: int = 20, intervals: int = 1800, interval_s: float = 1.0, style: str = "onoff"):
    """(host, t_s, capacity_bps, business_bps) arrays for `hosts` hosts.

    `style`: "onoff" (exponential on/off bursts, the first generator) or "bursty" (heavy-tailed
    on/off sources, drifting diurnal level, spikes: `generate_host_bursty`)."""
    if style not in STYLES:
        raise ValueError(f"unknown traffic style {style!r}; known: {', '.join(STYLES)}")
    host_fn = STYLES[style]
    rng = np.random.default_rng([seed, 0x7AFF1C] if style == "onoff" else [seed, 0x7AFF1C, 2])
    caps = np.array([c for c, _ in NIC_MIX])
    weights = np.array([w for _, w in NIC_MIX])
    host_ids, times, capacity, business = [], [], [], []
    for h in range(hosts):
        cap = float(rng.choice(caps, p=weights / weights.sum()))
        frac = host_fn(rng, intervals, interval_s)
        host_ids.append(np.full(intervals, h, dtype=np.int32))
        times.append(np.arange(intervals) * interval_s)
        capacity.append(np.full(intervals, cap))
        business.append(frac * cap)
    return (np.concatenate(host_ids), np.concatenate(times), np.concatenate(capacity),
            np.concatenate(business))


def write_traffic(path: str | Path, seed: int, hosts: int = 20, intervals: int = 1800,
                  interval_s: float = 1.0, name: str = "synthetic-traffic", style: str = "onoff") -> int:
    """Write one synthetic business-traffic trace; returns its row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    host, t, cap, bus = generate(seed, hosts, intervals, interval_s, style)
    meta = {"traffic_schema_version": str(TRAFFIC_SCHEMA_VERSION), "scenario": name, "seed": str(seed),
            "generator": "models.learned.traffic.generate", "style": style, "hosts": str(hosts),
            "intervals": str(intervals), "interval_s": str(interval_s)}
    schema = pa.schema([("host", pa.int32()), ("t_s", pa.float64()), ("capacity_bps", pa.float64()),
                        ("business_bps", pa.float64())]).with_metadata(meta)
    table = pa.Table.from_arrays([pa.array(host), pa.array(t), pa.array(cap), pa.array(bus)], schema=schema)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return table.num_rows


# ---- evaluation ---------------------------------------------------------------------------------

def share(limit: np.ndarray, demand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P2P rate, business served), both fractions of the NIC, for limit and business demand."""
    allowed = np.minimum(limit, 1.0)
    contended = allowed + demand > 1.0
    p2p = np.where(contended, np.maximum(1.0 - demand, allowed / 2.0), allowed)
    served = np.minimum(demand, 1.0 - p2p)
    return p2p, served


@dataclass(slots=True)
class Outcome:
    policy: str
    p2p_throughput: float       # mean P2P rate, fraction of the NIC
    business_impact: float      # unserved business demand / business demand
    p2p_bps: float              # mean P2P bytes/s per host

    def row(self) -> dict:
        return {"policy": self.policy, "p2p_throughput": round(self.p2p_throughput, 4),
                "business_impact": round(self.business_impact, 5), "p2p_mbps": round(self.p2p_bps * 8 / 1e6, 2)}


def evaluate(name: str, series: list[tuple[float, np.ndarray]], limits: list[np.ndarray]) -> Outcome:
    """P2P throughput and business impact of `limits` (fraction per interval, one array per host)."""
    p2p_sum = served_sum = demand_sum = bps_sum = 0.0
    count = 0
    for (cap, frac), lim in zip(series, limits):
        p2p, served = share(lim, frac)
        p2p_sum += p2p.sum()
        bps_sum += (p2p * cap).sum()
        served_sum += served.sum()
        demand_sum += frac.sum()
        count += len(frac)
    return Outcome(name, p2p_sum / max(count, 1), 1.0 - served_sum / demand_sum if demand_sum > 0 else 0.0,
                   bps_sum / max(count, 1))


def reactive_limits(frac: np.ndarray, margin: float) -> np.ndarray:
    """Sampling-like: each interval, the NIC minus what business used the interval before, minus
    a margin (Dragonfly 2's shaper re-splits its budget every second from last second's use)."""
    prev = np.concatenate([[frac[0]], frac[:-1]])
    return np.clip(1.0 - prev - margin, 0.0, 1.0)


def model_limits(predict, frac: np.ndarray, window: int, margin: float, floor: float) -> np.ndarray:
    """Limits from a quantile predictor over each interval's preceding window (padded at the start)."""
    padded = np.concatenate([np.full(window, frac[0]), frac])
    windows = np.lib.stride_tricks.sliding_window_view(padded, window)[:-1]
    q = np.clip(predict(windows), 0.0, 1.0)
    return np.clip(1.0 - q - margin, floor, 1.0)


def compare(series: list[tuple[float, np.ndarray]], predict, window: int, margin: float, floor: float,
            statics=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)) -> dict:
    """The learned controller vs static limits and the sampling-like reactive one.

    Returns {"table": [rows], "learned": row, "best_static_no_more_impact": row or None,
    "throughput_ratio": learned / that static's throughput (or None)}.
    """
    rows = [evaluate("learned", series, [model_limits(predict, f, window, margin, floor) for _, f in series])]
    rows += [evaluate(f"static-{s:.0%}", series, [np.full(len(f), s) for _, f in series]) for s in statics]
    rows += [evaluate(f"sampling-reactive-m{m:g}", series, [reactive_limits(f, m) for _, f in series])
             for m in (0.05, 0.1, 0.2)]
    learned = rows[0]
    ok = [r for r in rows if r.policy.startswith("static") and r.business_impact <= learned.business_impact + 1e-12]
    best = max(ok, key=lambda r: r.p2p_throughput) if ok else None
    return {"table": [r.row() for r in rows], "learned": learned.row(),
            "best_static_no_more_impact": best.row() if best else None,
            "throughput_ratio": (learned.p2p_throughput / best.p2p_throughput) if best and best.p2p_throughput > 0
            else None}
