"""`dfly sweep` and `dfly report`: studies over many simulations, and their rendered results."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.commands.errors import UsageError


def sweep(args: argparse.Namespace) -> int:
    from experiments.sweep import ExperimentError, load_experiment, sweep as run

    try:
        exp = load_experiment(args.experiment)
    except ExperimentError as e:
        raise UsageError(str(e)) from None
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be >= 1")
    out = Path(args.out or results_dir(exp))
    points = exp.points()
    done = sum((out / "points" / f"{p.id}.json").is_file() for p in points)
    print(f"dfly sweep: {exp.name}: {len(points)} points, {done} already done, results in {out}", file=sys.stderr)
    try:
        path = run(exp, out, cluster=args.cluster, workers=args.workers, progress=not args.no_progress,
                   tracking_uri=args.tracking_uri)
    except OSError as e:
        if "connect" in str(e).lower() or "timed out" in str(e).lower():
            raise UsageError(f"cannot reach the Dask cluster at {args.cluster}: {e}") from None
        raise
    print(path)
    return 0


def report(args: argparse.Namespace) -> int:
    from experiments.report import render

    src = Path(args.results)
    if src.suffix == ".toml" and src.is_file():
        # the experiment file itself: its results are where `dfly sweep` puts them by default
        from experiments.sweep import ExperimentError, load_experiment
        try:
            src = results_dir(load_experiment(src))
        except ExperimentError as e:
            raise UsageError(str(e)) from None
    table = src / "results.parquet" if src.is_dir() else src
    if not table.is_file():
        raise UsageError(f"{src}: no results.parquet (run dfly sweep first)")
    import pyarrow.parquet as pq
    try:
        pq.read_schema(table)
    except (OSError, ValueError) as e:     # pyarrow's ArrowInvalid is a ValueError
        raise UsageError(f"{table}: not a sweep's results table ({' '.join(str(e).split())[:200]})") from None
    out = Path(args.out or Path("reports") / (src.name if src.is_dir() else src.stem))
    print(render(src, out))
    return 0


def results_dir(exp) -> Path:
    """Where `dfly sweep` keeps an experiment's results unless told otherwise."""
    return Path("runs") / exp.name


def add_parser(sub) -> None:
    s = sub.add_parser("sweep", help="run an experiment's grid of simulations on Dask")
    s.add_argument("experiment", metavar="EXPERIMENT.toml")
    s.add_argument("--out", default=None, metavar="DIR", help="results folder (default runs/NAME)")
    s.add_argument("--cluster", default=None, metavar="tcp://HOST:8786", help="join a Dask cluster")
    s.add_argument("--workers", type=int, default=None, help="local worker processes (default: cores)")
    s.add_argument("--tracking-uri", default=None, help="MLflow store (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=sweep)
    r = sub.add_parser("report", help="render a sweep's results as figures and markdown")
    r.add_argument("results", metavar="RESULTS_DIR")
    r.add_argument("--out", default=None, metavar="DIR", help="default reports/NAME")
    r.set_defaults(func=report)
