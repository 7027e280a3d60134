"""The exact max-min reference: textbook cases by hand, then the optimality certificate."""

import math

import numpy as np
import pytest

from dfsim.maxmin import fluid_completion_times, max_min_rates

INF = math.inf


def test_one_bottleneck_shared_by_three():
    r = max_min_rates({"link": 9.0}, [["link"], ["link"], ["link"]])
    np.testing.assert_allclose(r, [3.0, 3.0, 3.0])


def test_two_link_chain_differs_from_equal_share():
    # Flow 0 crosses both links, flow 1 only a (capacity 1), flow 2 only b (capacity 2).
    # Equal share per link would give flow 2 min(2/2) = 1; max-min gives it what flow 0
    # cannot use on b: 2 - 0.5 = 1.5.
    cap = {"a": 1.0, "b": 2.0}
    r = max_min_rates(cap, [["a", "b"], ["a"], ["b"]])
    np.testing.assert_allclose(r, [0.5, 0.5, 1.5])


def test_parking_lot():
    cap = {("link", i): c for i, c in enumerate([1.0, 2.0, 3.0])}
    flows = [[("link", 0), ("link", 1), ("link", 2)], [("link", 0)], [("link", 1)], [("link", 2)]]
    np.testing.assert_allclose(max_min_rates(cap, flows), [0.5, 0.5, 1.5, 2.5])


def test_demand_caps():
    one = {"l": 10.0}
    # The small demands are met; the rest is shared by those that want more.
    np.testing.assert_allclose(max_min_rates(one, [["l"]] * 3, [1.0, 2.0, INF]), [1, 2, 7])
    np.testing.assert_allclose(max_min_rates(one, [["l"]] * 3, [1.0, 5.0, 6.0]), [1, 4.5, 4.5])
    # Demands that fit leave capacity unused.
    np.testing.assert_allclose(max_min_rates(one, [["l"]] * 2, [1.0, 2.0]), [1, 2])
    # Zero demand, and a flow bounded only by its demand.
    np.testing.assert_allclose(max_min_rates(one, [["l"], ["l"], []], [0.0, INF, 3.0]), [0, 10, 3])


def test_bipartite_up_down():
    # Uploaders A (10) and B (4) each send to downloaders C (down 6) and D (down 10).
    # Round 1: B's uplink saturates at level 2 (B->C, B->D freeze at 2).
    # Round 2: C's downlink has 6 - 2 = 4 for A->C alone: level 4.
    # Round 3: A's uplink has 10 - 4 = 6 for A->D; D's downlink has 8 left: A->D = 6.
    cap = {("up", "A"): 10.0, ("up", "B"): 4.0, ("down", "C"): 6.0, ("down", "D"): 10.0}
    flows = [
        [("up", "A"), ("down", "C")],
        [("up", "A"), ("down", "D")],
        [("up", "B"), ("down", "C")],
        [("up", "B"), ("down", "D")],
    ]
    np.testing.assert_allclose(max_min_rates(cap, flows), [4.0, 6.0, 2.0, 2.0])


def test_edge_cases():
    assert max_min_rates({"l": 1.0}, []).shape == (0,)
    # Zero capacity: flows through it get nothing, others are unaffected.
    np.testing.assert_allclose(max_min_rates({"z": 0.0, "l": 2.0}, [["z", "l"], ["l"]]), [0, 2])
    # Naming a resource twice counts once.
    np.testing.assert_allclose(max_min_rates({"l": 2.0}, [["l", "l"], ["l"]]), [1, 1])
    # An infinite resource never binds.
    np.testing.assert_allclose(max_min_rates({"i": INF, "l": 3.0}, [["i", "l"], ["i"]], [INF, 5]), [3, 5])


@pytest.mark.parametrize(
    "cap, flows, demand",
    [
        ({"l": 1.0}, [[]], None),  # no resource, no demand
        ({"l": 1.0}, [["l"], []], [INF, INF]),
        ({"i": INF}, [["i"]], None),  # only infinite resources: unbounded
        ({"l": 1.0}, [["nope"]], None),
        ({"l": -1.0}, [["l"]], None),
        ({"l": 1.0}, [["l"]], [1.0, 2.0]),
        ({"l": 1.0}, [["l"]], [-1.0]),
        ({"l": 1.0}, ["l"], None),  # a bare string is not a list of resources
    ],
)
def test_errors(cap, flows, demand):
    with pytest.raises(ValueError):
        max_min_rates(cap, flows, demand)


def test_fluid_two_flows_sharing():
    # Both get 1/2 until the smaller one is done at t = 2; the other then has 1 left at rate 1.
    np.testing.assert_allclose(fluid_completion_times({"l": 1.0}, [["l"], ["l"]], [1.0, 2.0]), [2, 3])


def test_fluid_staggered_starts_and_idle_gaps():
    one = {"l": 1.0}
    # Flow 0 runs alone for 1 s (1 left), then both share: each has 1 left at 1/2 -> t = 3.
    np.testing.assert_allclose(fluid_completion_times(one, [["l"], ["l"]], [2, 1], [0, 1]), [3, 3])
    # The link idles between them.
    np.testing.assert_allclose(fluid_completion_times(one, [["l"], ["l"]], [1, 1], [0, 5]), [1, 6])
    # Start times need not be sorted; a zero-size flow completes when it starts.
    np.testing.assert_allclose(
        fluid_completion_times(one, [["l"], ["l"], ["l"]], [1, 0, 1], [5, 2, 0]), [6, 2, 1]
    )


def test_fluid_chain_reallocates_after_completions():
    # Rates 0.5, 0.5, 1.5 (the chain above); flows 0 and 1 end at t = 2, flow 2 has 4 - 3 = 1
    # left and then gets all of b (2): done at 2.5.
    cap = {"a": 1.0, "b": 2.0}
    t = fluid_completion_times(cap, [["a", "b"], ["a"], ["b"]], [1.0, 1.0, 4.0])
    np.testing.assert_allclose(t, [2.0, 2.0, 2.5])


def test_fluid_demand_and_starvation():
    np.testing.assert_allclose(
        fluid_completion_times({"l": 10.0}, [["l"], ["l"]], [10, 10], demand=[2, INF]), [5, 1.25]
    )
    # Flow 1 can never move: inf, while flow 0 is unaffected.
    t = fluid_completion_times({"l": 1.0, "z": 0.0}, [["l"], ["z"]], [1, 1])
    assert t[0] == pytest.approx(1.0) and t[1] == INF


def _check_certificate(cap, flows, demand, r):
    """Feasible, and every flow is at its demand or has a saturated bottleneck where its rate
    is the largest: the characterisation of the max-min fair allocation."""
    assert np.all(r >= 0)
    load = {res: 0.0 for res in cap}
    users = {res: [] for res in cap}
    for i, flow in enumerate(flows):
        for res in set(flow):
            load[res] += r[i]
            users[res].append(i)
    for res, c in cap.items():
        assert load[res] <= c * (1 + 1e-9) + 1e-12, (res, load[res], c)
    for i, flow in enumerate(flows):
        if demand is not None:
            assert r[i] <= demand[i] * (1 + 1e-9)
            if r[i] >= demand[i] * (1 - 1e-9):
                continue
        assert any(
            load[res] >= cap[res] * (1 - 1e-9)
            and r[i] >= max(r[j] for j in users[res]) * (1 - 1e-9)
            for res in set(flow)
        ), (i, flow, r)


@pytest.mark.parametrize("seed", range(300))
def test_random_instances_satisfy_the_certificate(seed):
    rng = np.random.default_rng(seed)
    n_res = int(rng.integers(1, 7))
    n_flows = int(rng.integers(1, 16))
    if seed % 3 == 0:  # small integers make ties, which are where tolerances matter
        caps = rng.integers(0, 5, n_res).astype(float)
    else:
        caps = rng.uniform(0.01, 10.0, n_res) * 10.0 ** rng.integers(-3, 9)
    cap = {("r", k): float(c) for k, c in enumerate(caps)}
    flows = []
    for _ in range(n_flows):
        k = int(rng.integers(1, min(n_res, 3) + 1))
        flows.append([("r", int(j)) for j in rng.choice(n_res, size=k, replace=False)])
    demand = None
    if seed % 2:
        demand = np.where(rng.random(n_flows) < 0.5, INF, rng.uniform(0, 1.0, n_flows) * caps.max())
        demand = [float(d) for d in demand]
    r = max_min_rates(cap, flows, demand)
    _check_certificate(cap, flows, demand, r)


@pytest.mark.parametrize("seed", range(50))
def test_random_single_link_fluid_is_work_conserving(seed):
    # One link serving flows that arrive over time finishes all of them at
    # max over arrival times s of (s + work arriving at or after s) / capacity,
    # and no flow finishes before it could alone.
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 20))
    c = float(rng.uniform(0.5, 5.0))
    sizes = rng.uniform(0.0, 10.0, n)
    starts = rng.uniform(0.0, 20.0, n) * (rng.random(n) < 0.7)
    t = fluid_completion_times({"l": c}, [["l"]] * n, sizes, starts)
    makespan = max(s + sizes[starts >= s].sum() / c for s in starts)
    assert t.max() == pytest.approx(makespan, rel=1e-9)
    assert np.all(t >= starts + sizes / c - 1e-9 * (1 + t))
    # Max-min on one link is processor sharing: a shorter flow that starts no later than
    # another never finishes after it.
    for i in range(n):
        for j in range(n):
            if starts[i] <= starts[j] and sizes[i] <= sizes[j]:
                assert t[i] <= t[j] * (1 + 1e-9)


@pytest.mark.parametrize("seed", range(30))
def test_random_fluid_moves_every_byte(seed):
    # Re-integrate independently: between consecutive event instants the running set is
    # fixed, so each flow moves rate * duration; every flow must have moved exactly its size.
    rng = np.random.default_rng(1000 + seed)
    n_res, n = int(rng.integers(1, 6)), int(rng.integers(1, 12))
    cap = {k: float(c) for k, c in enumerate(rng.uniform(0.5, 5.0, n_res))}
    flows = [list(rng.choice(n_res, size=int(rng.integers(1, n_res + 1)), replace=False)) for _ in range(n)]
    sizes = rng.uniform(0.1, 10.0, n)
    starts = rng.uniform(0.0, 5.0, n) * (rng.random(n) < 0.5)
    done = fluid_completion_times(cap, flows, sizes, starts)
    assert np.all(np.isfinite(done)) and np.all(done > starts)
    moved = np.zeros(n)
    instants = np.unique(np.concatenate([starts, done]))
    for t0, t1 in zip(instants[:-1], instants[1:]):
        running = [i for i in range(n) if starts[i] <= t0 and done[i] >= t1]
        if running:
            r = max_min_rates(cap, [flows[i] for i in running])
            moved[running] += r * (t1 - t0)
    np.testing.assert_allclose(moved, sizes, rtol=1e-9)


def test_fluid_refuses_unbounded_flows_by_their_own_index():
    with pytest.raises(ValueError, match="flow 1 is unbounded"):
        fluid_completion_times({"l": 1.0}, [["l"], []], [1, 1], [0, 5])
