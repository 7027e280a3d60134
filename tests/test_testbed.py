"""The live testbed (issue 7): shaped namespaces, real nodes, the simulator's summary.

The first tests need nothing special (planning). The rest build real testbeds: they need root
and `ip netns`, and skip with the reason otherwise. About two and a half minutes on two cores,
most of it the source-mode run (12 x 64 MiB through a 100 Mbit/s origin is 64 s of physics).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dfsim.scenario import load_scenario
from experiments.testbed import netns
from experiments.testbed.plan import MAX_HOSTS, PlanError, make_plan

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "experiments" / "scenarios" / "testbed-12.toml"
MiB = 1 << 20

_reason = netns.available()
needs_netns = pytest.mark.skipif(_reason is not None, reason=f"testbed tests need root and ip netns: {_reason}")


def _ours(tag: str) -> list[str]:
    """Namespaces and root links whose name starts with `tag`."""
    names = [line.split()[0] for line in netns.sh("ip", "netns", "list").splitlines() if line.strip()]
    links = [line.split(":")[1].strip().split("@")[0] for line in netns.sh("ip", "-o", "link").splitlines()]
    return [n for n in names + links if n.startswith(tag) and not n[len(tag)].isdigit()]


@pytest.fixture
def no_leftovers():
    """After the test, whatever it did: nothing named under this process's tag is left."""
    yield
    if _reason is None:
        assert _ours(netns.run_tag()) == []


def _run(*overrides: str, **testbed):
    from experiments.testbed.runner import Testbed
    plan = make_plan(load_scenario(SCENARIO, list(overrides)))
    return plan, Testbed(plan, **testbed).run()


# ---- planning (no root needed) ----------------------------------------------------------------
def test_too_many_hosts_is_refused_with_the_way_out():
    sc = load_scenario(ROOT / "experiments" / "scenarios" / "fig3.toml")
    with pytest.raises(PlanError, match=rf"at most {MAX_HOSTS}.*--set hosts.0.count=N"):
        make_plan(sc)


def test_plan_draws_the_simulators_hosts():
    from experiments.testbed.compare import simulate
    sc = load_scenario(ROOT / "experiments" / "scenarios" / "heterogeneous-2idc.toml",
                       ["hosts.0.count=6", "hosts.1.count=30", "hosts.1.churn={ leave_fraction = 0.3 }"])
    plan = make_plan(sc)
    sim, _ = simulate(sc, "heuristic:d2", sc.run.seed)
    assert plan.lower_bound_s == pytest.approx(sim["lower_bound_s"], abs=1e-3)
    assert plan.client_server_s == pytest.approx(sim["client_server_s"], abs=1e-3)
    churned = sum(h.leave_at_s is not None for h in plan.hosts)
    assert churned >= sim["left_hosts"] > 0        # a churned host that finishes first stays
    assert len({h.ip for h in plan.hosts} | {plan.origin.ip}) == len(plan.hosts) + 1
    assert any("background" in n for n in plan.notes)


# ---- live runs --------------------------------------------------------------------------------
@needs_netns
def test_p2p_and_source_distribute_correctly_and_p2p_is_faster(no_leftovers, tmp_path):
    import shutil
    from experiments.testbed.calibration import pieces_from_log
    plan, p2p = _run(workdir=tmp_path, keep_outputs=True, supernode_log_level="debug")
    # the supernode's record of every piece it scheduled, what the calibration reads
    (run,) = [d for d in tmp_path.iterdir() if (d / ".testbed").exists()]
    held = [r for log in (run / "logs").glob("s[0-9]*.log") for r in pieces_from_log(log)]
    shutil.rmtree(run)
    assert len(held) == 12 * 16                                   # every piece every host got
    for r in held:
        rate = min(r["child_down_bps"], r["parent_up_bps"])
        assert r["held_s"] >= r["cost_s"] > 0
        if r["parent_uploads"] == [1, 1] and r["child_inflight"] == [1, 1]:
            assert r["held_s"] >= 0.97 * r["bytes"] / rate, r      # no piece beats its pair's rate
    _, source = _run("run.mode=source")
    size = 64 * MiB
    for s in (p2p, source):
        # every finished host's output was checked against the origin's sha256 by the runner
        assert s["failed_hosts"] == [] and s["finished_hosts"] == 12, s
        assert s["file_bytes"] == size
    assert p2p["source_egress_bytes"] <= 1.1 * size
    assert source["source_egress_bytes"] >= 12 * size
    # physics: nobody beats the bounds (tc shapes wire bytes, so payload is a little slower)
    assert p2p["completion_s"]["p50"] >= 0.98 * p2p["lower_bound_s"]
    assert source["completion_s"]["max"] >= 0.98 * source["client_server_s"]
    assert p2p["completion_s"]["max"] < source["completion_s"]["p50"]
    print(f"\nP2P {p2p['completion_s']}  cpu {p2p['cpu']}\nsource {source['completion_s']}  cpu {source['cpu']}")


@needs_netns
def test_a_killed_host_is_reported_and_the_others_finish(no_leftovers):
    plan, s = _run("file.size=32MiB", "hosts.0.churn={ leave_fraction = 0.25 }")
    churned = {f"h{h.index}" for h in plan.hosts if h.leave_at_s is not None}
    assert churned, "the seed must churn at least one host"
    assert set(s["left"]) == churned and s["left_hosts"] == len(churned)
    assert s["failed_hosts"] == []
    assert s["finished_hosts"] == 12 - len(churned)


@needs_netns
def test_cleanup_after_a_failure_and_leftovers_of_a_crash(no_leftovers, monkeypatch):
    from experiments.testbed import runner

    def boom(self):
        raise RuntimeError("node failed to start")
    monkeypatch.setattr(runner.Testbed, "_start_nodes", boom)
    with pytest.raises(RuntimeError, match="node failed"):
        _run("file.size=1MiB")
    # a crashed run's objects: a tag whose pid is not running
    dead = next(p for p in range(4_000_000, 4_100_000) if not Path(f"/proc/{p}").exists())
    tag = netns.run_tag(dead)
    net = netns.Network(tag)
    br = net.bridge("b0")
    ns = net.namespace("h0")
    net.attach(ns, "h0", br, "10.1.1.1/16", upload_bps=1e6, download_bps=1e6)
    assert len(_ours(tag)) == 3
    removed = netns.sweep_leftovers()
    assert set(_ours(tag)) == set() and f"{tag}-h0" in removed


@needs_netns
def test_ctrl_c_cleans_up():
    # a child of a background job inherits SIGINT ignored (and Python then keeps it ignored):
    # give the testbed the default Ctrl-C a terminal user has
    proc = subprocess.Popen([sys.executable, "-m", "experiments.cli", "testbed", str(SCENARIO), "--set",
                             "file.size=16MiB"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    tag = netns.run_tag(proc.pid)
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if "fetch" in line:          # the distribution has begun
                break
        time.sleep(1.0)
        assert _ours(tag), "the run should have namespaces up by now"
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, "".join(seen) + rest
    assert "cleaned up" in rest
    assert _ours(tag) == []


# ---- calibration (no root needed for the model; the measurement is `experiments.testbed.calibration`)
def test_calibration_fit_recovers_the_model_from_pieces_that_had_their_pair_alone():
    from experiments.testbed.calibration import alone, fit
    rng = __import__("numpy").random.default_rng(3)
    a, ramp = 0.12, 150_000
    records = []
    for rate in (10e6 / 8, 30e6 / 8):
        for _ in range(200):
            nbytes = 2 * MiB
            held = nbytes / rate + a + ramp / rate + rng.normal(0, 0.01)
            records.append({"bytes": nbytes, "held_s": held, "cost_s": held - 0.02, "child_down_bps": rate,
                            "parent_up_bps": 2 * rate, "parent_uploads": [1, 1], "child_inflight": [1, 1]})
    shared = dict(records[0], parent_uploads=[2, 1], held_s=99.0)     # sharing, not overhead: left out
    assert alone(records + [shared]) == records
    f = fit(alone(records + [shared]))
    assert abs(f["piece_overhead_s"] - a) < 0.01 and abs(f["ramp_bytes"] - ramp) < 10_000
    assert f["pieces"] == 400 and set(f["by_rate"]) == {"10Mbit/s", "30Mbit/s"}


def test_the_testbed_simulates_with_its_calibration_unless_the_scenario_says_otherwise():
    from experiments.testbed.calibration import TESTBED_NETWORK, for_testbed
    sc = load_scenario(SCENARIO)
    assert sc.network.piece_overhead_s == 0 and for_testbed(sc).network == TESTBED_NETWORK
    own = load_scenario(SCENARIO, ["network.piece_overhead_s=0.01"])
    assert for_testbed(own) is own



def test_the_testbed_runs_without_the_end_game_live_and_simulated():
    """Live daemons fetch whole pieces, so the simulated twin runs without the end game too,
    and the plan says so."""
    from experiments.testbed.calibration import for_testbed
    sc = load_scenario(SCENARIO, ["scheduler.end_game=true"])
    assert sc.scheduler.end_game and not for_testbed(sc).scheduler.end_game
    assert any("end_game" in note for note in make_plan(sc, 1).notes)
