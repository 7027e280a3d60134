"""Learned policies end to end (issue 5, first slice): data generation, training with torch and
scikit-learn baselines, the exported .npz, a real MLflow SQLite store in tmp_path (no mocks),
the models:/ loader, a simulation run with the registered model, alias promotion followed by
PolicyHandle, and every kind of bad input.

Budget: well under two minutes (tiny sims, a few epochs, one MLflow store for the module).
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from experiments.cli import main as dfly
from models.interfaces import (COL, FEATURE_SCHEMA_VERSION, FEATURES, N_FEATURES, CandidateBatch,
                               HostLoad, PeerView)
from models.learned.export import MLP, ModelFileError, load_mlp, loads_mlp, save_mlp
from models.learned.policies import (PIECE_LOG1P, RATE_FEATURES, RATE_FEATURE_SCHEMA_VERSION,
                                     LearnedPieceSelector, LearnedRateController, business_window)
from models.loader import PolicyError, load_piece_selector, load_rate_controller

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = str(ROOT / "experiments/scenarios/heterogeneous-2idc.toml")
SMALL = ["--set", "hosts.0.count=16", "--set", "hosts.1.count=8", "--set", "file.size=16MB"]


def random_mlp(kind="piece-selector", hidden=8, seed=0, **changes) -> MLP:
    rng = np.random.default_rng(seed)
    names = FEATURES if kind == "piece-selector" else RATE_FEATURES
    f = len(names)
    fields = dict(kind=kind, feature_schema_version=FEATURE_SCHEMA_VERSION if kind == "piece-selector"
                  else RATE_FEATURE_SCHEMA_VERSION, feature_names=tuple(names),
                  log1p=np.array([n in PIECE_LOG1P for n in names]), mean=rng.normal(size=f),
                  std=rng.uniform(0.5, 2.0, f),
                  weights=[rng.normal(size=(f, hidden)), rng.normal(size=(hidden, 1))],
                  biases=[rng.normal(size=hidden), rng.normal(size=1)], meta={"margin": 0.05})
    fields.update(changes)
    return MLP(**fields)


def batch(n=240, seed=1) -> CandidateBatch:
    rng = np.random.default_rng(seed)
    x = rng.random((n, N_FEATURES))
    x[:, COL["parent_upload_bps"]] *= 1.25e9
    x[:, COL["piece_holders"]] *= 300
    return CandidateBatch(rng.integers(0, 100, n), rng.integers(0, 100, n), x)


def one_line(err) -> str:
    text = str(err.value if hasattr(err, "value") else err)
    assert "\n" not in text and text
    return text


# ---- the exported format and the numpy forward pass ------------------------------------------

def test_export_round_trip_and_fast_forward(tmp_path):
    mlp = random_mlp()
    path = save_mlp(tmp_path / "m.npz", mlp)
    back = load_mlp(path)
    assert back.feature_names == FEATURES and back.kind == "piece-selector"
    b = batch()
    np.testing.assert_allclose(back.forward(b.x), mlp.forward(b.x))
    sel = LearnedPieceSelector(back, "file:x")
    score = sel.score(PeerView(0, "hz", "", 0, 10, 0), b, 0.0)
    assert score.shape == (240,)
    # the float32 fast pass ranks like the float64 reference: score = -predicted cost
    np.testing.assert_allclose(score, -mlp.forward(b.x), rtol=1e-4, atol=1e-3)
    assert len(sel.score(PeerView(0, "hz", "", 0, 10, 0), batch(1), 0.0)) == 1
    deep = random_mlp(weights=[np.ones((N_FEATURES, 4)) * 0.1, np.ones((4, 3)), np.ones((3, 1))],
                      biases=[np.zeros(4), np.ones(3), np.zeros(1)])
    np.testing.assert_allclose(-LearnedPieceSelector(deep, "d").score(None, b, 0.0), deep.forward(b.x), rtol=1e-4)


def test_file_uri_loads_and_names_its_version(tmp_path):
    path = save_mlp(tmp_path / "m.npz", random_mlp())
    sel = load_piece_selector(f"file:{path}")
    assert isinstance(sel, LearnedPieceSelector) and sel.name == f"file:{path}"
    assert sel.version.startswith("sha256:")


@pytest.mark.parametrize("case", ["missing", "directory", "garbage", "truncated", "empty-zip", "format-version",
                                  "nan-weights", "shape", "wrong-kind", "schema-version", "feature-names"])
def test_bad_model_files_are_one_line_policy_errors(tmp_path, case):
    good = save_mlp(tmp_path / "good.npz", random_mlp()).read_bytes()
    path = tmp_path / "bad.npz"
    expect = "corrupted"
    if case == "missing":
        path = tmp_path / "nope.npz"
        expect = "no such model file"
    elif case == "directory":
        path = tmp_path
        expect = "is a directory"
    elif case == "garbage":
        path.write_bytes(b"not a model at all")
    elif case == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif case == "empty-zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("x.npy", b"")
        path.write_bytes(buf.getvalue())
    elif case == "format-version":
        with np.load(io.BytesIO(good)) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["format_version"] = np.array(7)
        np.savez(path, **arrays)
        expect = "format version 7"
    elif case == "nan-weights":
        m = random_mlp()
        m.weights[0][0, 0] = np.nan
        with pytest.raises(ModelFileError):
            save_mlp(path, m)
        with np.load(io.BytesIO(good)) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["W0"] = arrays["W0"] * np.nan
        np.savez(path, **arrays)
        expect = "not finite"
    elif case == "shape":
        with np.load(io.BytesIO(good)) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["W1"] = np.ones((3, 1))
        np.savez(path, **arrays)
        expect = "layer 1"
    elif case == "wrong-kind":
        save_mlp(path, random_mlp("rate-controller"))
        expect = "is a rate-controller model, not a piece-selector"
    elif case == "schema-version":
        save_mlp(path, random_mlp(feature_schema_version=FEATURE_SCHEMA_VERSION + 1))
        expect = f"feature schema version {FEATURE_SCHEMA_VERSION + 1} does not match"
    elif case == "feature-names":
        save_mlp(path, random_mlp(feature_names=tuple(reversed(FEATURES))))
        expect = "feature names do not match"
    with pytest.raises(PolicyError) as err:
        load_piece_selector(f"file:{path}")
    msg = one_line(err)
    assert msg.startswith(f"cannot load piece selector 'file:{path}': ") and expect in msg, msg


def test_rate_controller_limit_is_capacity_minus_quantile_and_margin(tmp_path):
    # a "model" that predicts the last sample exactly: W picks the lag-0 input
    f = len(RATE_FEATURES)
    w0 = np.zeros((f, 1))
    w0[-1, 0] = 1.0
    mlp = random_mlp("rate-controller", log1p=np.zeros(f, bool), mean=np.zeros(f), std=np.ones(f),
                     weights=[w0, np.ones((1, 1))], biases=[np.zeros(1), np.zeros(1)],
                     meta={"margin": 0.1, "floor": 0.0})
    path = save_mlp(tmp_path / "rc.npz", mlp)
    rc = load_rate_controller(f"file:{path}")
    assert isinstance(rc, LearnedRateController) and rc.constant is False
    obs = HostLoad(1000.0, 2000.0, rx_bps=500.0, tx_bps=600.0, p2p_rx_bps=200.0, p2p_tx_bps=100.0)
    lim = rc.limit(obs, 0.0)
    # business now: rx 300 of 1000 (0.3), tx 500 of 2000 (0.25); minus margin 0.1
    assert lim.download_bps == pytest.approx(1000 * (1 - 0.3 - 0.1))
    assert lim.upload_bps == pytest.approx(2000 * (1 - 0.25 - 0.1))
    capped = load_rate_controller(f"file:{path}", download_bps=100.0)
    assert capped.limit(obs, 0.0).download_bps == 100.0
    w = business_window(np.array([100.0, 900.0]), 50.0, 550.0, 1000.0, window=4)
    np.testing.assert_allclose(w, [0.05, 0.05, 0.85, 0.5])
    with pytest.raises(PolicyError, match="unexpected keyword"):
        load_rate_controller(f"file:{path}", burst=3)


def test_policy_handle_for_heuristics_and_files(tmp_path):
    from models.deploy import PolicyHandle

    h = PolicyHandle("heuristic:d2", "piece-selector")
    assert h.version == "" and not h.follows and h.maybe_reload() is None and h.policy.name == "heuristic:d2"
    r = PolicyHandle("heuristic:static", "rate controller", download_bps=10.0)
    assert r.kind == "rate-controller" and r.policy.download_bps == 10.0
    with pytest.raises(PolicyError, match="unknown policy kind"):
        PolicyHandle("heuristic:d2", "scheduler")
    path = save_mlp(tmp_path / "m.npz", random_mlp(seed=1))
    f = PolicyHandle(f"file:{path}", "piece-selector")
    v1 = f.version
    assert f.follows and f.maybe_reload() is None
    save_mlp(path, random_mlp(seed=2))                      # a new file in place: switch
    assert f.maybe_reload() == f"piece-selector file:{path}: version {v1} -> {f.version}" and f.version != v1
    path.write_bytes(b"garbage")                            # a broken file: keep, say why once
    message = f.maybe_reload()
    assert message.startswith(f"piece-selector file:{path}: keeping version {f.version}: ") and "corrupted" in message
    assert f.maybe_reload() is None and isinstance(f.policy, LearnedPieceSelector)
    path.unlink()
    assert "no such model file" in f.maybe_reload()


def test_file_models_load_without_torch_or_mlflow(tmp_path):
    import subprocess
    import sys

    path = save_mlp(tmp_path / "m.npz", random_mlp())
    code = ("import sys; from models.deploy import PolicyHandle; "
            f"h = PolicyHandle('file:{path}', 'piece-selector'); h.maybe_reload(); "
            "print(sorted(m for m in ('torch', 'mlflow', 'sklearn', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_epsilon_selector_explores_and_replays():
    from models.learned.explore import EpsilonSelector

    child = PeerView(0, "hz", "", 5, 10, 0)
    b = batch(20)

    def picks(eps, seed):
        sel = EpsilonSelector(load_piece_selector("heuristic:d2", seed=seed), eps, seed=seed)
        return [int(np.argmax(sel.score(child, b, 0.0))) for _ in range(200)]

    assert picks(0.3, 1) == picks(0.3, 1)
    assert len(set(picks(0.0, 1))) == 1 and len(set(picks(0.3, 1))) > 3


# ---- the pipeline: data, training, registry, simulation, promotion ------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(root)       # anything written to the default ./mlflow.db or ./runs stays here
        # an empty store from the start, so a test run alone (`-k`) finds one as it does after
        # the tests that register models
        from mlflow.tracking import MlflowClient
        MlflowClient(uri).search_registered_models()
        yield uri


@pytest.fixture(scope="module")
def pieces(tmp_path_factory):
    from experiments.datagen import generate_pieces

    out = tmp_path_factory.mktemp("pieces")
    manifest = generate_pieces(out, scenarios=5, seed=3, max_hosts=24, epsilon=0.2, log=lambda m: None)
    return out, manifest


@pytest.fixture(scope="module")
def trained(store, pieces, tmp_path_factory):
    """The two `dfly train` invocations of the pipeline test (version 1 @production, version 2)."""
    out = tmp_path_factory.mktemp("models")
    data, _ = pieces
    runs = []
    for seed in (0, 1):
        args = ["train", "piece-selector", "--data", str(data), "--epochs", "3", "--seed", str(seed),
                "--register", "piece-selector", "--out", str(out / f"ps{seed}.npz"), "--json", "-q"]
        args += ["--alias", "production"] if seed == 0 else ["--no-baselines"]
        runs.append(args)
    return out, runs


def _run(capsys, *args) -> tuple[int, str, str]:
    code = dfly(list(args))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_dataset_card(pieces):
    out, manifest = pieces
    card = (out / "CARD.md").read_text()
    assert f"feature_schema_version: {FEATURE_SCHEMA_VERSION}" in card and "code version" in card
    saved = json.loads((out / "manifest.json").read_text())
    assert saved["files"] == 5 and saved["rows"] == sum(r["rows"] for r in saved["runs"]) > 0
    assert all(Path(r["trace"]).is_file() and r["scenario"]["hosts"] for r in saved["runs"])
    assert len({r["seed"] for r in saved["runs"]}) == 5
    assert all(r["policy"].endswith("+eps0.2") for r in saved["runs"])


def test_train_register_load_simulate_promote_reload(store, pieces, trained, capsys):
    out, runs = trained
    code, stdout, err = _run(capsys, *runs[0])
    assert code == 0, err
    first = json.loads(stdout)
    assert first["version"] == "1" and first["run_id"]
    models = [row["model"] for row in first["table"]]
    assert models[:2] == ["mlp", "train-mean"] and {"linear", "ridge", "hist-gbt"} <= set(models)
    assert all(np.isfinite(row["val_rmse"]) for row in first["table"])
    mlp = load_mlp(first["out"])
    train_s, val_s = set(mlp.meta["train_scenarios"]), set(mlp.meta["val_scenarios"])
    assert train_s and val_s and not train_s & val_s            # split by scenario, never by row
    assert mlp.meta["dataset_digest"] == first["dataset_digest"]

    # the run carries params, the evaluation table, the digest and the commit
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store, registry_uri=store)
    run = client.get_run(first["run_id"])
    assert run.data.tags["dataset_digest"] == first["dataset_digest"]
    assert run.data.tags["git_commit"] == first["git_commit"]
    assert "mlp.val_rmse" in run.data.metrics and run.data.params["epochs"] == "3"
    assert {"evaluation.json", "dataset.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    mv = client.get_model_version("piece-selector", "1")
    assert mv.tags["dfly.kind"] == "piece-selector"
    import mlflow.pyfunc
    import pandas as pd

    served = mlflow.pyfunc.load_model("models:/piece-selector/1")   # the registered pyfunc runs the .npz
    assert served.metadata.signature.inputs.input_names() == list(FEATURES)
    x = batch(4).x
    np.testing.assert_allclose(served.predict(pd.DataFrame(x, columns=list(FEATURES))), mlp.forward(x))

    # the loader and a simulation through the alias
    sel = load_piece_selector("models:/piece-selector@production")
    assert isinstance(sel, LearnedPieceSelector) and sel.version == "1"
    code, stdout, err = _run(capsys, "sim", "run", SCENARIO, *SMALL, "--policy",
                             "models:/piece-selector@production", "--json", "--no-progress")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["policy"] == "models:/piece-selector@production"
    assert summary["finished_hosts"] + summary["left_hosts"] == summary["hosts"] == 24
    assert summary["completion_s"]["max"] >= summary["lower_bound_s"] * 0.999

    # a node follows the alias
    from models.deploy import PolicyHandle

    handle = PolicyHandle("models:/piece-selector@production", "piece-selector", seed=1)
    assert handle.version == "1" and handle.follows and handle.maybe_reload() is None
    pinned = PolicyHandle("models:/piece-selector/1", "piece-selector")
    code, stdout, err = _run(capsys, *runs[1])
    assert code == 0 and json.loads(stdout)["version"] == "2", err
    assert handle.maybe_reload() is None                      # version 2 exists, the alias did not move
    code, stdout, err = _run(capsys, "models", "promote", "piece-selector", "2", "production")
    assert code == 0 and "piece-selector@production -> version 2 (was version 1)" in stdout
    old = handle.policy
    message = handle.maybe_reload()
    assert message == "piece-selector models:/piece-selector@production: version 1 -> 2"
    assert handle.version == "2" and handle.policy is not old and handle.policy.version == "2"
    assert handle.maybe_reload() is None and pinned.maybe_reload() is None and not pinned.follows

    # a failure keeps the current policy, says why once
    client.delete_registered_model_alias("piece-selector", "production")
    message = handle.maybe_reload()
    assert message.startswith("piece-selector models:/piece-selector@production: keeping version 2: ")
    assert "has no alias 'production'" in one_line(message)
    assert handle.maybe_reload() is None and handle.version == "2" and handle.last_error
    code, stdout, err = _run(capsys, "models", "promote", "piece-selector", "2", "production")
    assert code == 0 and handle.maybe_reload() is None and handle.last_error is None

    code, stdout, err = _run(capsys, "models", "list")
    assert code == 0 and "piece-selector" in stdout and "@production -> 2" in stdout
    listed = json.loads(_run(capsys, "models", "list", "--json")[1])
    assert [v["version"] for v in listed[0]["versions"]] == ["1", "2"]


def test_rate_controller_training_and_evaluation(store, tmp_path, capsys):
    from experiments.datagen import generate_traffic

    data = tmp_path / "traffic"
    generate_traffic(data, files=3, hosts=4, intervals=400, seed=2, log=lambda m: None)
    assert (data / "CARD.md").is_file()
    code, stdout, err = _run(capsys, "train", "rate-controller", "--data", str(data), "--epochs", "3",
                             "--register", "rate-controller", "--alias", "production",
                             "--out", str(tmp_path / "rc.npz"), "--json", "-q")
    assert code == 0, err
    result = json.loads(stdout)
    assert {"mlp", "last-value", "window-quantile", "hist-gbt-quantile"} <= {r["model"] for r in result["table"]}
    table = {r["policy"]: r for r in result["policy_evaluation"]["table"]}
    assert "learned" in table and "static-50%" in table and "sampling-reactive-m0.1" in table
    assert all(0 <= r["p2p_throughput"] <= 1 and 0 <= r["business_impact"] <= 1 for r in table.values())
    # more static P2P, more business hurt
    assert table["static-90%"]["business_impact"] >= table["static-10%"]["business_impact"]
    rc = load_rate_controller("models:/rate-controller@production")
    lim = rc.limit(HostLoad(1e9, 1e9, 3e8, 2e8, 1e8, 1e8, recent_rx_bps=np.full(20, 2.5e8)), 0.0)
    assert 0 < lim.download_bps <= 1e9 and 0 < lim.upload_bps <= 1e9
    # a rate controller is not a piece selector
    with pytest.raises(PolicyError) as err:
        load_piece_selector("models:/rate-controller@production")
    assert "is a rate-controller model, not a piece-selector" in one_line(err)
    code, stdout, err = _run(capsys, "sim", "run", SCENARIO, *SMALL, "--rate-policy",
                             f"file:{tmp_path / 'rc.npz'}", "--json", "--no-progress")
    assert code == 0, err
    assert json.loads(stdout)["finished_hosts"] > 0


# ---- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("uri, expect", [
    ("models:/nope@production", "unknown model 'nope'"),
    ("models:/piece-selector@staging", "has no alias 'staging'"),
    ("models:/piece-selector/99", "has no version 99"),
])
def test_unknown_model_alias_version(store, trained, uri, expect, capsys):
    from mlflow.tracking import MlflowClient

    if not MlflowClient(store, registry_uri=store).search_registered_models():
        pytest.skip("needs the registered models of the pipeline test")
    with pytest.raises(PolicyError) as err:
        load_piece_selector(uri)
    assert expect in one_line(err)
    code, _, stderr = _run(capsys, "sim", "run", SCENARIO, "--policy", uri)
    assert code == 2 and expect in stderr and stderr.count("\n") == 1
    from models.deploy import PolicyHandle

    with pytest.raises(PolicyError, match=expect):          # a starting node refuses to start
        PolicyHandle(uri, "piece-selector")


def test_missing_store_is_an_error_not_a_new_database(tmp_path, monkeypatch, capsys):
    db = tmp_path / "none.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    with pytest.raises(PolicyError, match="no MLflow store"):
        load_piece_selector("models:/piece-selector@production")
    code, _, err = _run(capsys, "models", "list")
    assert code == 2 and "no MLflow store" in err and not db.exists()


def test_cli_bad_input(tmp_path, pieces, store, capsys):
    data, manifest = pieces
    one = manifest["runs"][0]["trace"]
    bad_parquet = tmp_path / "bad.parquet"
    bad_parquet.write_text("nope")
    cases = [
        (["train", "piece-selector", "--data", str(tmp_path / "missing")], "no such file or directory"),
        (["train", "piece-selector", "--data", one, "--no-mlflow"], "at least 2 scenarios"),
        (["train", "piece-selector", "--data", str(bad_parquet), "--no-mlflow"], "not a readable Parquet file"),
        (["train", "rate-controller", "--data", str(data), "--no-mlflow"], "missing column"),
        (["train", "piece-selector", "--data", str(data), "--epochs", "0"], "bad epochs"),
        (["train", "piece-selector", "--data", str(data), "--alias", "production"], "--alias needs --register"),
        (["train", "piece-selector", "--data", str(data), "--no-mlflow", "--register", "x"], "--register needs"),
        (["models", "promote", "nope", "1", "production"], "unknown model 'nope'"),
        (["models", "promote", "piece-selector", "x", "production"], "version must be a number"),
        (["models", "promote", "piece-selector", "1", "v2"], "bad alias"),
        (["train", "piece-selector", "--data", str(data), "--generate", "0"], "--generate must be >= 1"),
        (["train", "piece-selector", "--data", one, "--generate", "2"], "exactly one --data DIR"),
    ]
    for args, expect in cases:
        code, _, err = _run(capsys, *args)
        assert code == 2 and expect in err and err.count("\n") == 1, (args, err)
