"""The hand-written policies and the loader, pinned against shared/reference/ANCHORS.md.

Batches are built by hand, a few rows each, so every expected number can be checked on paper.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from models import CandidateBatch, HostLoad, PeerView, PieceSelector, RateController, TaskLoad
from models.interfaces import COL, N_FEATURES
from models.loader import (
    KNOWN_PIECE_SELECTORS,
    KNOWN_RATE_CONTROLLERS,
    PolicyError,
    load_piece_selector,
    load_rate_controller,
    resolve_upload_slots,
)


def batch(rows: list[dict]) -> CandidateBatch:
    """Rows of feature values (default 0); `piece` and `parent` default to the row index."""
    x = np.zeros((len(rows), N_FEATURES))
    for i, row in enumerate(rows):
        for name, value in row.items():
            if name not in ("piece", "parent"):
                x[i, COL[name]] = value
    piece = np.array([row.get("piece", i) for i, row in enumerate(rows)], dtype=np.int64)
    parent = np.array([row.get("parent", i) for i, row in enumerate(rows)], dtype=np.int64)
    return CandidateBatch(piece=piece, parent=parent, x=x)


def child(finished: int = 10) -> PeerView:
    return PeerView(peer=99, idc="hz", location="asia|hz", finished=finished, n_pieces=100, running=1)


def best(uri: str, candidates: CandidateBatch, seed: int = 0, finished: int = 10) -> int:
    return int(np.argmax(load_piece_selector(uri, seed).score(child(finished), candidates, 0.0)))


def winners(uri: str, candidates: CandidateBatch, finished: int = 10, seeds: int = 30) -> set[int]:
    return {best(uri, candidates, seed, finished) for seed in range(seeds)}


def order(scores: np.ndarray) -> list[int]:
    return [int(i) for i in np.argsort(-scores, kind="stable")]


# --- every selector ---------------------------------------------------------------------------

# Piece features depend on the piece only, as the core builds them; pieces 0/2 and 1/3 tie.
MIXED = batch([
    {"piece": p, "parent": q, "piece_holders": 1 + p % 2, "piece_distance": 0.2,
     "parent_is_seed": float(q == 0), "parent_finished": 0.25 * q, "parent_completed": float(q == 3),
     "parent_upload_success": 1.0, "parent_free_slots": 0.5, "parent_upload_bps": 100.0,
     "parent_tx_bps": 10.0 * q, "parent_order": q, "same_idc": q % 2}
    for p in range(4) for q in range(4)
])


@pytest.mark.parametrize("uri", KNOWN_PIECE_SELECTORS)
def test_selector_shape_and_determinism(uri):
    a, b = load_piece_selector(uri, seed=7), load_piece_selector(uri, seed=7)
    for _ in range(3):  # the generators must stay in step over several calls
        sa, sb = a.score(child(), MIXED, 0.0), b.score(child(), MIXED, 0.0)
        assert sa.dtype == np.float64 and sa.shape == (len(MIXED),)
        assert np.all(np.isfinite(sa))
        np.testing.assert_array_equal(sa, sb)


@pytest.mark.parametrize("uri", KNOWN_PIECE_SELECTORS)
def test_selector_small_batches(uri):
    selector = load_piece_selector(uri)
    assert selector.score(child(), batch([]), 0.0).shape == (0,)
    assert selector.score(child(), batch([{"piece_holders": 3}]), 0.0).shape == (1,)


@pytest.mark.parametrize("uri, slots", [
    ("heuristic:random", (8, 2000)),
    ("heuristic:rarest-first", (8, 2000)),
    ("heuristic:v1", (5, 1_000_000)),
    ("heuristic:d2", (200, 2000)),
    ("heuristic:d2-load", (200, 2000)),
    ("heuristic:kraken", (10, 2000)),
])
def test_upload_slots(uri, slots):
    assert resolve_upload_slots(load_piece_selector(uri)) == slots


# --- random ------------------------------------------------------------------------------------

def test_random_same_seed_same_order_other_seed_other_order():
    rows = batch([{"piece_holders": 1}] * 8)
    first = order(load_piece_selector("heuristic:random", 1).score(child(), rows, 0.0))
    again = order(load_piece_selector("heuristic:random", 1).score(child(), rows, 0.0))
    other = order(load_piece_selector("heuristic:random", 2).score(child(), rows, 0.0))
    assert first == again
    assert first != other


# --- rarest-first (BitTorrent) ----------------------------------------------------------------

RARITY = batch([{"piece_holders": h} for h in (5, 1, 5, 5, 3, 5)])


def test_rarest_first_random_for_the_first_four_pieces():
    picks = winners("heuristic:rarest-first", RARITY, finished=3)
    assert len(picks) > 1          # seeds disagree
    assert picks != {1}            # and not just the rarest


def test_rarest_first_after_four_pieces():
    assert winners("heuristic:rarest-first", RARITY, finished=4) == {1}


def test_rarest_first_breaks_ties_at_random():
    tied = batch([{"piece_holders": h} for h in (2, 4, 2, 2)])
    assert winners("heuristic:rarest-first", tied) == {0, 2, 3}


# --- Dragonfly 1 supernode --------------------------------------------------------------------

def test_v1_picks_the_rarest_piece_even_when_far():
    rows = batch([
        {"piece": 0, "piece_holders": 3, "piece_distance": 0.0},
        {"piece": 1, "piece_holders": 2, "piece_distance": 0.9},
        {"piece": 2, "piece_holders": 4, "piece_distance": 0.0},
    ])
    assert winners("heuristic:v1", rows) == {1}


def test_v1_among_equally_rare_the_nearest_to_the_running_pieces():
    rows = batch([
        {"piece": 0, "piece_holders": 2, "piece_distance": 0.5},
        {"piece": 1, "piece_holders": 2, "piece_distance": 0.1},
        {"piece": 2, "piece_holders": 2, "piece_distance": 0.3},
    ])
    assert winners("heuristic:v1", rows) == {1}


def test_v1_then_random_among_equal_pieces():
    rows = batch([{"piece": p, "piece_holders": 2, "piece_distance": 0.2} for p in range(4)])
    assert len(winners("heuristic:v1", rows)) > 1


def test_v1_parent_is_the_first_normal_holder():
    rows = batch([
        {"piece": 0, "parent": 10, "piece_holders": 3, "parent_is_seed": 1, "parent_order": 0},
        {"piece": 0, "parent": 11, "piece_holders": 3, "parent_order": 4},
        {"piece": 0, "parent": 12, "piece_holders": 3, "parent_order": 2},
    ])
    scores = load_piece_selector("heuristic:v1").score(child(), rows, 0.0)
    assert order(scores) == [2, 1, 0]  # normal peers by join order, the seed last


def test_v1_seed_serves_only_pieces_no_normal_peer_holds():
    # Piece 0 is rarest and only the seed has it: the seed serves it, as piece order dominates.
    # Piece 1 has a normal holder, so the seed comes after it for that piece.
    rows = batch([
        {"piece": 1, "parent": 20, "piece_holders": 2, "parent_is_seed": 1, "parent_order": 0},
        {"piece": 1, "parent": 21, "piece_holders": 2, "parent_order": 5},
        {"piece": 0, "parent": 20, "piece_holders": 1, "parent_is_seed": 1, "parent_order": 0},
    ])
    scores = load_piece_selector("heuristic:v1").score(child(), rows, 0.0)
    assert order(scores) == [2, 1, 0]


def test_v1_keeps_each_piece_rows_together():
    scores = load_piece_selector("heuristic:v1", 3).score(child(), MIXED, 0.0)
    ranked_pieces = MIXED.piece[order(scores)]
    runs = 1 + np.count_nonzero(np.diff(ranked_pieces))
    assert runs == len(np.unique(MIXED.piece))
    assert sorted(scores) == list(-np.arange(len(MIXED), dtype=float)[::-1])  # an exact rank


# --- Dragonfly 2 evaluator (2022-2025) ----------------------------------------------------------

ALL_ONE = {"parent_finished": 1, "parent_upload_success": 1, "parent_free_slots": 1,
           "same_idc": 1, "location_match": 1}


def d2(rows: list[dict], seed: int = 0) -> np.ndarray:
    return load_piece_selector("heuristic:d2", seed).score(child(), batch(rows), 0.0)


def test_d2_every_term_one_scores_one():
    seed_row, normal_row = d2([{**ALL_ONE, "parent_is_seed": 1}, ALL_ONE])
    assert seed_row == pytest.approx(1.0, abs=1e-6)
    assert seed_row - normal_row == pytest.approx(0.075, abs=1e-6)  # 0.15 * (1.0 - 0.5)


def test_d2_weights_term_by_term():
    rows = [{}, {"parent_finished": 1}, {"parent_upload_success": 1}, {"parent_free_slots": 1},
            {"same_idc": 1}, {"location_match": 0.4}]
    expected = 0.075 + np.array([0.0, 0.2, 0.2, 0.15, 0.15, 0.15 * 0.4])
    np.testing.assert_allclose(d2(rows), expected, atol=1e-6)


def test_d2_orders_concrete_parents():
    rows = [
        {"parent_finished": 0.5, "same_idc": 1},                # 0.1 + 0.15 + 0.075 = 0.325
        {"parent_finished": 1.0, "parent_upload_success": 0.5},  # 0.2 + 0.1 + 0.075 = 0.375
        {"parent_is_seed": 1, "parent_free_slots": 0.2},         # 0.15 + 0.03 = 0.18
        {"location_match": 1.0, "same_idc": 1},                   # 0.15 + 0.15 + 0.075 = 0.375 - tie
    ]
    scores = d2(rows)
    np.testing.assert_allclose(scores, [0.325, 0.375, 0.18, 0.375], atol=1e-6)
    assert set(order(scores)[:2]) == {1, 3} and order(scores)[2:] == [0, 2]


def test_d2_spreads_pieces_of_equal_parents():
    rows = batch([{**ALL_ONE, "piece": p} for p in range(4)])
    assert len(winners("heuristic:d2", rows)) > 1


# --- Dragonfly 2 current evaluator (load) -------------------------------------------------------

def d2_load(rows: list[dict]) -> np.ndarray:
    return load_piece_selector("heuristic:d2-load").score(child(), batch(rows), 0.0)


def test_d2_load_formula_on_concrete_numbers():
    row = {"parent_upload_bps": 100, "parent_tx_bps": 25, "parent_sent_last_min": 1500,
           "parent_free_slots": 0.5, "same_idc": 1, "location_match": 0.4}
    normal, seed = d2_load([row, {**row, "parent_is_seed": 1}])
    # load = 0.5*0.75 + 0.3*(1 - 1500/6000) + 0.2*0.5 = 0.7
    # score = 0.6*0.7 + 0.2*1 + 0.1*0.4 + 0.1*0.5 = 0.71
    assert normal == pytest.approx(0.71, abs=1e-6)
    assert seed - normal == pytest.approx(0.05, abs=1e-6)


def test_d2_load_clips_overload_and_guards_zero_capacity():
    overloaded = {"parent_upload_bps": 100, "parent_tx_bps": 250, "parent_sent_last_min": 9e9}
    no_capacity = {"parent_upload_bps": 0, "parent_tx_bps": 10}
    idle = {"parent_upload_bps": 100}
    scores = d2_load([overloaded, no_capacity, idle])
    assert np.all(np.isfinite(scores))
    # the two loaded parents keep only the host type term; the idle one gains 0.6*(0.5+0.3)
    np.testing.assert_allclose(scores, [0.05, 0.05, 0.05 + 0.48], atol=1e-6)


def test_d2_load_prefers_the_less_loaded_parent():
    busy = {"parent_upload_bps": 100, "parent_tx_bps": 90, "same_idc": 1}
    quiet = {"parent_upload_bps": 100, "parent_tx_bps": 10}
    # busy: 0.6*(0.05+0.3) + 0.2 + 0.05 = 0.46; quiet: 0.6*(0.45+0.3) + 0.05 = 0.5
    assert order(d2_load([busy, quiet])) == [1, 0]


# --- Uber Kraken ------------------------------------------------------------------------------

def test_kraken_prefers_completed_parents_then_rarest():
    rows = batch([
        {"piece": 0, "piece_holders": 1},                          # rarest, parent incomplete
        {"piece": 1, "piece_holders": 6, "parent_completed": 1},
        {"piece": 2, "piece_holders": 3, "parent_completed": 1},
    ])
    scores = load_piece_selector("heuristic:kraken").score(child(), rows, 0.0)
    assert order(scores) == [2, 1, 0]


def test_kraken_random_among_equals():
    rows = batch([{"piece": p, "piece_holders": 2, "parent_completed": 1} for p in range(4)])
    assert len(winners("heuristic:kraken", rows)) > 1


# --- rate controllers ---------------------------------------------------------------------------

def host(*tasks: TaskLoad, interval_s: float = 1.0) -> HostLoad:
    return HostLoad(download_capacity_bps=1000.0, upload_capacity_bps=500.0, rx_bps=0.0, tx_bps=0.0,
                    p2p_rx_bps=0.0, p2p_tx_bps=0.0, interval_s=interval_s, tasks=tasks)


def task(task_id: str, used_bps: float, bytes_left: int = 10**9, piece_bytes: int = 10) -> TaskLoad:
    return TaskLoad(task_id=task_id, used_bps=used_bps, bytes_left=bytes_left, piece_bytes=piece_bytes)


def test_static_defaults_to_the_nic_and_no_split_without_tasks():
    limits = load_rate_controller("heuristic:static").limit(host(), 0.0)
    assert (limits.download_bps, limits.upload_bps, limits.per_task) == (1000.0, 500.0, None)
    assert load_rate_controller("heuristic:static").constant is True


def test_static_splits_in_proportion_to_use():
    ctl = load_rate_controller("heuristic:static", download_bps=100.0, upload_bps=50.0)
    limits = ctl.limit(host(task("a", 30.0), task("b", 10.0)), 0.0)
    assert (limits.download_bps, limits.upload_bps) == (100.0, 50.0)
    assert limits.per_task == pytest.approx({"a": 75.0, "b": 25.0})
    idle = ctl.limit(host(task("a", 0.0), task("b", 0.0)), 0.0)
    assert idle.per_task == pytest.approx({"a": 50.0, "b": 50.0})


def test_sampling_one_piece_each_plus_the_rest_by_need():
    ctl = load_rate_controller("heuristic:sampling", download_bps=100.0)
    assert ctl.constant is False
    # needs: 40 - 10 = 30 and 20 - 10 = 10; each gets 10, the other 80 goes 3:1
    limits = ctl.limit(host(task("a", 40.0), task("b", 20.0)), 0.0)
    assert (limits.download_bps, limits.upload_bps) == (100.0, 500.0)
    assert limits.per_task == pytest.approx({"a": 70.0, "b": 30.0})


def test_sampling_uses_the_interval_and_bytes_left():
    ctl = load_rate_controller("heuristic:sampling", download_bps=100.0)
    # interval 2 s, pieces of 20 B: 10 B/s each; needs 80-20 = 60 and min(40, 25)-20 = 5
    limits = ctl.limit(host(task("a", 40.0, piece_bytes=20), task("b", 20.0, bytes_left=25, piece_bytes=20),
                            interval_s=2.0), 0.0)
    assert limits.per_task == pytest.approx({"a": 10 + 80 * 60 / 65, "b": 10 + 80 * 5 / 65})


def test_sampling_equal_split_when_no_need_or_over_budget():
    ctl = load_rate_controller("heuristic:sampling", download_bps=100.0)
    idle = ctl.limit(host(task("a", 0.0), task("b", 5.0)), 0.0)
    assert idle.per_task == pytest.approx({"a": 50.0, "b": 50.0})
    tight = load_rate_controller("heuristic:sampling", download_bps=15.0)
    over = tight.limit(host(task("a", 40.0), task("b", 20.0)), 0.0)
    assert over.per_task == pytest.approx({"a": 7.5, "b": 7.5})
    assert ctl.limit(host(), 0.0).per_task is None


# --- loader ------------------------------------------------------------------------------------

@pytest.mark.parametrize("uri", KNOWN_PIECE_SELECTORS)
def test_every_piece_selector_loads_under_its_name(uri):
    selector = load_piece_selector(uri)
    assert selector.name == uri and isinstance(selector, PieceSelector)


@pytest.mark.parametrize("uri", KNOWN_RATE_CONTROLLERS)
def test_every_rate_controller_loads_under_its_name(uri):
    controller = load_rate_controller(uri)
    assert controller.name == uri and isinstance(controller, RateController)


def test_known_names():
    assert set(KNOWN_PIECE_SELECTORS) == {"heuristic:random", "heuristic:rarest-first", "heuristic:v1",
                                          "heuristic:d2", "heuristic:d2-load", "heuristic:kraken"}
    assert set(KNOWN_RATE_CONTROLLERS) == {"heuristic:static", "heuristic:sampling"}


def test_unknown_heuristic_lists_the_known_ones():
    with pytest.raises(PolicyError) as err:
        load_piece_selector("heuristic:foo")
    message = str(err.value)
    assert message.startswith("unknown piece selector 'heuristic:foo'; known: heuristic:random")
    assert all(uri in message for uri in KNOWN_PIECE_SELECTORS) and "\n" not in message
    with pytest.raises(PolicyError, match="heuristic:sampling"):
        load_rate_controller("heuristic:d2")


@pytest.mark.parametrize("uri", ["models:/piece-selector@production", "models:/piece-selector/3",
                                 "file:/tmp/model.npz"])
def test_learned_uris_give_a_clear_error(uri, tmp_path, monkeypatch):
    # no such store, no such file: one line naming the URI (tests/test_learned.py covers the rest)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/none.db")
    with pytest.raises(PolicyError, match=rf"cannot load piece selector '{uri}': ") as err:
        load_piece_selector(uri)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("uri", ["d2", "models:/no-alias", "", "http://x"])
def test_other_strings_name_the_uri(uri):
    with pytest.raises(PolicyError) as err:
        load_piece_selector(uri)
    assert repr(uri) in str(err.value) and "heuristic:d2" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_rate_controller_rejects_unknown_params():
    with pytest.raises(PolicyError, match="heuristic:static"):
        load_rate_controller("heuristic:static", burst=3)


def test_upload_slot_defaults_for_a_selector_without_them():
    assert resolve_upload_slots(object()) == (200, 2000)


def test_models_package_stays_light():
    code = "import sys, models; print(sorted(m for m in ('torch', 'mlflow', 'dfnet', 'dfsim') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
