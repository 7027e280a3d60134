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
    results = []
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for r in pool.map(run_one, jobs):
                results.append(r)
                log(f"{r['name']}: {r['hosts']} hosts, {r['policy']}, {r['rows']} rows, {r['wall_s']} s")
    else:
        for job in jobs:
            r = run_one(job)
            results.append(r)
            log(f"{r['name']}: {r['hosts']} hosts, {r['policy']}, {r['rows']} rows, {r['wall_s']} s")
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


def generate_traffic(out: str | Path, files: int = 6, hosts: int = 20, intervals: int = 1800, seed: int = 0,
                     log=print) -> dict:
    from models.learned.traffic import TRAFFIC_SCHEMA_VERSION, write_traffic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = []
    for i in range(files):
        s = seed * 1000 + i
        path = out / f"traffic-s{s}.parquet"
        rows = write_traffic(path, s, hosts, intervals, name=f"traffic-s{s}")
        results.append({"name": f"traffic-s{s}", "seed": s, "trace": str(path), "rows": rows,
                        "hosts": hosts, "intervals": intervals})
        log(f"{path}: {rows} rows")
    manifest = _manifest("synthetic business-traffic traces", "python -m experiments.datagen traffic "
                         f"--out {out} --files {files} --hosts {hosts} --intervals {intervals} --seed {seed}",
                         seed, {"traffic_schema_version": TRAFFIC_SCHEMA_VERSION}, results,
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
    tr = sub.add_parser("traffic", help="synthetic business-traffic traces")
    tr.add_argument("--out", required=True)
    tr.add_argument("--files", type=int, default=6)
    tr.add_argument("--hosts", type=int, default=20)
    tr.add_argument("--intervals", type=int, default=1800)
    tr.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    if a.what == "pieces":
        if a.scenarios < 1 or a.max_hosts < 4 or not 0 <= a.epsilon <= 1:
            p.error("--scenarios >= 1, --max-hosts >= 4 and --epsilon in 0..1")
        m = generate_pieces(a.out, a.scenarios, a.seed, a.max_hosts, a.epsilon, a.workers, log)
    else:
        if a.files < 1 or a.hosts < 1 or a.intervals < 32:
            p.error("--files >= 1, --hosts >= 1 and --intervals >= 32")
        m = generate_traffic(a.out, a.files, a.hosts, a.intervals, a.seed, log)
    print(json.dumps({k: v for k, v in m.items() if k != "runs"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
