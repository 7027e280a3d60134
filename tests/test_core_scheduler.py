"""The scheduling core (dfnet.core.swarm + dfnet.core.scheduler) on small hand-built swarms.

Each test builds a swarm of a handful of peers and pieces, so every expected assignment can be
checked on paper. What is pinned is what a user of the core relies on: the decision kinds,
the invariants of every assignment, upload slot accounting, the policies' parent choices,
bad parents, back-to-source, wake-ups, batch reuse, determinism and the feature rows.
"""
from __future__ import annotations

import random

import numpy as np
import pytest

from dfnet.core.scheduler import Assignment, Decision, Scheduler, SchedulerConfig
from dfnet.core.swarm import Swarm
from dfnet.core.task import Task
from models.interfaces import COL, N_FEATURES, CandidateBatch, LinearScore, PeerView
from models.loader import load_piece_selector, resolve_upload_slots

PS = 1000   # piece size in bytes: small numbers keep the costs readable
NO_REUSE = SchedulerConfig(batch_reuse_s=0)


# --- helpers ----------------------------------------------------------------------------------

def make(n_pieces: int, uri: str = "heuristic:v1", *, upload_slots: int | None = None,
         seed_slots: int | None = None, min_upload_bps: float = 0.0,
         config: SchedulerConfig = NO_REUSE, seed: int = 0,
         keep_features: bool = False) -> tuple[Swarm, Scheduler]:
    """An empty swarm for a task of `n_pieces` pieces and a scheduler using `uri`.

    Slot counts default to the selector's own, as the simulator does.
    """
    selector = load_piece_selector(uri, seed)
    slots, seeds = resolve_upload_slots(selector)
    task = Task.for_url("http://o/f", n_pieces * PS, PS)
    swarm = Swarm(task, slots if upload_slots is None else upload_slots,
                  seeds if seed_slots is None else seed_slots, min_upload_bps=min_upload_bps)
    return swarm, Scheduler(swarm, selector, config, seed=seed, keep_features=keep_features)


def peer(swarm: Swarm, key: str, pieces=(), **info) -> int:
    """Add a peer holding `pieces` ("all" for every piece) and return its index."""
    i = swarm.add_peer(key, **info)
    for p in (range(swarm.n_pieces) if pieces == "all" else pieces):
        swarm.add_piece(i, p)
    return i


def done(sched: Scheduler, child: int, a: Assignment, now: float = 0.0, cost_s: float = 1.0) -> list[int]:
    """Report assignment `a` to `child` as finished after `cost_s` seconds."""
    return sched.piece_done(child, a.piece, a.parent, PS, cost_s, now)


def feed(sched: Scheduler, child: int, parent: int, pieces, cost_s: float, now: float = 0.0) -> None:
    """Give `parent` a cost history: it serves `pieces` to `child`, each taking `cost_s`."""
    for p in pieces:
        sched.swarm.start_transfer(child, p, parent)
        sched.piece_done(child, p, parent, PS, cost_s, now)


def pairs(decision: Decision) -> list[tuple[int, int]]:
    return [(a.piece, a.parent) for a in decision.assignments]


def parents(decision: Decision) -> set[int]:
    return {a.parent for a in decision.assignments}


# --- decision kinds ---------------------------------------------------------------------------

def test_complete_peer_is_done():
    swarm, sched = make(4)
    peer(swarm, "src", "all")
    full = peer(swarm, "full", "all")
    assert sched.request(full, 0.0).kind == Decision.DONE


def test_peer_with_all_download_slots_busy_waits():
    swarm, sched = make(8, config=SchedulerConfig(batch_reuse_s=0, concurrent_pieces=2))
    peer(swarm, "src", "all")
    child = peer(swarm, "child")
    first = sched.request(child, 0.0)
    assert first.kind == Decision.ASSIGN and len(first.assignments) == 2
    again = sched.request(child, 0.1)
    assert again.kind == Decision.WAIT and again.retry_after > 0 and not again.assignments


# --- invariants of every assignment -----------------------------------------------------------

def test_assignments_fill_only_free_download_slots_without_repeating_a_piece():
    swarm, sched = make(12, config=SchedulerConfig(batch_reuse_s=0, concurrent_pieces=4))
    for k in range(3):
        peer(swarm, f"src{k}", "all")
    child = peer(swarm, "child")
    first = sched.request(child, 0.0)
    assert len(first.assignments) == 4
    done(sched, child, first.assignments[0])
    done(sched, child, first.assignments[1])
    second = sched.request(child, 0.1)
    assert len(second.assignments) == 2          # concurrent_pieces - running
    pieces = [a.piece for a in first.assignments + second.assignments]
    assert len(set(pieces)) == len(pieces)


def test_never_the_child_itself_nor_a_piece_it_holds():
    swarm, sched = make(6, "heuristic:random")
    other = peer(swarm, "other", range(6))
    child = peer(swarm, "child", range(3))       # holds 0..2 and could "serve" them to itself
    d = sched.request(child, 0.0)
    assert {a.piece for a in d.assignments} == {3, 4, 5}
    assert parents(d) == {other}


def test_never_a_parent_whose_upload_slots_are_full_and_slot_accounting():
    swarm, sched = make(8, upload_slots=2, seed_slots=2)
    busy = peer(swarm, "busy", "all")
    free = peer(swarm, "free", "all")
    a, b, c = (peer(swarm, k) for k in "abc")
    # fill busy's two slots by hand
    swarm.start_transfer(a, 0, busy)
    swarm.start_transfer(b, 0, busy)
    assert swarm.uploads[busy] == 2 and not swarm.open[busy]
    d = sched.request(c, 0.0)
    assert d.assignments and parents(d) == {free}
    assert swarm.uploads[free] == len(d.assignments) <= 2
    # slots come back on piece_done and piece_failed
    sched.piece_done(a, 0, busy, PS, 1.0, 0.1)
    assert swarm.uploads[busy] == 1 and swarm.open[busy]
    sched.piece_failed(b, 0, busy)
    assert swarm.uploads[busy] == 0
    for x in d.assignments:
        done(sched, c, x)
    assert swarm.uploads[free] == 0


def test_a_full_idc_link_carries_no_more_transfers_until_one_ends():
    swarm, sched = make(8, upload_slots=8)
    far = peer(swarm, "far", "all", idc="hz")
    kids = [peer(swarm, f"k{i}", idc="sg") for i in range(3)]
    swarm.limit_link("hz", "sg", 2)
    got = [sched.request(k, 0.0) for k in kids]
    cross = [(k, a) for k, d in zip(kids, got) for a in d.assignments]
    assert len(cross) == 2 and swarm.links[(swarm.idc_code("hz"), swarm.idc_code("sg"))] == [2, 2]
    assert swarm.open[far]                      # the parent has free slots; the link has none
    waiting = next(k for k, d in zip(kids, got) if not d.assignments)
    assert sched.request(waiting, 0.0).kind == Decision.WAIT
    # a piece ends (or fails): the link slot comes back and the next transfer takes it
    k, a = cross[0]
    sched.piece_failed(k, a.piece, a.parent)
    assert sched.request(waiting, 0.1).assignments
    # a local parent is not limited by the link; the reverse direction has no limit here
    local = peer(swarm, "local", "all", idc="sg")
    assert {a.parent for a in sched.request(peer(swarm, "k3", idc="sg"), 0.2).assignments} == {local}
    assert sched.request(peer(swarm, "k4", idc="hz"), 0.2).assignments
    with pytest.raises(ValueError):
        swarm.limit_link("sg", "sg", 1)


def test_upload_count_follows_each_assignment():
    swarm, sched = make(8, upload_slots=5)
    src = peer(swarm, "src", "all")
    kids = [peer(swarm, f"k{i}") for i in range(3)]
    total = 0
    for k in kids:
        d = sched.request(k, 0.0)
        total += sum(a.parent == src for a in d.assignments)
        assert swarm.uploads[src] == total <= 5
    assert total == 5 and not swarm.open[src]


def test_never_an_offline_parent():
    swarm, sched = make(6)
    gone = peer(swarm, "gone", "all")
    stay = peer(swarm, "stay", range(3))
    child = peer(swarm, "child")
    swarm.remove_peer(gone)
    d = sched.request(child, 0.0)
    assert parents(d) == {stay}
    assert {a.piece for a in d.assignments} <= {0, 1, 2}


def test_never_a_blocklisted_parent_after_a_corrupt_piece():
    swarm, sched = make(6, config=SchedulerConfig(batch_reuse_s=0, concurrent_pieces=1))
    liar = peer(swarm, "liar", "all")       # joined first: v1 prefers it
    honest = peer(swarm, "honest", "all")
    child = peer(swarm, "child")
    (first,) = sched.request(child, 0.0).assignments
    assert first.parent == liar
    sched.piece_failed(child, first.piece, liar, corrupt=True)
    assert liar in swarm.blocklist[child]
    for t in range(1, 4):
        d = sched.request(child, float(t))
        assert parents(d) == {honest}
        done(sched, child, d.assignments[0], float(t))
    # with the blocklisted parent the only holder left, the child waits rather than use it
    swarm.remove_peer(honest)
    assert sched.request(child, 9.0).kind == Decision.WAIT


def test_a_plain_failure_does_not_blocklist():
    swarm, sched = make(4, config=SchedulerConfig(batch_reuse_s=0, concurrent_pieces=1))
    src = peer(swarm, "src", "all")
    child = peer(swarm, "child")
    (a,) = sched.request(child, 0.0).assignments
    sched.piece_failed(child, a.piece, src)
    assert src not in swarm.blocklist[child]
    assert parents(sched.request(child, 1.0)) == {src}


@pytest.mark.parametrize("uri", ["heuristic:random", "heuristic:v1", "heuristic:d2", "heuristic:kraken"])
@pytest.mark.parametrize("reuse", [0.0, 1.0])
def test_invariants_hold_through_a_random_run(uri, reuse):
    """Random requests, completions, failures, corrupt pieces and departures; every assignment is checked."""
    rng = random.Random(7)
    cfg = SchedulerConfig(batch_reuse_s=reuse, concurrent_pieces=3)
    swarm, sched = make(16, uri, upload_slots=2, seed_slots=3, config=cfg, seed=3)
    seed = peer(swarm, "seed", "all", is_seed=True)
    for k in range(10):
        peer(swarm, f"p{k}", [p for p in range(16) if rng.random() < 0.3])
    flying: list[tuple[int, int, int]] = []     # (child, piece, parent)
    assigned = 0
    now = 0.0
    for _ in range(300):
        now += 0.1
        child = rng.randrange(1, len(swarm.peers))
        if swarm.online[child]:
            running_before = set(swarm.running[child])
            want = cfg.concurrent_pieces - len(running_before)
            open_before = swarm.open.copy()
            d = sched.request(child, now)
            assert len(d.assignments) <= max(want, 0)
            seen = set()
            for a in d.assignments:
                assert a.parent != child
                assert open_before[a.parent] and swarm.online[a.parent]
                assert swarm.have[a.parent, a.piece] and not swarm.have[child, a.piece]
                assert a.piece not in running_before and a.piece not in seen
                assert a.parent not in swarm.blocklist[child]
                seen.add(a.piece)
                flying.append((child, a.piece, a.parent))
            assigned += len(d.assignments)
        # end a few transfers, well or not
        rng.shuffle(flying)
        for _ in range(min(len(flying), rng.randrange(3))):
            c, p, q = flying.pop()
            roll = rng.random()
            if roll < 0.8:
                sched.piece_done(c, p, q, PS, rng.uniform(0.5, 1.5), now)
            else:
                sched.piece_failed(c, p, q, corrupt=roll > 0.95)
        if rng.random() < 0.02:
            leaving = rng.randrange(1, len(swarm.peers))
            swarm.remove_peer(leaving)
        # upload accounting matches what is in flight, and no slot limit is ever exceeded
        in_flight = np.bincount([q for _, _, q in flying], minlength=len(swarm.peers))
        assert swarm.uploads[: len(swarm.peers)].tolist() == in_flight.tolist()
        assert (swarm.uploads <= swarm.slots).all()
    assert swarm.online[seed] and assigned > 50


# --- the policies' choices --------------------------------------------------------------------

def test_v1_takes_the_rarest_available_piece_first():
    swarm, sched = make(6, "heuristic:v1", config=SchedulerConfig(batch_reuse_s=0, concurrent_pieces=3))
    peer(swarm, "a", [0, 1, 2])
    peer(swarm, "b", [0, 1])
    peer(swarm, "c", [0])
    gone = peer(swarm, "gone", [3])           # rarer still, but offline: not available
    swarm.remove_peer(gone)
    child = peer(swarm, "child")
    d = sched.request(child, 0.0)
    assert [a.piece for a in d.assignments] == [2, 1, 0]


def test_v1_prefers_a_free_normal_peer_to_the_seed_and_falls_back_to_the_seed():
    swarm, sched = make(6, "heuristic:v1", upload_slots=1,
                        config=SchedulerConfig(batch_reuse_s=0, concurrent_pieces=1))
    seed = peer(swarm, "seed", "all", is_seed=True)
    normal = peer(swarm, "normal", "all")
    a, b = peer(swarm, "a"), peer(swarm, "b")
    da = sched.request(a, 0.0)
    assert parents(da) == {normal}            # the normal peer, though the seed joined first
    db = sched.request(b, 0.0)                # normal's only slot is taken now
    assert parents(db) == {seed}
    done(sched, a, da.assignments[0], 1.0)    # normal is free again
    b2 = peer(swarm, "b2")
    assert parents(sched.request(b2, 1.0)) <= {normal, a}


def test_d2_prefers_the_parent_in_the_childs_idc_and_location():
    swarm, sched = make(8, "heuristic:d2", config=SchedulerConfig(batch_reuse_s=0, concurrent_pieces=4))
    far = peer(swarm, "far", "all", idc="idc-b", location="eu|de|fra", upload_bps=1e6)
    near = peer(swarm, "near", "all", idc="idc-a", location="asia|cn|hz", upload_bps=1e6)
    child = peer(swarm, "child", idc="idc-a", location="asia|cn|hz")
    d = sched.request(child, 0.0)
    assert len(d.assignments) == 4 and parents(d) == {near}
    assert far not in parents(d)


class _EveryColumn:
    """A linear selector weighing every feature column: its score is its declaration."""

    name = "test:every-column"

    def __init__(self, weights: np.ndarray, constant: float):
        self.linear = LinearScore(tuple(weights.tolist()), constant, 0.0)
        self._w, self._c = weights, constant

    def score(self, child, candidates, now):
        return candidates.x @ self._w + self._c


def busy_swarm(sched: Scheduler, rng: random.Random) -> list[int]:
    """Peers in two IDCs and locations, with pieces, transfers in flight and a cost history."""
    swarm = sched.swarm
    peer(swarm, "seed", "all", is_seed=True, idc="a", location="asia|cn|hz", upload_bps=5e6)
    for k in range(12):
        peer(swarm, f"p{k}", [p for p in range(20) if rng.random() < 0.4], idc="ab"[k % 2],
             location=["asia|cn|hz", "asia|cn|sh", "eu|de|fra"][k % 3], upload_bps=rng.uniform(1e5, 1e6),
             download_bps=rng.uniform(1e5, 2e6))
    now = 0.0
    for _ in range(40):
        now += 0.3
        child = rng.randrange(1, len(swarm.peers))
        for a in sched.request(child, now).assignments:
            if rng.random() < 0.7:
                sched.piece_done(child, a.piece, a.parent, PS, rng.uniform(0.2, 2.0), now)
    return list(range(len(swarm.peers)))


def test_the_cores_sum_of_a_linear_selector_is_its_score():
    """The core sums a linear selector's score from the swarm's cells (`linear_score`); the
    selector's `score` on the batch's feature matrix is the definition. Every column weighed
    (a made-up selector), and d2 as declared, up to its random tie-break."""
    rng = random.Random(5)
    weights = np.array([rng.uniform(-1, 1) for _ in range(N_FEATURES)])
    weights[COL["parent_upload_bps"]] *= 1e-6          # columns in bytes/s, scaled to matter alike
    weights[COL["child_download_bps"]] *= 1e-6
    weights[COL["parent_sent_last_min"]] *= 1e-7
    weights[COL["parent_tx_bps"]] *= 1e-6
    for selector in (_EveryColumn(weights, 0.25), load_piece_selector("heuristic:d2", 1)):
        task = Task.for_url("http://o/f", 20 * PS, PS)
        swarm = Swarm(task, 3, 10)
        sched = Scheduler(swarm, selector, NO_REUSE, seed=2)
        everyone = busy_swarm(sched, rng)
        tie = selector.linear.tie_scale
        checked = 0
        for child in everyone[1:]:
            pieces = list(range(20))
            parents = [rng.choice([q for q in everyone if q != child]) for _ in pieces]
            x = sched._features(child, swarm.running[child], pieces, parents)
            view = PeerView(child, swarm.peers[child].idc, swarm.peers[child].location, swarm.finished[child],
                            swarm.n_pieces, len(swarm.running[child]))
            want = selector.score(view, CandidateBatch(np.array(pieces), np.array(parents), x), 0.0)
            got = np.array(sched.linear_score(child, pieces, parents))
            assert np.allclose(got, want, rtol=1e-12, atol=2 * tie + 1e-12), (selector.name, got - want)
            checked += 1
        assert checked == 12


# --- upload slots capped by the uplink --------------------------------------------------------

@pytest.mark.parametrize("policy_slots, upload_bps, expected", [
    (200, 100.0, 2),     # ceil(100 / 50)
    (200, 101.0, 3),     # rounded up
    (200, 10.0, 1),      # never below one
    (1, 100.0, 1),       # the policy's count when smaller
    (200, 0.0, 200),     # an unknown uplink is not capped
])
def test_slots_are_capped_by_min_upload_bps(policy_slots, upload_bps, expected):
    swarm, _ = make(2, upload_slots=policy_slots, seed_slots=policy_slots, min_upload_bps=50.0)
    i = peer(swarm, "p", upload_bps=upload_bps)
    s = peer(swarm, "s", upload_bps=upload_bps, is_seed=True)
    assert swarm.slots[i] == swarm.slots[s] == expected


def test_capped_parent_serves_no_more_children_than_its_slots():
    swarm, sched = make(4, upload_slots=200, min_upload_bps=50.0,
                        config=SchedulerConfig(batch_reuse_s=0, concurrent_pieces=1))
    src = peer(swarm, "src", "all", upload_bps=100.0)
    kids = [peer(swarm, f"k{i}") for i in range(3)]
    kinds = [sched.request(k, 0.0).kind for k in kids]
    assert kinds == [Decision.ASSIGN, Decision.ASSIGN, Decision.WAIT]
    assert swarm.uploads[src] == 2


# --- bad parents ------------------------------------------------------------------------------

def bad_parent_swarm() -> tuple[Swarm, Scheduler, int, int]:
    """`slow` and `good` hold every piece; `slow` served 5 pieces at 1 s and then one at 25 s."""
    swarm, sched = make(20, "heuristic:v1", config=SchedulerConfig(batch_reuse_s=0, concurrent_pieces=4))
    slow = peer(swarm, "slow", "all")         # joined first: v1 would prefer it
    good = peer(swarm, "good", "all")
    feeder = peer(swarm, "feeder")
    feed(sched, feeder, slow, range(5), 1.0)
    assert not swarm.bad[slow]
    feed(sched, feeder, slow, [5], 25.0)
    swarm.remove_peer(feeder)                 # it holds pieces now; keep it out of the way
    return swarm, sched, slow, good


def test_a_cost_25x_the_mean_on_a_short_history_flags_the_parent():
    swarm, _, slow, good = bad_parent_swarm()
    assert swarm.bad[slow] and not swarm.bad[good]


def test_a_cost_15x_the_mean_on_a_short_history_is_not_bad():
    swarm, sched = make(10)
    src = peer(swarm, "src", "all")
    feeder = peer(swarm, "feeder")
    feed(sched, feeder, src, range(5), 1.0)
    feed(sched, feeder, src, [5], 15.0)
    assert not swarm.bad[src]


def test_a_long_history_uses_three_sigma():
    swarm, sched = make(40)
    src = peer(swarm, "src", "all")
    feeder = peer(swarm, "feeder")
    # 30 samples alternating 1.0 and 1.2: mean 1.1, sigma ~0.102, so mean + 3 sigma ~1.405
    for p in range(30):
        feed(sched, feeder, src, [p], 1.0 if p % 2 == 0 else 1.2)
    feed(sched, feeder, src, [30], 1.3)     # within 3 sigma
    assert not swarm.bad[src]
    feed(sched, feeder, src, [31], 1.6)     # beyond 3 sigma, far below 20x the mean
    assert swarm.bad[src]


def test_a_bad_parent_is_skipped_while_another_can_serve():
    swarm, sched, slow, good = bad_parent_swarm()
    child = peer(swarm, "child")
    d = sched.request(child, 1.0)
    assert len(d.assignments) == 4 and parents(d) == {good}


def test_a_bad_parent_is_still_used_when_it_is_the_only_one_and_a_normal_cost_clears_it():
    swarm, sched, slow, good = bad_parent_swarm()
    swarm.remove_peer(good)
    child = peer(swarm, "child")
    d = sched.request(child, 1.0)
    assert d.assignments and parents(d) == {slow}
    done(sched, child, d.assignments[0], 2.0, cost_s=1.0)
    assert not swarm.bad[slow]


def test_a_parent_flagged_bad_is_not_reused_from_a_kept_ranking():
    swarm, sched = make(8, "heuristic:v1", config=SchedulerConfig(batch_reuse_s=1.0, concurrent_pieces=2))
    slow = peer(swarm, "slow", "all")           # joined first: v1 ranks its rows first
    good = peer(swarm, "good", "all")
    feeder = peer(swarm, "feeder")
    feed(sched, feeder, slow, [6, 7], 1.0)
    swarm.remove_peer(feeder)
    child = peer(swarm, "child")
    d = sched.request(child, 0.0)
    assert parents(d) == {slow}
    done(sched, child, d.assignments[0], 0.1, cost_s=25.0)
    assert swarm.bad[slow]
    again = sched.request(child, 0.2)           # within batch_reuse_s: the kept ranking serves it
    assert again.assignments and parents(again) == {good}


# --- back-to-source ---------------------------------------------------------------------------

def test_no_holder_waits_retry_limit_minus_one_times_then_goes_back_to_source():
    cfg = SchedulerConfig(batch_reuse_s=0, retry_limit=5)
    swarm, sched = make(4, config=cfg)
    child = peer(swarm, "child")
    for k in range(cfg.retry_limit - 1):
        d = sched.request(child, 0.5 * k)
        assert d.kind == Decision.WAIT and d.retry_after > 0
    assert sched.request(child, 3.0).kind == Decision.BACK_TO_SOURCE
    assert child in swarm.back_sourced
    # once back to source, it is not told again
    assert sched.request(child, 4.0).kind == Decision.WAIT


def test_no_holder_retries_are_retry_interval_apart():
    cfg = SchedulerConfig(batch_reuse_s=0)
    swarm, sched = make(4, config=cfg)
    child = peer(swarm, "child")
    waits = [sched.request(child, 0.5 * k).retry_after for k in range(cfg.retry_limit - 1)]
    assert waits == [cfg.retry_interval_s] * (cfg.retry_limit - 1)


def test_back_source_limit_keeps_the_others_waiting():
    cfg = SchedulerConfig(batch_reuse_s=0, retry_limit=2, back_source_limit=2)
    swarm, sched = make(4, config=cfg)
    kids = [peer(swarm, f"k{i}") for i in range(4)]
    kinds = {k: [sched.request(k, float(t)).kind for t in range(6)] for k in kids}
    assert kinds[kids[0]][:2] == kinds[kids[1]][:2] == [Decision.WAIT, Decision.BACK_TO_SOURCE]
    for k in kids[2:]:
        assert set(kinds[k]) == {Decision.WAIT}
    assert swarm.back_sourced == set(kids[:2])


def test_flash_crowd_with_busy_holders_never_goes_back_to_source():
    cfg = SchedulerConfig(batch_reuse_s=0, retry_limit=2, concurrent_pieces=1)
    swarm, sched = make(4, upload_slots=1, config=cfg)
    peer(swarm, "holder", "all")
    first = peer(swarm, "first")
    assert sched.request(first, 0.0).kind == Decision.ASSIGN   # takes the only slot
    crowd = [peer(swarm, f"c{i}") for i in range(5)]
    for t in range(10):
        for c in crowd:
            d = sched.request(c, float(t))
            assert d.kind == Decision.WAIT and d.retry_after > 0
    assert not swarm.back_sourced


def test_a_producing_peer_keeps_children_waiting():
    cfg = SchedulerConfig(batch_reuse_s=0, retry_limit=2)
    swarm, sched = make(4, config=cfg)
    seed = peer(swarm, "seed", is_seed=True)
    swarm.producing.add(seed)                # fetching from the origin, nothing cut yet
    child = peer(swarm, "child")
    assert {sched.request(child, float(t)).kind for t in range(6)} == {Decision.WAIT}


# --- wake-ups ---------------------------------------------------------------------------------

def test_a_freed_slot_wakes_the_waiting_child_and_it_gets_that_parent():
    cfg = SchedulerConfig(batch_reuse_s=0, concurrent_pieces=1)
    swarm, sched = make(2, "heuristic:v1", upload_slots=1, config=cfg)
    holder = peer(swarm, "holder", "all")
    a, b = peer(swarm, "a"), peer(swarm, "b")
    (x,) = sched.request(a, 0.0).assignments
    assert x.parent == holder
    assert sched.request(b, 0.0).kind == Decision.WAIT
    woken = done(sched, a, x, 1.0)
    assert woken == [b]
    # b now lacks two pieces: the one a just got (2 holders) and the other (holder only, rarer)
    d = sched.request(b, 1.0)
    assert d.kind == Decision.ASSIGN and parents(d) == {holder}


def test_one_freed_slot_wakes_one_child_oldest_first():
    cfg = SchedulerConfig(batch_reuse_s=0, concurrent_pieces=1)
    swarm, sched = make(2, upload_slots=1, config=cfg)
    holder = peer(swarm, "holder", "all")
    a = peer(swarm, "a")
    (x,) = sched.request(a, 0.0).assignments
    b, c = peer(swarm, "b"), peer(swarm, "c")
    assert sched.request(b, 0.0).kind == sched.request(c, 0.1).kind == Decision.WAIT
    assert sched.piece_failed(a, x.piece, holder) == [b]


def spare_slot_swarm(window: int):
    """Two parents of one slot each, both busy with `other`, and a third one free: a child
    that asks next gets one piece, whatever its window. Returns (swarm, sched, freeing), where
    `freeing()` ends `other`'s piece from the first parent and returns whom that woke."""
    cfg = SchedulerConfig(batch_reuse_s=0, concurrent_pieces=window)
    swarm, sched = make(4, "heuristic:v1", upload_slots=1, config=cfg)
    p1, p2 = peer(swarm, "p1", "all"), peer(swarm, "p2", "all")
    other = peer(swarm, "other")
    busy = sched.request(other, 0.0).assignments
    assert {a.parent for a in busy} == {p1, p2}          # both uplinks now full
    peer(swarm, "p3", "all")
    freed = next(a for a in busy if a.parent == p1)
    return swarm, sched, lambda: done(sched, other, freed, 1.0)


def test_a_child_left_with_a_free_slot_queues_for_it():
    """A request that fills one of two free download slots queues the child for the other: a
    slot freed by any parent fills it, not only the end of one of its own pieces."""
    swarm, sched, freeing = spare_slot_swarm(2)
    child = peer(swarm, "child")
    (x,) = sched.request(child, 0.0).assignments           # one slot filled, one left
    assert swarm.peers[x.parent].key == "p3"
    assert freeing() == [child]
    d = sched.request(child, 1.0)
    assert d.kind == Decision.ASSIGN and {swarm.peers[p].key for p in parents(d)} == {"p1"}


def test_a_batching_window_does_not_queue_its_spare_slots():
    """The live daemons' window of 16 has spare slots by design: queueing them would make each
    freed slot a sync that carries one piece."""
    swarm, sched, freeing = spare_slot_swarm(16)
    child = peer(swarm, "child")
    assert len(sched.request(child, 0.0).assignments) == 1
    assert freeing() == []


def test_a_child_with_nothing_in_flight_is_woken_before_one_with_a_piece_in_flight():
    swarm, sched, freeing = spare_slot_swarm(2)
    half = peer(swarm, "half")
    assert len(sched.request(half, 0.0).assignments) == 1   # queued first, one piece running
    idle = peer(swarm, "idle")
    assert sched.request(idle, 0.1).kind == Decision.WAIT   # queued later, nothing running
    assert freeing() == [idle]


# --- end game (rule 6) ------------------------------------------------------------------------

def end_game_swarm(end_game: bool = True):
    """A one-piece task, two parents of one slot each; `other` runs the piece from one, `child`
    (a window of 2) from the other. Returns (swarm, sched, child, x, freeing): `x` is the
    child's transfer, `freeing()` ends `other`'s and returns whom that woke."""
    cfg = SchedulerConfig(batch_reuse_s=0, concurrent_pieces=2, end_game=end_game)
    swarm, sched = make(1, "heuristic:v1", upload_slots=1, config=cfg)
    p1, p2 = peer(swarm, "p1", "all"), peer(swarm, "p2", "all")
    other, child = peer(swarm, "other"), peer(swarm, "child")
    (busy,) = sched.request(other, 0.0).assignments
    (x,) = sched.request(child, 0.0).assignments            # one slot used, one spare: queued
    assert swarm.uploads[p1] == swarm.uploads[p2] == 1       # both uplinks full
    return swarm, sched, child, x, lambda: done(sched, other, busy, 1.0)


def test_end_game_lends_a_freed_parent_to_part_of_a_running_piece():
    """A freed slot that no waiting child can use for a piece of its own sends part of a piece
    a waiting child runs: the last pieces of a flash crowd no longer run at one parent's rate
    while freed uplinks idle."""
    swarm, sched, child, x, freeing = end_game_swarm()
    assert freeing() == [child]
    d = sched.request(child, 1.0)
    (part,) = d.assignments
    assert d.kind == Decision.ASSIGN and part.part and part.piece == x.piece and part.parent != x.parent
    assert swarm.uploads[part.parent] == 1                  # the part holds a slot
    assert sched.request(child, 1.0).kind == Decision.WAIT              # its window is full
    # the piece counts when its last part ends, whichever that is
    assert sched.part_done(child, part.piece, part.parent, PS // 2, 1.2) == []
    assert swarm.uploads[part.parent] == 0 and swarm.finished[child] == 0
    done(sched, child, x, 1.5)
    assert swarm.finished[child] == 1 and swarm.is_complete(child)
    assert swarm.uploads[x.parent] == 0


def test_without_end_game_a_freed_slot_nobody_can_use_idles():
    swarm, sched, child, x, freeing = end_game_swarm(end_game=False)
    assert freeing() == []
    assert sched.request(child, 1.0).kind == Decision.WAIT


def test_a_piece_is_lent_out_once():
    """After its part ends, the piece is not split again: an empty part (a piece ending that
    instant) must not be able to repeat forever."""
    swarm, sched, child, x, freeing = end_game_swarm()
    freeing()
    (part,) = sched.request(child, 1.0).assignments
    assert sched.part_done(child, part.piece, part.parent, 0, 1.0) == []
    assert sched.request(child, 1.0).kind == Decision.WAIT


def test_a_failed_part_fails_its_piece_and_frees_every_slot():
    swarm, sched, child, x, freeing = end_game_swarm()
    freeing()
    (part,) = sched.request(child, 1.0).assignments
    sched.piece_failed(child, part.piece, part.parent)      # the shell stops and reports both
    sched.piece_failed(child, x.piece, x.parent)
    assert not swarm.running[child] and swarm.uploads[x.parent] == swarm.uploads[part.parent] == 0
    d = sched.request(child, 2.0)                            # fetched again, whole
    assert d.kind == Decision.ASSIGN and not any(a.part for a in d.assignments)


# --- batch reuse ------------------------------------------------------------------------------

def test_kept_ranking_serves_the_next_request_with_valid_pairs_then_expires():
    cfg = SchedulerConfig(batch_reuse_s=1.0, concurrent_pieces=2)
    swarm, sched = make(32, "heuristic:d2", config=cfg)
    p1 = peer(swarm, "p1", "all")
    p2 = peer(swarm, "p2", "all")
    child = peer(swarm, "child")
    first = sched.request(child, 0.0)
    assert len(first.assignments) == 2 and sched.decisions == 1
    # invalidate part of the kept ranking: one parent leaves, two pieces arrive another way
    swarm.remove_peer(p1)
    running = {a.piece for a in first.assignments}
    given = [p for p in range(32) if p not in running][:2]
    for p in given:
        swarm.add_piece(child, p)
    done(sched, child, first.assignments[0], 0.2)
    second = sched.request(child, 0.5)
    assert sched.decisions == 1                       # no new scoring
    (a,) = second.assignments
    assert a.parent == p2
    assert a.piece not in given and a.piece not in running
    done(sched, child, a, 0.6)
    sched.request(child, 1.5)                         # the ranking of t=0 expired at t=1
    assert sched.decisions == 2


def test_without_reuse_every_request_scores_afresh():
    swarm, sched = make(8, "heuristic:d2", config=SchedulerConfig(batch_reuse_s=0, concurrent_pieces=1))
    peer(swarm, "src", "all")
    peer(swarm, "src2", "all")
    child = peer(swarm, "child")
    for t in range(3):
        (a,) = sched.request(child, 0.1 * t).assignments
        done(sched, child, a, 0.1 * t)
        assert sched.decisions == t + 1


# --- determinism ------------------------------------------------------------------------------

def run(seed: int, uri: str = "heuristic:random") -> list[tuple[float, int, int, int]]:
    """A fixed sequence of requests and completions; the assignments it produced."""
    swarm, sched = make(16, uri, upload_slots=2, config=SchedulerConfig(concurrent_pieces=2), seed=seed)
    peer(swarm, "seed", "all", is_seed=True)
    layout = random.Random(0)       # the swarm is the same for every seed
    kids = [peer(swarm, f"k{i}", [p for p in range(16) if layout.random() < 0.25]) for i in range(6)]
    log = []
    flying: list[tuple[int, Assignment]] = []
    for step in range(40):
        now = 0.25 * step
        for k in kids:
            for a in sched.request(k, now).assignments:
                log.append((now, k, a.piece, a.parent))
                flying.append((k, a))
        for k, a in flying[: len(flying) // 2 + 1]:
            done(sched, k, a, now + 0.1)
        del flying[: len(flying) // 2 + 1]
    return log


def test_same_seed_same_assignments_other_seed_may_differ():
    base = run(1)
    assert len(base) > 20
    assert run(1) == base
    assert any(run(s) != base for s in (2, 3, 4))


# --- membership -------------------------------------------------------------------------------

def test_remove_peer_drops_its_pieces_from_the_counts_and_closes_it():
    swarm, _ = make(4)
    a = peer(swarm, "a", [0, 1])
    b = peer(swarm, "b", [1, 2])
    assert swarm.count.tolist() == [1, 2, 1, 0]
    assert swarm.online_peers == 2
    swarm.remove_peer(b)
    assert swarm.count.tolist() == [1, 1, 0, 0]
    assert swarm.available.tolist() == [True, True, False, False]
    assert not swarm.open[b] and not swarm.online[b] and b not in swarm.open_list
    assert swarm.online_peers == 1 and a in swarm.open_list
    swarm.remove_peer(b)                     # a second removal changes nothing
    assert swarm.count.tolist() == [1, 1, 0, 0] and swarm.online_peers == 1


# --- location match ---------------------------------------------------------------------------

@pytest.mark.parametrize("parent_loc, child_loc, expected", [
    ("a|b|c", "a|b|d", 2 / 5),
    ("a|b|c|d|e", "a|b|c|d|e", 1.0),
    ("", "a|b|c", 0.0),
    ("a|b|c", "", 0.0),
    ("", "", 0.0),
    ("x|b|c", "a|b|c", 0.0),        # parts match from the front only
])
def test_location_match(parent_loc, child_loc, expected):
    swarm, _ = make(2)
    p = peer(swarm, "p", location=parent_loc)
    c = peer(swarm, "c", location=child_loc)
    assert swarm.location_match(np.array([p]), c)[0] == pytest.approx(expected)


# --- feature rows -----------------------------------------------------------------------------

def test_keep_features_gives_each_assignment_its_row():
    cfg = SchedulerConfig(batch_reuse_s=0, concurrent_pieces=4)
    swarm, sched = make(6, "heuristic:random", config=cfg, keep_features=True)
    seed = peer(swarm, "seed", "all", is_seed=True, idc="idc-b", location="eu|de", upload_bps=5e6)
    near = peer(swarm, "near", [0, 1, 2], idc="idc-a", location="asia|cn|hz", upload_bps=1e6)
    child = peer(swarm, "child", [5], idc="idc-a", location="asia|cn|sh", download_bps=2e6)
    count = swarm.count.copy()
    d = sched.request(child, 0.0)
    assert len(d.assignments) == 4
    for a in d.assignments:
        f = a.features
        assert f is not None and f.shape == (N_FEATURES,)
        assert f[COL["same_idc"]] == (1.0 if a.parent == near else 0.0)
        assert f[COL["location_match"]] == pytest.approx(2 / 5 if a.parent == near else 0.0)
        assert f[COL["parent_is_seed"]] == (1.0 if a.parent == seed else 0.0)
        assert f[COL["parent_completed"]] == (1.0 if a.parent == seed else 0.0)
        assert f[COL["parent_finished"]] == pytest.approx(swarm.finished[a.parent] / 6)
        assert f[COL["parent_order"]] == a.parent
        assert f[COL["parent_upload_bps"]] == swarm.peers[a.parent].upload_bps
        assert f[COL["piece_holders"]] == count[a.piece]
        assert f[COL["piece_position"]] == pytest.approx(a.piece / 6)
        assert f[COL["child_finished"]] == pytest.approx(1 / 6)
        assert f[COL["child_download_bps"]] == 2e6


def test_features_are_not_kept_by_default():
    swarm, sched = make(2)
    peer(swarm, "src", "all")
    child = peer(swarm, "child")
    assert all(a.features is None for a in sched.request(child, 0.0).assignments)


@pytest.mark.parametrize("n_pieces", [5, 60, 1280])
def test_rarest_is_the_least_held_lowest_index(n_pieces):
    """`Swarm.rarest` (counts compared for a few pieces, else a walk up the count levels by
    blocks) gives
    the least held piece, the lowest index on ties: checked against a direct minimum on a swarm
    whose counts spread over many levels, for random subsets and for subsets of common pieces
    (a parent's usual offer)."""
    rng = random.Random(n_pieces)
    swarm, _ = make(n_pieces)
    held_by = [rng.randrange(200) for _ in range(n_pieces)]     # counts spread over many levels
    for k in range(200):
        p = peer(swarm, f"p{k}")
        for piece in range(n_pieces):
            if k < held_by[piece]:
                swarm.add_piece(p, piece)
    # the blocks of levels a walk skips by are the OR of their levels, kept up piece by piece
    expect = [0] * len(swarm.blocks)
    for c in swarm.filled:
        expect[c // 32] |= swarm.levels[c]
    assert swarm.blocks == expect
    swarm.remove_peer(3)            # counts go down: the view is rebuilt
    avail = swarm.avail_bits
    median = swarm.filled[len(swarm.filled) // 2]
    common = sum(1 << p for p in range(n_pieces) if swarm.count_list[p] >= median)
    checked = 0
    for q in range(300):
        sub = avail if q % 10 else common
        for _ in range(rng.randrange(9)):
            sub &= rng.getrandbits(n_pieces)
        if not sub:
            continue
        want = min((p for p in range(n_pieces) if sub >> p & 1), key=lambda p: (swarm.count_list[p], p))
        assert swarm.rarest(sub) == want
        checked += 1
    assert checked > 100
