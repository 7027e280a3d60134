"""Training data for the learned policies: randomized simulated runs and synthetic traffic.

    python -m experiments.datagen pieces  --out DIR [--scenarios 12] [--seed 0] [--max-hosts 120]
                                          [--epsilon 0.2] [--workers 1]
    python -m experiments.datagen traffic --out DIR [--files 6] [--hosts 20] [--intervals 1800] [--seed 0]

(`dfly train piece-selector --data DIR --generate N` runs the first before training.)

`pieces` draws N small scenarios (1 to 3 IDCs with scarce links between them, NIC mixes,
business background traffic, churn, arrival patterns, file and piece sizes), runs each with a
randomly drawn hand-written policy wrapped in `EpsilonSelector` (exploration: a random ranking
for a fraction of the decisions), and writes one `dfly sim run --trace` Parquet file per
scenario. `traffic` writes synthetic business-traffic traces (`models.learned.traffic`).
Both write a dataset card (`CARD.md`) and `manifest.json` into DIR: scenarios (the raw
scenario tables, re-runnable), seeds, policies, the code version, row counts, and the
feature / trace / traffic schema versions.

Rules kept here: one seed gives the same scenarios and the same traces; scenarios stay small
(seconds each) unless told otherwise; bulk output is never committed (`.gitignore`).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np

POLICIES = ("heuristic:d2", "heuristic:d2-load", "heuristic:v1", "heuristic:rarest-first",
            "heuristic:random", "heuristic:kraken")
NIC_MIXES = (
    {"100Mbps": 1.0},
    {"100Mbps": 0.7, "1Gbps": 0.3},
    {"200Mbps": 0.5, "1Gbps": 0.5},
    {"50Mbps": 0.3, "100Mbps": 0.4, "1Gbps": 0.3},
    {"1Gbps": 0.8, "10Gbps": 0.2},
)
IDC_NAMES = ("hz", "sg", "fra")


def draw_scenario(rng: np.random.Generator, index: int, max_hosts: int = 120) -> dict:
    """One random small scenario as raw TOML-like data (what `parse_scenario` reads)."""
    n_idcs = int(rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25]))
    idcs = list(IDC_NAMES[:n_idcs])
    size_mb = int(rng.choice([20, 50, 100, 200]))
    piece = str(rng.choice(["1MiB", "2MiB", "4MiB"]))
    data: dict = {
        "name": f"rand-{index:03d}",
        "file": {"size": f"{size_mb}MB", "piece_size": piece},
        "source": {"upload": str(rng.choice(["2Gbps", "5Gbps", "15Gbps"])), "idc": idcs[0]},
        "run": {"mode": "p2p", "seed": int(rng.integers(1, 2**31 - 1)), "max_sim_s": 1800},
        "idcs": [{"name": n} for n in idcs],
        "links": [],
        "supernodes": [],
        "hosts": [],
        "scheduler": {"concurrent_pieces": int(rng.choice([2, 4, 6])),
                      "upload_slots": int(rng.choice([4, 5, 8, 16])),
                      "parent_sample": int(rng.choice([8, 15, 24]))},
    }
    if rng.random() < 0.5:
        data["run"]["arrival"] = {"uniform_s": float(rng.choice([10, 30, 60]))}
    for i in range(n_idcs):
        for j in range(i + 1, n_idcs):
            data["links"].append({"between": [idcs[i], idcs[j]],
                                  "capacity": str(rng.choice(["200Mbps", "500Mbps", "1Gbps", "2Gbps"]))})
    seed_idcs = idcs if rng.random() < 0.5 else idcs[:1]
    for k, idc in enumerate(seed_idcs):
        data["supernodes"].append({"count": 1, "upload": str(rng.choice(["1Gbps", "2Gbps", "10Gbps"])),
                                   "idc": idc, "location": f"earth|{idc}|dc{k}"})
    total = int(rng.integers(max(4, max_hosts // 4), max_hosts + 1))
    shares = rng.dirichlet(np.ones(n_idcs)) if n_idcs > 1 else np.ones(1)
    counts = np.maximum(1, np.round(shares * total)).astype(int)
    for k, (idc, count) in enumerate(zip(idcs, counts)):
        mix = NIC_MIXES[int(rng.integers(len(NIC_MIXES)))]
        host = {"count": int(count), "idc": idc, "location": f"earth|{idc}|dc{k}|r{int(rng.integers(1, 9))}",
                "download": dict(mix) if len(mix) > 1 else next(iter(mix))}
        if rng.random() < 0.3:            # an asymmetric uplink
            host["upload"] = str(rng.choice(["20Mbps", "50Mbps", "100Mbps"]))
        if rng.random() < 0.5:
            peak = float(rng.choice([20, 40, 80]))
            host["background"] = {"mean": f"{peak / 4:g}Mbps", "peak": f"{peak:g}Mbps",
                                  "on_s": float(rng.choice([2, 5, 10])), "off_s": float(rng.choice([10, 20, 40]))}
        if rng.random() < 0.25:
            host["churn"] = {"leave_fraction": float(rng.choice([0.02, 0.05, 0.1]))}
        data["hosts"].append(host)
    return data


# ---- the heterogeneous multi-IDC family (issue 5's evaluation) ---------------------------------
# Held-out evaluation draws seeds below TRAIN_SEED_BASE; training data only seeds at or above it,
# so no evaluated scenario (structure, NIC draws, arrivals) is ever seen in training.
TRAIN_SEED_BASE = 100_000
FAMILY_KINDS = ("hetero", "homog")
HETERO_MIXES = (
    {"100Mbps": 0.5, "1Gbps": 0.4, "10Gbps": 0.1},
    {"100Mbps": 0.7, "1Gbps": 0.2, "10Gbps": 0.1},
    {"100Mbps": 0.3, "1Gbps": 0.6, "10Gbps": 0.1},
    {"100Mbps": 0.6, "1Gbps": 0.4},
    {"200Mbps": 0.5, "2Gbps": 0.4, "10Gbps": 0.1},
)
FAMILY_IDCS = ("hz", "sg", "fra", "iad")


def family_scenario(kind: str, seed: int, hosts: tuple[int, int] = (100, 240),
                    sizes_mb: tuple[int, ...] = (200, 300, 500)) -> dict:
    """One member of the evaluation family, as raw scenario data; structure and draws follow `seed`.

    `hetero`: 2 to 4 IDCs joined by scarce links (300 Mbps..1 Gbps each way), one seed
    (supernode) in the origin's IDC and sometimes a second one elsewhere, hosts with NIC mixes
    from 100 Mbps to 10 Gbps (one NIC each way), business background traffic on some groups,
    arrivals at once or spread over up to 20 s. `homog`: one IDC, one seed, every host the same
    NIC (100 Mbps or 1 Gbps), no background. Both: 4 MiB pieces, 4 pieces in flight, every
    policy's own upload slots, a 25 Mbps slot width, runs of seconds to a minute.
    """
    if kind not in FAMILY_KINDS:
        raise ValueError(f"unknown family kind {kind!r}; known: {', '.join(FAMILY_KINDS)}")
    rng = np.random.default_rng([seed, 0xFA31, FAMILY_KINDS.index(kind)])
    size = int(rng.choice(sizes_mb))
    total = int(rng.integers(hosts[0], hosts[1] + 1))
    n_idcs = int(rng.choice([2, 3, 4], p=[0.3, 0.45, 0.25])) if kind == "hetero" else 1
    idcs = list(FAMILY_IDCS[:n_idcs])
    data: dict = {
        "name": f"{kind}-{seed}",
        "file": {"size": f"{size}MB", "piece_size": "4MiB"},
        "source": {"upload": str(rng.choice(["5Gbps", "10Gbps", "15Gbps"])), "idc": idcs[0]},
        "run": {"mode": "p2p", "seed": int(seed), "max_sim_s": 3600},
        "idcs": [{"name": n} for n in idcs],
        "links": [],
        "supernodes": [{"count": 1, "upload": str(rng.choice(["2Gbps", "5Gbps", "10Gbps"])),
                        "download": "10Gbps", "idc": idcs[0], "location": f"earth|{idcs[0]}|dc0"}],
        "hosts": [],
        "scheduler": {"concurrent_pieces": 4, "min_upload_rate": "25Mbps"},
    }
    if kind == "homog":
        nic = str(rng.choice(["100Mbps", "1Gbps"]))
        if rng.random() < 0.5:
            data["run"]["arrival"] = {"uniform_s": float(rng.choice([5, 10, 20]))}
        data["hosts"].append({"count": total, "idc": idcs[0], "location": f"earth|{idcs[0]}|dc0|r1",
                              "download": nic})
        return data
    if rng.random() < 0.5:
        data["run"]["arrival"] = {"uniform_s": float(rng.choice([5, 10, 20]))}
    for i in range(n_idcs):
        for j in range(i + 1, n_idcs):
            data["links"].append({"between": [idcs[i], idcs[j]],
                                  "capacity": str(rng.choice(["300Mbps", "500Mbps", "1Gbps"]))})
    if rng.random() < 0.4:
        k = int(rng.integers(1, n_idcs))
        data["supernodes"].append({"count": 1, "upload": str(rng.choice(["1Gbps", "2Gbps"])),
                                   "download": "10Gbps", "idc": idcs[k], "location": f"earth|{idcs[k]}|dc{k}"})
    shares = rng.dirichlet(np.full(n_idcs, 2.0))
    counts = np.maximum(8, np.round(shares * total)).astype(int)
    for k, (idc, count) in enumerate(zip(idcs, counts)):
        mix = HETERO_MIXES[int(rng.integers(len(HETERO_MIXES)))]
        host = {"count": int(count), "idc": idc, "location": f"earth|{idc}|dc{k}|r{int(rng.integers(1, 9))}",
                "download": dict(mix), "upload": dict(mix)}
        if rng.random() < 0.4:
            peak = float(rng.choice([20, 40, 80]))
            host["background"] = {"mean": f"{peak / 4:g}Mbps", "peak": f"{peak:g}Mbps",
                                  "on_s": float(rng.choice([2, 5, 10])), "off_s": float(rng.choice([10, 20, 40]))}
        data["hosts"].append(host)
    return data


def run_jobs(fn, jobs: list, workers: int, log, describe) -> list:
    """`fn` over `jobs`, in `workers` processes when more than one, logging each result."""
    results = []
    with ProcessPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
        for r in (pool.map(fn, jobs) if pool is not None else map(fn, jobs)):
            results.append(r)
            log(describe(r))
    return results


def run_one(job: dict) -> dict:
    """Simulate one drawn scenario with its exploring policy and write its trace."""
    from dfsim.scenario import parse_scenario
    from dfsim.sim import Simulation
    from models.learned.explore import EpsilonSelector
    from models.loader import load_piece_selector, load_rate_controller

    scenario = parse_scenario(job["scenario"], name_hint=job["scenario"]["name"])
    seed = scenario.run.seed
    selector = load_piece_selector(job["policy"], seed=seed)
    if job["epsilon"] > 0:
        selector = EpsilonSelector(selector, job["epsilon"], seed=seed)
    rates = load_rate_controller("heuristic:static", seed=seed)
    sim = Simulation(scenario, selector, rates, seed=seed, trace_path=job["trace"], progress=False)
    summary = sim.run()
    rows = sim.trace.rows if sim.trace is not None else 0
    return {"name": scenario.name, "seed": seed, "policy": selector.name, "trace": job["trace"],
            "rows": rows, "hosts": summary["hosts"], "finished_hosts": summary["finished_hosts"],
            "p95_s": summary["completion_s"]["p95"], "wall_s": summary["wall_s"], "scenario": job["scenario"]}


def generate_pieces(out: str | Path, scenarios: int = 12, seed: int = 0, max_hosts: int = 120,
                    epsilon: float = 0.2, workers: int = 1, log=print) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0xDA7A])
    jobs = []
    for i in range(scenarios):
        sc = draw_scenario(rng, i, max_hosts)
        sc["name"] = f"rand-s{seed}-{i:03d}"
        jobs.append({"scenario": sc, "policy": POLICIES[int(rng.integers(len(POLICIES)))],
                     "epsilon": float(epsilon), "trace": str(out / f"{sc['name']}.parquet")})
    t0 = time.perf_counter()
    results = run_jobs(run_one, jobs, workers, log,
                       lambda r: f"{r['name']}: {r['hosts']} hosts, {r['policy']}, {r['rows']} rows, {r['wall_s']} s")
    from dfsim.trace import TRACE_SCHEMA_VERSION
    from models.interfaces import FEATURE_SCHEMA_VERSION

    manifest = _manifest("piece-transfer traces", "python -m experiments.datagen pieces "
                         f"--out {out} --scenarios {scenarios} --seed {seed} --max-hosts {max_hosts} "
                         f"--epsilon {epsilon}", seed,
                         {"trace_schema_version": TRACE_SCHEMA_VERSION,
                          "feature_schema_version": FEATURE_SCHEMA_VERSION},
                         [{k: v for k, v in r.items()} for r in results], time.perf_counter() - t0)
    _write_card(out, manifest)
    return manifest


def generate_family(out: str | Path, hetero: int = 24, homog: int = 6, seed: int = 0, epsilon: float = 0.3,
                    workers: int = 1, policies: tuple[str, ...] = POLICIES, hosts: tuple[int, int] = (100, 240),
                    log=print) -> dict:
    """Training traces from the evaluation family (`family_scenario`), seeds from TRAIN_SEED_BASE up
    (`seed` picks a disjoint block of 10,000), each run with a drawn hand-written policy (or a
    `file:` model) wrapped in `EpsilonSelector`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0xFA4])
    jobs = []
    base = TRAIN_SEED_BASE + 10_000 * seed
    for kind, n in (("hetero", hetero), ("homog", homog)):
        for i in range(n):
            sc = family_scenario(kind, base + i, hosts=hosts)
            sc["name"] = f"train-{kind}-{base + i}"
            jobs.append({"scenario": sc, "policy": policies[int(rng.integers(len(policies)))],
                         "epsilon": float(epsilon), "trace": str(out / f"{sc['name']}.parquet")})
    t0 = time.perf_counter()
    results = run_jobs(run_one, jobs, workers, log,
                       lambda r: f"{r['name']}: {r['hosts']} hosts, {r['policy']}, {r['rows']} rows, {r['wall_s']} s")
    from dfsim.trace import TRACE_SCHEMA_VERSION
    from models.interfaces import FEATURE_SCHEMA_VERSION

    manifest = _manifest("piece-transfer traces, heterogeneous multi-IDC family (training seeds)",
                         f"python -m experiments.datagen family --out {out} --hetero {hetero} --homog {homog} "
                         f"--seed {seed} --epsilon {epsilon} --policies {','.join(policies)}", seed,
                         {"trace_schema_version": TRACE_SCHEMA_VERSION,
                          "feature_schema_version": FEATURE_SCHEMA_VERSION},
                         results, time.perf_counter() - t0)
    _write_card(out, manifest)
    return manifest


def generate_traffic(out: str | Path, files: int = 6, hosts: int = 20, intervals: int = 1800, seed: int = 0,
                     log=print, style: str = "onoff") -> dict:
    from models.learned.traffic import TRAFFIC_SCHEMA_VERSION, write_traffic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = []
    for i in range(files):
        s = seed * 1000 + i
        path = out / f"traffic-s{s}.parquet"
        rows = write_traffic(path, s, hosts, intervals, name=f"traffic-s{s}", style=style)
        results.append({"name": f"traffic-s{s}", "seed": s, "trace": str(path), "rows": rows,
                        "hosts": hosts, "intervals": intervals})
        log(f"{path}: {rows} rows")
    manifest = _manifest("synthetic business-traffic traces", "python -m experiments.datagen traffic "
                         f"--out {out} --files {files} --hosts {hosts} --intervals {intervals} --seed {seed} "
                         f"--style {style}",
                         seed, {"traffic_schema_version": TRAFFIC_SCHEMA_VERSION, "traffic_style": style}, results,
                         time.perf_counter() - t0)
    _write_card(out, manifest)
    return manifest


def _manifest(kind: str, command: str, seed: int, versions: dict, runs: list[dict], wall_s: float) -> dict:
    from models.learned.train import git_commit

    return {"kind": kind, "command": command, "seed": seed, "code_version": git_commit(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **versions,
            "files": len(runs), "rows": int(sum(r["rows"] for r in runs)), "wall_s": round(wall_s, 1),
            "runs": runs}


def _write_card(out: Path, manifest: dict) -> None:
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    versions = {k: v for k, v in manifest.items() if k.endswith("_version") and k != "code_version"}
    lines = [f"# Dataset card: {manifest['kind']}", "",
             f"- generated by: `{manifest['command']}`",
             f"- code version (git commit): `{manifest['code_version']}`",
             f"- created: {manifest['created']}, in {manifest['wall_s']} s",
             *(f"- {k}: {v}" for k, v in versions.items()),
             f"- files: {manifest['files']}, rows: {manifest['rows']}",
             "- split: train and validation by file (scenario/seed), never by row",
             "- re-run: every scenario's raw table is in `manifest.json`", "",
             "| file | seed | policy | hosts | rows |", "| --- | --- | --- | --- | --- |"]
    for r in manifest["runs"]:
        lines.append(f"| {Path(r['trace']).name} | {r['seed']} | {r.get('policy', '-')} | {r['hosts']} | {r['rows']} |")
    (out / "CARD.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.datagen", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    pc = sub.add_parser("pieces", help="randomized simulated runs with exploration, as trace Parquet files")
    pc.add_argument("--out", required=True)
    pc.add_argument("--scenarios", type=int, default=12)
    pc.add_argument("--seed", type=int, default=0)
    pc.add_argument("--max-hosts", type=int, default=120)
    pc.add_argument("--epsilon", type=float, default=0.2)
    pc.add_argument("--workers", type=int, default=1)
    fa = sub.add_parser("family", help="the heterogeneous multi-IDC evaluation family, training seeds only")
    fa.add_argument("--out", required=True)
    fa.add_argument("--hetero", type=int, default=24)
    fa.add_argument("--homog", type=int, default=6)
    fa.add_argument("--seed", type=int, default=0)
    fa.add_argument("--epsilon", type=float, default=0.3)
    fa.add_argument("--workers", type=int, default=1)
    fa.add_argument("--policies", default=",".join(POLICIES),
                    help="comma-separated selector URIs drawn per scenario (file: models too)")
    tr = sub.add_parser("traffic", help="synthetic business-traffic traces")
    tr.add_argument("--out", required=True)
    tr.add_argument("--files", type=int, default=6)
    tr.add_argument("--hosts", type=int, default=20)
    tr.add_argument("--intervals", type=int, default=1800)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--style", choices=("onoff", "bursty"), default="onoff",
                    help="onoff: exponential on/off bursts; bursty: heavy-tailed on/off sources, drifting "
                         "diurnal level, spikes")
    a = p.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    if a.what == "pieces":
        if a.scenarios < 1 or a.max_hosts < 4 or not 0 <= a.epsilon <= 1:
            p.error("--scenarios >= 1, --max-hosts >= 4 and --epsilon in 0..1")
        m = generate_pieces(a.out, a.scenarios, a.seed, a.max_hosts, a.epsilon, a.workers, log)
    elif a.what == "family":
        if a.hetero < 0 or a.homog < 0 or a.hetero + a.homog < 1 or not 0 <= a.epsilon <= 1:
            p.error("--hetero/--homog >= 0 (one at least) and --epsilon in 0..1")
        m = generate_family(a.out, a.hetero, a.homog, a.seed, a.epsilon, a.workers,
                            tuple(x for x in a.policies.split(",") if x), log=log)
    else:
        if a.files < 1 or a.hosts < 1 or a.intervals < 32:
            p.error("--files >= 1, --hosts >= 1 and --intervals >= 32")
        m = generate_traffic(a.out, a.files, a.hosts, a.intervals, a.seed, log, style=a.style)
    print(json.dumps({k: v for k, v in m.items() if k != "runs"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
