"""`dfly sweep` and `dfly report` on an embedded Dask cluster, with a real MLflow store."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from experiments.cli import main
from experiments.sweep import ExperimentError, load_experiment

ROOT = Path(__file__).resolve().parents[1]


def _experiment(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(f'scenario = "{ROOT / "experiments/scenarios/fig9.toml"}"\n' + body)
    return path


SMALL = '''name = "tiny"
policies = ["heuristic:d2"]
seeds = [1]
[grid]
"hosts.0.count" = [8, 16]
"file.size" = ["40MB"]
"run.mode" = ["p2p", "source"]
'''


def test_sweep_runs_on_dask_resumes_and_renders(tmp_path, capsys):
    exp = _experiment(tmp_path, SMALL)
    out = tmp_path / "runs"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["sweep", str(exp), "--out", str(out), "--workers", "2", "--no-progress",
                 "--tracking-uri", uri]) == 0
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert len(table) == 4
    assert {(r["hosts.0.count"], r["run.mode"]) for r in table} == {(8, "p2p"), (8, "source"), (16, "p2p"), (16, "source")}
    for r in table:
        assert r["finished_hosts"] == r["hosts.0.count"]
        assert r["completion_s.max"] >= r["lower_bound_s"] - 1e-9
    # interrupted: one point lost; a rerun computes only that one
    points = sorted((out / "points").glob("*.json"))
    lost = points[0]
    kept = {p: p.stat().st_mtime_ns for p in points[1:]}
    lost.unlink()
    assert main(["sweep", str(exp), "--out", str(out), "--workers", "1", "--no-progress",
                 "--tracking-uri", uri]) == 0
    assert lost.is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    assert len(pq.read_table(out / "results.parquet")) == 4
    # MLflow: a parent run per sweep, a child per computed point (4, then 1)
    import mlflow
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["sweep-tiny"], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 2 and len(runs) - len(parents) == 5
    # report
    capsys.readouterr()
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "P2P against the traditional way" in md and "speed-up" in md
    pngs = list((tmp_path / "report").glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    for png in pngs:
        assert f"]({png.name})" in md


@pytest.mark.parametrize("body, key", [
    ('name = "x"\nbogus = 1\n', "bogus"),
    ('name = "x"\npolicies = ["heuristic:nope"]\n', "policies"),
    ('name = "x"\nseeds = ["one"]\n', "seeds"),
    ('name = "x"\n[grid]\n"hosts.0.count" = [10, -5]\n', "hosts.0.count"),
    ('name = "x"\n[grid]\n"file.size" = ["12 parsecs"]\n', "file.size"),
    ('name = "x"\n[grid]\n"hosts.0.count" = []\n', "hosts.0.count"),
])
def test_bad_experiment_files_are_refused_naming_the_key(tmp_path, capsys, body, key):
    exp = _experiment(tmp_path, body)
    with pytest.raises(ExperimentError, match=key):
        load_experiment(exp)
    assert main(["sweep", str(exp), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0]
    assert not (tmp_path / "o").exists()


def test_every_study_file_loads():
    for path in sorted((ROOT / "experiments" / "studies").glob("*.toml")):
        assert load_experiment(path).points()


def test_report_refuses_what_is_not_a_results_table_in_one_line(tmp_path, capsys):
    bad = tmp_path / "results.parquet"
    bad.write_text("not parquet")
    for target in (bad, tmp_path / "missing"):
        capsys.readouterr()
        assert main(["report", str(target), "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(target) in err and "Traceback" not in err
    # an experiment file stands for its default results folder, runs/NAME
    exp = tmp_path / "exp.toml"
    exp.write_text(f'name = "never-swept-xyz"\nscenario = "{ROOT / "experiments" / "scenarios" / "fig3.toml"}"\n')
    assert main(["report", str(exp)]) == 2
    assert "runs/never-swept-xyz" in capsys.readouterr().err
