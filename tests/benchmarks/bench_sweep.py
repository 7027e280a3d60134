"""Sweep benchmark: `dfly sweep` throughput on 1 and 2 workers, and the seed-figure suite's wall time.

Run it as a script (it is not collected by pytest):

    .venv/bin/python tests/benchmarks/bench_sweep.py            # the fixed 8-point grid, 1 and 2 workers
    .venv/bin/python tests/benchmarks/bench_sweep.py --suite    # and every experiments/studies/fig*.toml

The grid is fig8-15g.toml (P2P, 15 Gbps source) over file.size 100 MB..1 GB x 150 and 200 hosts:
8 points of about 0.5-3 s each. It is written as a temporary experiment file and run by the
real command, `python -m experiments.cli sweep EXP --out DIR --workers N --tracking-uri
sqlite:///DIR/mlflow.db --no-progress`, in a fresh out dir per run (so no point is reused),
once with 1 worker and once with 2. For each it prints points per minute of wall time, the
sum of the points' own `wall_s` (read from DIR/results.parquet) and the ratio of the whole
command's wall time to that sum: the cost of starting Python, Dask's LocalCluster and MLflow
around the simulations. It ends with the 2-worker / 1-worker throughput ratio, measured in
the same run. Wall time on a shared machine measures the neighbours too, so the load average
at the start and the children's CPU time (user + system) are printed alongside.

With --suite it runs each seed-figure study (fig3, fig3-d1readme, fig7, fig8-15g, fig8-2g,
fig9) through `dfly sweep` with its default workers into a temporary out dir and prints each
study's wall time and the total (tens of minutes on 2 cores). Without it, it prints what past
runs recorded in runs/<study>/results.parquet, if present: the sum of their points' wall_s,
i.e. the simulations' own time, not a fresh measurement of the suite.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STUDIES = ROOT / "experiments" / "studies"
SCENARIO = ROOT / "experiments" / "scenarios" / "fig8-15g.toml"
SUITE = ("fig3", "fig3-d1readme", "fig7", "fig8-15g", "fig8-2g", "fig9")

GRID_TOML = f"""\
# bench_sweep.py's fixed grid: 4 file sizes x 2 host counts, P2P, about 0.5-3 s a point.
name = "bench-sweep"
scenario = "{SCENARIO}"
policies = ["heuristic:d2"]
seeds = [1]
[grid]
"file.size" = ["100MB", "200MB", "500MB", "1GB"]
"hosts.0.count" = [150, 200]
"run.mode" = ["p2p"]
"""
GRID_POINTS = 8


class BenchError(RuntimeError):
    pass


def run_sweep(exp: Path, out: Path, workers: int | None) -> tuple[float, float]:
    """Run `dfly sweep` on `exp` into `out`: its wall seconds and its children's CPU seconds."""
    cmd = [sys.executable, "-m", "experiments.cli", "sweep", str(exp), "--out", str(out),
           "--tracking-uri", f"sqlite:///{out}/mlflow.db", "--no-progress"]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        raise BenchError(f"dfly sweep {exp.name} (workers {workers or 'default'}) exited "
                         f"{proc.returncode}: {lines[-1] if lines else 'no message'}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def point_walls(results: Path) -> tuple[int, float]:
    """Rows of a sweep's results.parquet and the sum of their wall_s."""
    import pyarrow.parquet as pq

    if not results.is_file():
        raise BenchError(f"{results}: no results table")
    table = pq.read_table(results)
    if "wall_s" not in table.column_names:
        raise BenchError(f"{results}: no wall_s column")
    walls = [w for w in table.column("wall_s").to_pylist() if w is not None]
    return table.num_rows, float(sum(walls))


def throughput(tmp: Path, workers_list: list[int]) -> None:
    exp = tmp / "bench-sweep.toml"
    exp.write_text(GRID_TOML)
    ppm = {}
    for workers in workers_list:
        out = tmp / f"grid-w{workers}"
        wall, cpu = run_sweep(exp, out, workers)
        rows, sim = point_walls(out / "results.parquet")
        if rows != GRID_POINTS:
            raise BenchError(f"{out}/results.parquet has {rows} rows, expected {GRID_POINTS}")
        ppm[workers] = rows / wall * 60
        print(f"grid {rows} points, {workers} worker{'s' if workers > 1 else ''}: wall {wall:.1f} s, "
              f"{ppm[workers]:.1f} points/min, sum of points' wall_s {sim:.1f} s, "
              f"wall / sum {wall / sim:.2f} x, children CPU {cpu:.1f} s", flush=True)
    if 1 in ppm:
        for w in sorted(ppm):
            if w != 1:
                print(f"speed-up {w} workers / 1 worker: {ppm[w] / ppm[1]:.2f} x", flush=True)


def suite_fresh(tmp: Path) -> None:
    total = 0.0
    for name in SUITE:
        exp = STUDIES / f"{name}.toml"
        if not exp.is_file():
            raise BenchError(f"{exp}: no such study")
        out = tmp / "suite" / name
        wall, cpu = run_sweep(exp, out, None)
        rows, sim = point_walls(out / "results.parquet")
        total += wall
        print(f"suite {name}: {rows} points, wall {wall:.1f} s, sum of points' wall_s {sim:.1f} s, "
              f"children CPU {cpu:.1f} s", flush=True)
    print(f"suite total wall (default workers): {total:.1f} s ({total / 60:.1f} min)", flush=True)


def suite_recorded() -> None:
    label = "recorded simulation seconds of the points (sum of wall_s), not a fresh measurement"
    total, found, missing = 0.0, 0, []
    for name in SUITE:
        results = ROOT / "runs" / name / "results.parquet"
        if not results.is_file():
            missing.append(name)
            continue
        rows, sim = point_walls(results)
        total += sim
        found += 1
        print(f"suite {name}: {rows} points, {sim:.1f} s: {label}", flush=True)
    if found:
        print(f"suite total over {found} of {len(SUITE)} studies: {total:.1f} s ({total / 60:.1f} min): "
              f"{label}; run with --suite to measure", flush=True)
    if missing:
        print(f"suite: no runs/<study>/results.parquet for {', '.join(missing)} "
              f"(run with --suite to measure)", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", action="store_true", help="also run every seed-figure study (fig*) afresh")
    ap.add_argument("--workers", default="1,2", help="worker counts for the grid, comma-separated (default 1,2)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary out dirs and print where")
    args = ap.parse_args()
    try:
        workers_list = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        ap.error(f"--workers: not a comma-separated list of integers: {args.workers!r}")
    if not workers_list or min(workers_list) < 1:
        ap.error("--workers: each count must be >= 1")

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} cores, load average {load:.2f} at start", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench_sweep-"))
    try:
        throughput(tmp, workers_list)
        if args.suite:
            suite_fresh(tmp)
        else:
            suite_recorded()
    except BenchError as e:
        print(f"bench_sweep: error: {e}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"out dirs kept in {tmp}", flush=True)
        else:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
