"""The learned policies' evaluation (issue 5's targets): the heterogeneous multi-IDC family, the
bursty traffic generator, the summaries, and the entry point writing its report on a tiny family.

Budget: seconds (tiny family members, no training: random model files).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from dfsim.scenario import parse_scenario
from experiments.datagen import FAMILY_KINDS, TRAIN_SEED_BASE, family_scenario
from experiments.learned_eval import heldout_scenarios, main, rate_eval, summarize_pieces
from models.interfaces import FEATURE_SCHEMA_VERSION, FEATURES
from models.learned.export import MLP, save_mlp
from models.learned.policies import PIECE_LOG1P, RATE_FEATURE_SCHEMA_VERSION, RATE_FEATURES
from models.learned.traffic import generate, write_traffic


def random_model(path, kind="piece-selector", seed=0):
    rng = np.random.default_rng(seed)
    names = FEATURES if kind == "piece-selector" else RATE_FEATURES
    f = len(names)
    meta = {"margin": 0.05, "quantile": 0.95, "floor": 0.02} if kind == "rate-controller" else {}
    mlp = MLP(kind, FEATURE_SCHEMA_VERSION if kind == "piece-selector" else RATE_FEATURE_SCHEMA_VERSION,
              tuple(names), np.array([n in PIECE_LOG1P for n in names]) if kind == "piece-selector"
              else np.zeros(f, bool), np.zeros(f), np.ones(f),
              [rng.normal(size=(f, 4)) * 0.1, rng.normal(size=(4, 1)) * 0.1], [np.zeros(4), np.full(1, 0.3)], meta)
    return save_mlp(path, mlp)


def test_family_members_parse_are_seeded_and_shaped():
    for kind in FAMILY_KINDS:
        for seed in (1, 2, TRAIN_SEED_BASE):
            a, b = family_scenario(kind, seed), family_scenario(kind, seed)
            assert a == b
            sc = parse_scenario(a)
            n = sum(h.count for h in sc.hosts)
            assert 100 <= n <= 240 + 4 * 8
            if kind == "hetero":
                assert len(sc.idcs) >= 2 and sc.links
                assert all(l.capacity_bps <= 1e9 / 8 for l in sc.links)          # scarce: <= 1 Gbps
                rates = {float(v) for h in sc.hosts for v in h.download.values}
                assert min(rates) <= 200e6 / 8 and max(rates) >= 1e9 / 8         # a NIC mix
            else:
                assert len(sc.idcs) == 1 and not sc.links
    assert family_scenario("hetero", 1) != family_scenario("hetero", 2)
    held = heldout_scenarios(3, 2, (100, 240))
    assert [k for k, _ in held] == ["hetero"] * 3 + ["homog"] * 2
    assert all(sc["run"]["seed"] < TRAIN_SEED_BASE for _, sc in held)
    with pytest.raises(ValueError):
        family_scenario("nope", 1)


def test_bursty_traffic_is_seeded_bounded_and_heavier_tailed():
    h1 = generate(3, hosts=6, intervals=3000, style="bursty")
    h2 = generate(3, hosts=6, intervals=3000, style="bursty")
    for x, y in zip(h1, h2):
        np.testing.assert_array_equal(x, y)
    frac = h1[3] / h1[2]
    assert frac.min() >= 0 and frac.max() <= 1 + 1e-12
    onoff = generate(3, hosts=6, intervals=3000)
    assert not np.array_equal(onoff[3], h1[3])
    with pytest.raises(ValueError):
        generate(3, style="nope")


def test_summaries_ratios_and_targets():
    rows = []
    for sc, kind, vals in (("hetero-1", "hetero", {"heuristic:d2": 100, "heuristic:v1": 80, "learned": 60}),
                           ("hetero-2", "hetero", {"heuristic:d2": 50, "heuristic:v1": 100, "learned": 50}),
                           ("homog-1", "homog", {"heuristic:d2": 10, "heuristic:v1": 10, "learned": 10.1})):
        for p, v in vals.items():
            rows.append({"scenario": sc, "kind": kind, "seed": 1, "policy": p, "hosts": 10, "file_mb": 200,
                         "p95_s": v, "lower_bound_s": 5})
    s = summarize_pieces(rows, policies=("heuristic:d2", "heuristic:v1"))
    h = s["kinds"]["hetero"]["learned"]
    assert h["ratio_vs_best_per_scenario"] == pytest.approx(np.sqrt(0.75 * 1.0), abs=1e-4)
    assert h["worst_ratio"] == 1.0 and h["scenarios_meeting_target"] == 1 and not h["met"]
    assert s["kinds"]["homog"]["learned"]["met"]            # 1.01 <= 1.02


def test_rate_eval_frontier(tmp_path):
    write_traffic(tmp_path / "t.parquet", 5, hosts=3, intervals=300, style="bursty")
    r = rate_eval(str(random_model(tmp_path / "r.npz", "rate-controller")), [tmp_path / "t.parquet"])
    assert r["hosts"] == 3 and r["intervals"] == 900
    thr = [s["p2p_throughput"] for s in r["static"]]
    assert thr == sorted(thr)                               # a higher static limit moves more
    assert r["default"]["margin"] == 0.05 and isinstance(r["met"], bool)


def test_entry_point_writes_its_report(tmp_path, capsys):
    model = random_model(tmp_path / "p.npz")
    rate = random_model(tmp_path / "r.npz", "rate-controller")
    out = tmp_path / "report"
    assert main(["--quick", "--model", str(model), "--rate-model", str(rate), "--policies", "heuristic:d2",
                 "--out", str(out), "--work", str(tmp_path / "work")]) == 0
    text = (out / "README.md").read_text()
    assert "python -m experiments.learned_eval" in text and "| hetero (1) | learned |" in text
    assert "Rate controller" in text
    assert (out / "pieces.png").stat().st_size > 0 and (out / "rates.png").stat().st_size > 0
    res = json.loads((out / "results.json").read_text())
    assert {r["policy"] for r in res["pieces"]["rows"]} == {"heuristic:d2", "learned"}
    assert json.loads(capsys.readouterr().out)["report"].endswith("README.md")


def test_family_toml_files_are_family_members():
    from pathlib import Path

    from dfsim.scenario import load_scenario

    root = Path(__file__).resolve().parents[1] / "experiments/scenarios"
    for fname, kind, seed in (("hetero-3idc.toml", "hetero", 2), ("hetero-homog-1g.toml", "homog", 3)):
        data = dict(family_scenario(kind, seed), name=fname[:-5])
        assert load_scenario(root / fname) == parse_scenario(data)


def test_linear_terms_fold_into_the_exported_mlp(tmp_path):
    from models.interfaces import COL, CandidateBatch
    from models.learned.export import load_mlp
    from models.learned.finetune import add_linear_terms, grid_search
    from models.learned.policies import LearnedPieceSelector

    base = load_mlp(random_model(tmp_path / "p.npz"))
    base.mean, base.std = np.full(len(FEATURES), 0.5), np.full(len(FEATURES), 2.0)
    tuned = add_linear_terms(base, {"piece_holders": 0.7, "same_idc": -0.5})
    x = np.abs(np.random.default_rng(1).normal(size=(240, len(FEATURES)))) * 3
    extra = 0.7 * np.log1p(x[:, COL["piece_holders"]]) - 0.5 * x[:, COL["same_idc"]]
    np.testing.assert_allclose(tuned.forward(x) - base.forward(x), extra, atol=1e-9)
    batch = CandidateBatch(np.arange(240), np.arange(240), x)
    np.testing.assert_allclose(-LearnedPieceSelector(tuned, "t").score(None, batch, 0.0), tuned.forward(x),
                               rtol=1e-4, atol=1e-3)
    res = grid_search(base, {"same_idc": [0, -1.0]}, lambda p: 2.0 if "01" in p else 1.0, tmp_path / "ft",
                      log=lambda m: None)
    assert res["best"] == {} and len(res["trials"]) == 2
