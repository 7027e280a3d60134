"""Sweeps: an experiment file's grid of simulations, run on Dask, kept as one Parquet table.

An experiment file (TOML, DESIGN's "experiment file"):

    name = "fig8"
    scenario = "../scenarios/fig8-15g.toml"     # relative to the experiment file
    policies = ["heuristic:d2"]                  # piece selectors (default: heuristic:d2)
    rate_policies = ["heuristic:static"]         # optional
    seeds = [1, 2]                               # default [1]
    [grid]                                       # every combination of these --set values
    "file.size" = ["50MB", "5GB"]
    "run.mode" = ["p2p", "source"]

Rules kept here:
- The whole file is checked before anything runs: unknown keys, empty or non-list grid
  values, unknown policies, and every grid combination loaded as a scenario (so a bad value
  is refused naming its key) — an `ExperimentError` in one line.
- A point is (grid values, policy, rate policy, seed); its id is a hash of those, so a rerun
  finds the points already done (`DIR/points/ID.json`, written atomically) and runs only the
  missing ones. `DIR/results.parquet` is rebuilt from all points at the end: one row per
  point, the grid keys as columns, plus policy, rate_policy, seed and the summary's fields
  flattened (`completion_s.p95`).
- Points run on Dask: an embedded `LocalCluster` of `workers` processes by default, or the
  cluster at `cluster` (`tcp://HOST:8786`). Each point is one simulation in one worker.
- With MLflow available, a sweep is one parent run and each point a child run (parameters:
  the point; metrics: the numeric summary fields).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

_KEYS = {"name", "scenario", "policies", "rate_policies", "seeds", "grid", "description"}


class ExperimentError(ValueError):
    """A bad experiment file; the message is one line naming the key."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True)
class Point:
    sets: tuple[tuple[str, object], ...]
    policy: str
    rate_policy: str
    seed: int

    @property
    def id(self) -> str:
        text = json.dumps([list(self.sets), self.policy, self.rate_policy, self.seed], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def set_args(self) -> list[str]:
        return [f"{k}={_toml_value(v)}" for k, v in self.sets]


@dataclass
class Experiment:
    name: str
    path: Path
    scenario: Path
    policies: list[str]
    rate_policies: list[str]
    seeds: list[int]
    grid: dict[str, list] = field(default_factory=dict)
    description: str = ""

    def points(self) -> list[Point]:
        keys = list(self.grid)
        combos = itertools.product(*(self.grid[k] for k in keys)) if keys else [()]
        return [Point(tuple(zip(keys, combo)), pol, rate, seed)
                for combo in combos for pol in self.policies for rate in self.rate_policies for seed in self.seeds]


def _toml_value(v: object) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {json.dumps(x) if isinstance(x, str) else x}" for k, x in v.items()) + " }"
    return str(v)


def load_experiment(path: str | Path) -> Experiment:
    """Parse and check an experiment file completely; ExperimentError on any problem."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ExperimentError(f"{path}: no such experiment file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ExperimentError(f"{path}: not valid TOML: {e}") from None
    unknown = set(raw) - _KEYS
    if unknown:
        raise ExperimentError(f"{path}: unknown key {sorted(unknown)[0]!r}; known: {', '.join(sorted(_KEYS))}")
    for key in ("name", "scenario"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ExperimentError(f"{path}: '{key}' must be a non-empty string")
    scenario = (path.parent / raw["scenario"]).resolve()
    if not scenario.is_file():
        raise ExperimentError(f"{path}: 'scenario': no such file {scenario}")

    def str_list(key: str, default: list) -> list:
        value = raw.get(key, default)
        if not isinstance(value, list) or not value or not all(isinstance(x, str) for x in value):
            raise ExperimentError(f"{path}: '{key}' must be a non-empty list of strings")
        return value

    policies = str_list("policies", ["heuristic:d2"])
    rates = str_list("rate_policies", ["heuristic:static"])
    seeds = raw.get("seeds", [1])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ExperimentError(f"{path}: 'seeds' must be a non-empty list of integers")
    grid = raw.get("grid", {})
    if not isinstance(grid, dict):
        raise ExperimentError(f"{path}: 'grid' must be a table of KEY = [values]")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ExperimentError(f"{path}: grid key {key!r} must be a non-empty list of values")
    exp = Experiment(raw["name"], path, scenario, policies, rates, seeds, grid, raw.get("description", ""))
    _check(exp)
    return exp


def _check(exp: Experiment) -> None:
    """Every point's scenario and policies load, so a sweep never fails halfway on input."""
    from dfsim.scenario import ScenarioError, load_scenario
    from models.loader import PolicyError, load_piece_selector, load_rate_controller

    for uri in exp.policies:
        try:
            load_piece_selector(uri)
        except PolicyError as e:
            raise ExperimentError(f"{exp.path}: 'policies': {e}") from None
    for uri in exp.rate_policies:
        try:
            load_rate_controller(uri)
        except PolicyError as e:
            raise ExperimentError(f"{exp.path}: 'rate_policies': {e}") from None
    seen = set()
    for p in exp.points():
        if p.sets in seen:
            continue
        seen.add(p.sets)
        try:
            load_scenario(exp.scenario, p.set_args())
        except ScenarioError as e:
            raise ExperimentError(f"{exp.path}: grid {dict(p.sets)}: {e}") from None


# ---- running -----------------------------------------------------------------------------
def run_point(scenario: str, sets: list[str], policy: str, rate_policy: str, seed: int) -> dict:
    """One simulation (runs inside a Dask worker): its JSON summary."""
    from dfsim.scenario import load_scenario
    from dfsim.sim import Simulation
    from models.loader import load_piece_selector, load_rate_controller

    sc = load_scenario(scenario, sets)
    sim = Simulation(sc, load_piece_selector(policy, seed=seed), load_rate_controller(rate_policy, seed=seed),
                     seed=seed, progress=False)
    return sim.run()


def flatten(summary: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in summary.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def sweep(exp: Experiment, out: Path, cluster: str | None = None, workers: int | None = None,
          progress: bool = True, tracking_uri: str | None = None) -> Path:
    """Run every missing point of `exp`; write and return `out/results.parquet`."""
    out = Path(out)
    (out / "points").mkdir(parents=True, exist_ok=True)
    todo = [p for p in exp.points() if not (out / "points" / f"{p.id}.json").is_file()]
    total = len(exp.points())
    if todo:
        _run(exp, out, todo, total, cluster, workers, progress, tracking_uri)
    return write_results(exp, out)


def _run(exp, out, todo, total, cluster, workers, progress, tracking_uri) -> None:
    from distributed import Client, LocalCluster, as_completed
    from tqdm import tqdm

    tracker = _Tracker(exp, tracking_uri)
    bar = tqdm(total=total, initial=total - len(todo), desc=exp.name, unit="point", file=sys.stderr,
               disable=not progress)
    if cluster:
        client = Client(cluster, timeout="10s")
        local = None
    else:
        local = LocalCluster(n_workers=workers or min(len(todo), os.cpu_count() or 1), threads_per_worker=1,
                             processes=True, dashboard_address=None, silence_logs=40)
        client = Client(local)
    try:
        futures = {client.submit(run_point, str(exp.scenario), p.set_args(), p.policy, p.rate_policy, p.seed,
                                 pure=False, key=f"{exp.name}-{p.id}"): p for p in todo}
        for fut in as_completed(futures):
            p = futures[fut]
            summary = fut.result()
            row = {"point": p.id, **{k: v for k, v in p.sets}, "policy": p.policy, "rate_policy": p.rate_policy,
                   "seed": p.seed, **flatten(summary)}
            tmp = out / "points" / f".{p.id}.tmp"
            tmp.write_text(json.dumps(row, default=str))
            os.replace(tmp, out / "points" / f"{p.id}.json")
            tracker.point(p, row)
            bar.update(1)
    finally:
        bar.close()
        tracker.close()
        client.close()
        if local is not None:
            local.close()


def write_results(exp: Experiment, out: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = {p.id for p in exp.points()}
    rows = []
    for f in sorted((out / "points").glob("*.json")):
        if f.stem in ids:
            rows.append(json.loads(f.read_text()))
    table = pa.Table.from_pylist([{k: (str(v) if isinstance(v, (list, dict)) else v) for k, v in r.items()}
                                  for r in rows])
    table = table.replace_schema_metadata({"experiment": exp.name, "scenario": str(exp.scenario),
                                           "grid": json.dumps(list(exp.grid))})
    path = out / "results.parquet"
    pq.write_table(table, path)
    return path


class _Tracker:
    """MLflow runs for a sweep: one parent, one child per point; silent without mlflow."""

    def __init__(self, exp: Experiment, uri: str | None):
        self.parent = None
        try:
            import mlflow

            from models.learned.registry import tracking_uri
        except ImportError:
            self.mlflow = None
            return
        self.mlflow = mlflow
        import logging
        for name in ("alembic", "mlflow"):
            logging.getLogger(name).setLevel(logging.WARNING)
        mlflow.set_tracking_uri(tracking_uri(uri))
        mlflow.set_experiment(f"sweep-{exp.name}")
        self.parent = mlflow.start_run(run_name=exp.name, tags={"experiment_file": str(exp.path)})

    def point(self, p: Point, row: dict) -> None:
        if self.mlflow is None:
            return
        m = self.mlflow
        with m.start_run(run_name=p.id, nested=True):
            m.log_params({**{k: str(v) for k, v in p.sets}, "policy": p.policy, "rate_policy": p.rate_policy,
                          "seed": p.seed})
            m.log_metrics({k.replace(".", "_"): float(v) for k, v in row.items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool)})

    def close(self) -> None:
        if self.mlflow is not None and self.parent is not None:
            self.mlflow.end_run()
