"""The fast flow model (`dfsim.network`): small cases computed by hand, then invariants.

Every expected number in the hand-computed tests can be checked on paper; the comment above
each says how. The invariants (feasibility at every instant, bytes conservation, determinism)
are checked on seeded random P2P-like scenarios with starts, completions, follow-up flows,
aborts, capacity changes and an inter-IDC link.
"""
from __future__ import annotations

import numpy as np
import pytest
from simpy.core import EmptySchedule

from dfsim.environment import CountingEnvironment
from dfsim.network import Network

REL = 1e-9  # completion times are sums of a few divisions: far below any hand-computed gap


def approx(x):
    return pytest.approx(x, rel=REL, abs=REL)


def setup():
    env = CountingEnvironment()
    return env, Network(env)


def recorder(env, done: dict):
    """An on_done that records each flow's completion time under its tag."""
    def on_done(f):
        assert f.tag not in done, "on_done called twice"
        done[f.tag] = env.now
    return on_done


def at(env, t, fn):
    """Call fn() at time t."""
    env.timeout(t).callbacks.append(lambda _e: fn())


def load(r) -> float:
    return sum(f.rate for f in r.flows)


def assert_feasible(resources, when=""):
    """No resource carries more than its capacity; no rate is negative."""
    for r in resources:
        for f in r.flows:
            assert f.rate >= 0.0, (when, r.name, f.tag, f.rate)
        assert load(r) <= r.capacity * (1 + 1e-9), (when, r.name, load(r), r.capacity)


# --- hand-computed cases ------------------------------------------------------------------------

def test_one_flow_limited_by_the_uplink():
    # min(up 2, down 10) = 2: 4 bytes take 2 s.
    env, net = setup()
    done = {}
    f = net.start((net.uplink("u", 2.0), net.downlink("d", 10.0)), 4.0, recorder(env, done), "f")
    env.run(until=1.0)
    assert f.rate == approx(2.0)
    assert net.delivered(f) == approx(2.0)
    env.run()
    assert done == {"f": approx(2.0)}
    assert net.active == 0


def test_one_flow_limited_by_the_downlink():
    # min(up 10, down 4) = 4: 8 bytes take 2 s.
    env, net = setup()
    done = {}
    f = net.start((net.uplink("u", 10.0), net.downlink("d", 4.0)), 8.0, recorder(env, done), "f")
    env.run(until=0.5)
    assert f.rate == approx(4.0)
    env.run()
    assert done == {"f": approx(2.0)}


def test_two_flows_sharing_an_uplink():
    # Uplink 1 split in halves: the 1-byte flow is done at t = 2 (2 bytes moved in all); the
    # 2-byte flow then has 1 left at the whole uplink: t = 3.
    env, net = setup()
    done = {}
    u = net.uplink("u", 1.0)
    a = net.start((u, net.downlink("da", 100.0)), 1.0, recorder(env, done), "a")
    b = net.start((u, net.downlink("db", 100.0)), 2.0, recorder(env, done), "b")
    env.run(until=1.0)
    assert (a.rate, b.rate) == (approx(0.5), approx(0.5))
    env.run()
    assert done == {"a": approx(2.0), "b": approx(3.0)}


def test_small_fan_is_processor_sharing():
    # Three flows of 1, 2, 3 bytes on an uplink of 3: rate 1 each until t = 1; then 1.5 each,
    # the 2-byte flow's last byte takes 2/3 s (t = 5/3); the 3-byte flow then has 1 left at 3:
    # t = 2 (all 6 bytes through 3 bytes/s).
    env, net = setup()
    done = {}
    u = net.uplink("u", 3.0)
    for size in (1.0, 2.0, 3.0):
        net.start((u, net.downlink(f"d{size}", 100.0)), size, recorder(env, done), size)
    env.run()
    assert done == {1.0: approx(1.0), 2.0: approx(5 / 3), 3.0: approx(2.0)}


def test_receiver_water_fills_among_its_parents():
    # Child downlink 10, parents' uplinks 2 and 100: the slow parent gets its cap 2, the fast
    # one the rest, 8. The slow one's 2 bytes end at t = 1; the fast one has 16 - 8 = 8 left,
    # now alone at min(100, 10): t = 1.8.
    env, net = setup()
    done = {}
    d = net.downlink("child", 10.0)
    slow = net.start((net.uplink("p_slow", 2.0), d), 2.0, recorder(env, done), "slow")
    fast = net.start((net.uplink("p_fast", 100.0), d), 16.0, recorder(env, done), "fast")
    env.run(until=0.5)
    assert (slow.rate, fast.rate) == (approx(2.0), approx(8.0))
    env.run()
    assert done == {"slow": approx(1.0), "fast": approx(1.8)}


def test_water_filling_three_parents():
    # Downlink 9, caps 1, 3, 100: fair 3 -> 1 takes 1; 8 left for two, fair 4 -> 3 takes 3;
    # the last gets 5.
    env, net = setup()
    d = net.downlink("child", 9.0)
    flows = [net.start((net.uplink(f"p{c}", c), d), 100.0, lambda f: None, c) for c in (1.0, 3.0, 100.0)]
    env.run(until=0.1)
    assert [f.rate for f in flows] == [approx(1.0), approx(3.0), approx(5.0)]


def test_sender_shares_are_equal_splits_not_max_min():
    # The documented approximation: uplink 10 with two flows offers each 5, even though the
    # flow to a child with downlink 1 can use only 1. Max-min would give the other 9; the fast
    # model gives it 5 (10 bytes: t = 2, not 10/9).
    env, net = setup()
    done = {}
    u = net.uplink("u", 10.0)
    slow = net.start((u, net.downlink("d_slow", 1.0)), 100.0, recorder(env, done), "slow")
    other = net.start((u, net.downlink("d_fast", 100.0)), 10.0, recorder(env, done), "other")
    env.run(until=1.0)
    assert (slow.rate, other.rate) == (approx(1.0), approx(5.0))
    env.run()
    assert done["other"] == approx(2.0)
    # the slow flow stays at its downlink's 1 throughout: 100 bytes -> t = 100
    assert done["slow"] == approx(100.0)


def test_abort_returns_delivered_bytes_and_frees_the_uplink():
    # Uplink 1 shared by two 10-byte flows: 0.5 each. Abort a at t = 4: it had delivered 2.
    # b has 8 left at the whole uplink: done at t = 12.
    env, net = setup()
    done = {}
    u = net.uplink("u", 1.0)
    da, db = net.downlink("da", 100.0), net.downlink("db", 100.0)
    a = net.start((u, da), 10.0, recorder(env, done), "a")
    b = net.start((u, db), 10.0, recorder(env, done), "b")
    got = {}

    def abort_a():
        got["before"] = net.delivered(a)
        got["aborted"] = net.abort(a)
        got["b_at_abort"] = net.delivered(b)
    at(env, 4.0, abort_a)
    env.run(until=5.0)
    assert got == {"before": approx(2.0), "aborted": approx(2.0), "b_at_abort": approx(2.0)}
    assert b.rate == approx(1.0) and a.rate == 0.0
    assert list(u.flows) == [b]
    env.run()
    assert done == {"b": approx(12.0)}           # a's on_done is never called
    assert u.bytes == approx(12.0) and da.bytes == approx(2.0) and db.bytes == approx(10.0)
    assert net.active == 0


def test_abort_frees_the_downlink_for_the_other_parent():
    # Child downlink 2, two parents with uplinks 10: 1 each. Abort one at t = 1 (1 delivered);
    # the other has 5 - 1 = 4 left at 2: done at t = 3.
    env, net = setup()
    done = {}
    d = net.downlink("child", 2.0)
    a = net.start((net.uplink("pa", 10.0), d), 5.0, recorder(env, done), "a")
    net.start((net.uplink("pb", 10.0), d), 5.0, recorder(env, done), "b")
    got = []
    at(env, 1.0, lambda: got.append(net.abort(a)))
    env.run()
    assert got == [approx(1.0)]
    assert done == {"b": approx(3.0)}
    assert d.bytes == approx(6.0)


def test_shrink_hands_the_tail_of_a_flow_to_another_parent():
    # The end game: child downlink 2, parent a at 1 sends 10 bytes. At t = 2 (2 delivered,
    # 8 left) 4 bytes move to parent b (uplink 1): both end at t = 6, and every byte counts
    # once: the child received 10.
    env, net = setup()
    done = {}
    d = net.downlink("child", 2.0)
    ua, ub = net.uplink("a", 1.0), net.uplink("b", 1.0)
    a = net.start((ua, d), 10.0, recorder(env, done), "a")

    def split():
        net.shrink(a, 4.0)
        net.start((ub, d), 4.0, recorder(env, done), "b")
    at(env, 2.0, split)
    env.run()
    assert done == {"a": approx(6.0), "b": approx(6.0)}
    assert a.size == approx(6.0) and d.bytes == approx(10.0) and ua.bytes == approx(6.0)


def test_shrink_in_the_instant_a_flow_starts():
    # Before its first rate: the smaller size is timed by the flush.
    env, net = setup()
    done = {}
    f = net.start((net.uplink("u", 1.0), net.downlink("d", 10.0)), 5.0, recorder(env, done), "f")
    net.shrink(f, 3.0)
    env.run()
    assert done == {"f": approx(2.0)}


def test_abort_before_the_first_flush():
    # Started and aborted in the same instant: nothing delivered, nothing left behind.
    env, net = setup()
    done = {}
    u, d = net.uplink("u", 1.0), net.downlink("d", 1.0)
    a = net.start((u, d), 5.0, recorder(env, done), "a")
    assert net.abort(a) == 0.0
    net.start((u, d), 1.0, recorder(env, done), "b")
    env.run()
    assert done == {"b": approx(1.0)}
    assert net.active == 0 and not u.flows and not d.flows


def test_set_capacity_on_the_uplink_mid_flow():
    # 10 bytes at 1 until t = 2 (8 left), then at 4: t = 4. Second run, lowered to 0.5 at t = 3
    # instead: 10 - 3 = 7 left at 0.5 -> t = 17.
    for change_at, new_cap, expect in ((2.0, 4.0, 4.0), (3.0, 0.5, 17.0)):
        env, net = setup()
        done = {}
        u = net.uplink("u", 1.0)
        net.start((u, net.downlink("d", 100.0)), 10.0, recorder(env, done), "f")
        at(env, change_at, lambda: net.set_capacity(u, new_cap))
        env.run()
        assert done == {"f": approx(expect)}


def test_set_capacity_on_the_downlink_mid_flow():
    # Two parents (uplinks 10) into downlink 10: 5 each. At t = 1 the downlink drops to 2: the
    # 20-byte flows have 15 left each at 1: t = 16.
    env, net = setup()
    done = {}
    d = net.downlink("d", 10.0)
    for name in "ab":
        net.start((net.uplink(name, 10.0), d), 20.0, recorder(env, done), name)
    at(env, 1.0, lambda: net.set_capacity(d, 2.0))
    env.run()
    assert done == {"a": approx(16.0), "b": approx(16.0)}


def test_set_capacity_twice_in_one_instant_and_back():
    # Changes within one instant coalesce: only the last one counts (rate 2 from t = 1):
    # 1 byte by t = 1, 3 left at 2 -> t = 2.5.
    env, net = setup()
    done = {}
    u = net.uplink("u", 1.0)
    net.start((u, net.downlink("d", 100.0)), 4.0, recorder(env, done), "f")

    def change():
        net.set_capacity(u, 50.0)
        net.set_capacity(u, 2.0)
    at(env, 1.0, change)
    env.run()
    assert done == {"f": approx(2.5)}


def test_inter_idc_link_limits_cross_flows():
    # Link 3 carries three cross flows (senders' uplinks 10, children's downlinks 10): 1 each,
    # 3 bytes -> t = 3. A local flow from one of those senders to another child shares its
    # uplink: the uplink offers 5 to each of its two flows, the cross one is held to 1 by the
    # link, the local one gets its 5 (equal split, not max-min's 9): 10 bytes -> t = 2.
    env, net = setup()
    done = {}
    link = net.uplink("hz->sg", 3.0)
    ups = [net.uplink(f"u{i}", 10.0) for i in range(3)]
    downs = [net.downlink(f"d{i}", 10.0) for i in range(3)]
    cross = [net.start((ups[i], downs[i], link), 3.0, recorder(env, done), f"x{i}") for i in range(3)]
    local = net.start((ups[0], net.downlink("d_local", 10.0)), 10.0, recorder(env, done), "local")
    env.run(until=0.5)
    assert [f.rate for f in cross] == [approx(1.0)] * 3
    assert local.rate == approx(5.0)
    assert load(link) == approx(3.0)
    env.run()
    assert done == {"x0": approx(3.0), "x1": approx(3.0), "x2": approx(3.0), "local": approx(2.0)}
    assert link.bytes == approx(9.0)


def test_inter_idc_link_capacity_change():
    # One cross flow, link 2 < uplink 10 < downlink 100: rate 2. At t = 1 the link goes to 20:
    # now the uplink binds at 10; 10 - 2 = 8 left -> t = 1.8.
    env, net = setup()
    done = {}
    link = net.uplink("link", 2.0)
    net.start((net.uplink("u", 10.0), net.downlink("d", 100.0), link), 10.0, recorder(env, done), "x")
    at(env, 1.0, lambda: net.set_capacity(link, 20.0))
    env.run()
    assert done == {"x": approx(1.8)}


def test_large_fan_shares_are_sticky_within_the_slack():
    # 100 flows (a big fan) on an uplink of 100, sizes 1, 1.01, 1.02, ... The share is set for
    # 100 * 1.01 flows (headroom), so each runs at 100/101 and the first ends at t = 1.01. With
    # 99 flows (>= 101 * 0.98) the share stays; the second (0.01 left) ends 0.01 * 1.01 later.
    # With 98 (< 98.98) it is reset for 98 * 1.01 flows: the third ends 0.01 * 0.9898 later.
    env, net = setup()
    done = {}
    u = net.uplink("u", 100.0)
    for i in range(100):
        net.start((u, net.downlink(f"d{i}", 100.0)), 1.0 + 0.01 * i, recorder(env, done), i)
    env.run()
    assert done[0] == approx(1.01)
    assert done[1] == approx(1.01 + 0.01 * 1.01)
    assert done[2] == approx(1.01 + 0.01 * 1.01 + 0.01 * 98 * 1.01 / 100)
    assert u.bytes == approx(sum(1.0 + 0.01 * i for i in range(100)))


def test_zero_capacity_path_never_completes_but_does_not_crash():
    # A flow behind a dead uplink, one behind a dead downlink, and a normal flow sharing the
    # dead-uplink flow's downlink: the normal one gets the whole downlink (4 bytes at 2: t = 2);
    # the run ends with the starved two still active, at rate 0, nothing delivered.
    env, net = setup()
    done = {}
    d = net.downlink("d", 2.0)
    dead_up = net.start((net.uplink("dead", 0.0), d), 1.0, recorder(env, done), "dead_up")
    dead_down = net.start((net.uplink("u2", 5.0), net.downlink("dead", 0.0)), 1.0, recorder(env, done), "dead_down")
    net.start((net.uplink("u3", 10.0), d), 4.0, recorder(env, done), "ok")
    env.run()
    assert done == {"ok": approx(2.0)}
    assert net.active == 2
    for f in (dead_up, dead_down):
        assert f.rate == 0.0 and net.delivered(f) == 0.0
    env.run(until=1000.0)            # nothing left to happen; time just advances
    assert done == {"ok": approx(2.0)}


def test_zero_capacity_restored_resumes_the_flow():
    # Dead uplink until t = 3, then 1: 2 bytes -> t = 5.
    env, net = setup()
    done = {}
    u = net.uplink("u", 0.0)
    net.start((u, net.downlink("d", 1.0)), 2.0, recorder(env, done), "f")
    at(env, 3.0, lambda: net.set_capacity(u, 1.0))
    env.run()
    assert done == {"f": approx(5.0)}


# --- invariants on random scenarios -------------------------------------------------------------

CAPS = (1.0, 2.0, 5.0, 10.0)


def random_scenario(seed: int, check: bool = True, check_flush: bool = False) -> dict:
    """A seeded P2P-like run; returns what happened. With `check`, the allocation is checked
    for feasibility in every on_done callback and by a sampling process; with `check_flush`,
    after every step of the environment that leaves no flush pending (no monkeypatching: the
    network may be compiled, `dfnet.native`).

    8-20 hosts with up/down capacities from CAPS, one inter-IDC link; 10-60 flows start at
    random times in [0, 5] from a random sender to a different random receiver (a third of them
    across the link). Some completions start a follow-up flow from the same sender (a pipelined
    next piece), some flows are aborted, and some capacities change mid-run (including to 0 and
    back). Times are continuous draws, so no capacity change coincides with a completion.
    """
    rng = np.random.default_rng(seed)
    env, net = setup()
    h = int(rng.integers(8, 21))
    ups = [net.uplink(f"u{i}", float(rng.choice(CAPS))) for i in range(h)]
    downs = [net.downlink(f"d{i}", float(rng.choice(CAPS))) for i in range(h)]
    link = net.uplink("link", float(rng.choice(CAPS)))
    resources = ups + downs + [link]
    done: dict[object, float] = {}
    flows: dict[object, object] = {}
    aborted: dict[object, float] = {}
    checks = [0]
    flush_checks = [0]

    def check_now(when):
        if check:
            assert_feasible(resources, when)
            checks[0] += 1

    def on_done(f):
        done[f.tag] = env.now
        assert f.remaining == 0.0 and f.rate == 0.0
        check_now(("on_done", f.tag, env.now))
        if len(f.tag) < 3 and rng.random() < 0.3:   # a follow-up piece, at most two deep
            s, r = f.path[0], f.path[1]
            launch(s, r, f.path[2:], float(rng.uniform(1.0, 10.0)), f.tag + ("next",))

    def launch(s, r, extra, size, tag):
        flows[tag] = net.start((s, r) + tuple(extra), size, on_done, tag)

    n = int(rng.integers(10, 61))
    for k in range(n):
        s = int(rng.integers(h))
        r = (s + int(rng.integers(1, h))) % h
        extra = (link,) if rng.random() < 1 / 3 else ()
        size = float(rng.uniform(1.0, 10.0))
        at(env, float(rng.uniform(0.0, 5.0)),
           lambda s=s, r=r, extra=extra, size=size, k=k: launch(ups[s], downs[r], extra, size, (k,)))

    def abort_some():
        for tag, f in list(flows.items()):
            if tag not in done and tag not in aborted and rng.random() < 0.1:
                aborted[tag] = net.abort(f)
    for t in rng.uniform(1.0, 8.0, 3):
        at(env, float(t), abort_some)

    for t in rng.uniform(0.5, 10.0, 6):
        res = resources[int(rng.integers(len(resources)))]
        new = float(rng.choice((0.0,) + CAPS))
        at(env, float(t), lambda res=res, new=new: net.set_capacity(res, new))
        # a dead resource comes back, so the run ends with everything delivered or aborted
        at(env, float(t) + 1.234567, lambda res=res: net.set_capacity(res, float(rng.choice(CAPS))))

    def sampler():
        while True:
            yield env.timeout(0.0731)
            check_now(("sample", env.now))
            if (net.active == 0 and env.now > 12.0) or env.now > 1e4:
                return   # all changes are over by t = 11.3; the cap only guards a hang
    env.process(sampler())
    if check_flush:
        # step by step: after every step that leaves no flush pending, the last recomputation
        # (the only moment rates change) has run
        while True:
            try:
                env.step()
            except EmptySchedule:
                break
            if not net._flush_pending:
                assert_feasible(resources, ("flush", env.now))
                flush_checks[0] += 1
    else:
        env.run()
    return dict(env=env, net=net, ups=ups, downs=downs, link=link, flows=flows, done=done,
                aborted=aborted, checks=checks[0], flush_checks=flush_checks[0])


@pytest.mark.parametrize("seed", range(40))
def test_allocation_never_oversubscribes_a_resource(seed):
    out = random_scenario(seed)
    assert out["checks"] > 20
    # and every flow either completed or was aborted: nothing is stuck
    assert set(out["done"]) | set(out["aborted"]) == set(out["flows"])
    assert not set(out["done"]) & set(out["aborted"])
    assert out["net"].active == 0


@pytest.mark.parametrize("seed", range(20))
def test_allocation_is_feasible_after_every_flush(seed):
    # The strongest form: checked right after every recomputation, the only moment rates
    # change. (Between a capacity cut and the flush at the end of the same instant the old
    # rates are momentarily above the new capacity, but no time passes, so no byte moves.)
    out = random_scenario(seed, check=False, check_flush=True)
    assert out["flush_checks"] > 10
    assert out["net"].active == 0


@pytest.mark.parametrize("seed", range(20))
def test_bytes_are_conserved(seed):
    out = random_scenario(seed, check=False)
    flows, done, aborted = out["flows"], out["done"], out["aborted"]
    moved = sum(flows[t].size for t in done) + sum(aborted.values())
    up = sum(r.bytes for r in out["ups"])
    down = sum(r.bytes for r in out["downs"])
    assert up == pytest.approx(moved, rel=1e-12)
    assert down == pytest.approx(moved, rel=1e-12)
    on_link = [t for t, f in flows.items() if out["link"] in f.path]
    link_moved = sum(flows[t].size for t in on_link if t in done) + sum(aborted[t] for t in on_link if t in aborted)
    assert out["link"].bytes == pytest.approx(link_moved, rel=1e-12, abs=1e-12)
    # per resource: each downlink carried exactly what its flows delivered
    for r in out["downs"]:
        mine = [t for t, f in flows.items() if f.path[1] is r]
        expect = sum(flows[t].size for t in mine if t in done) + sum(aborted[t] for t in mine if t in aborted)
        assert r.bytes == pytest.approx(expect, rel=1e-12, abs=1e-12)


def test_bytes_conserved_without_aborts():
    # The brief's plain form: sum over uplinks == sum over downlinks == sum of sizes.
    env, net = setup()
    rng = np.random.default_rng(7)
    ups = [net.uplink(f"u{i}", float(rng.choice(CAPS))) for i in range(10)]
    downs = [net.downlink(f"d{i}", float(rng.choice(CAPS))) for i in range(10)]
    sizes = rng.uniform(1.0, 10.0, 50)
    done = {}
    for k, size in enumerate(sizes):
        s = int(rng.integers(10))
        r = (s + int(rng.integers(1, 10))) % 10
        path = (ups[s], downs[r])
        at(env, float(rng.uniform(0, 5)), lambda p=path, z=float(size), k=k: net.start(p, z, recorder(env, done), k))
    env.run()
    assert len(done) == 50
    total = float(sizes.sum())
    assert sum(r.bytes for r in ups) == pytest.approx(total, rel=1e-12)
    assert sum(r.bytes for r in downs) == pytest.approx(total, rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_deterministic(seed):
    a = random_scenario(seed, check=False)
    b = random_scenario(seed, check=False)
    assert list(a["done"].items()) == list(b["done"].items())      # same order, same floats
    assert a["aborted"] == b["aborted"]
    assert a["env"].events_scheduled == b["env"].events_scheduled
    assert a["net"].timer_updates == b["net"].timer_updates
    assert [r.bytes for r in a["ups"] + a["downs"]] == [r.bytes for r in b["ups"] + b["downs"]]
