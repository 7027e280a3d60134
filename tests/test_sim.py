"""The simulator held to DESIGN.md's physics and to the scenario features it promises (dfsim.sim).

Every run here is small (50-200 hosts, 50-500 MB) and takes under a few seconds, except the
two `slow` runs of the full 1,000-host x 5 GB Fig. 8 scenario. Expected values are computed
here from the scenario's literal numbers (or from the NICs the run drew), never taken from
`dfsim.physics`, so a wrong closed form there is caught too.
"""
from __future__ import annotations

import copy
import functools
import gc
import json
import math
from pathlib import Path

import numpy as np
import pytest

from dfsim.scenario import load_scenario, parse_scenario
from dfsim.sim import Simulation
from models.loader import load_piece_selector, load_rate_controller

SCENARIOS = Path(__file__).resolve().parents[1] / "experiments" / "scenarios"

HEURISTIC_SELECTORS = ["heuristic:random", "heuristic:rarest-first", "heuristic:v1", "heuristic:d2",
                       "heuristic:d2-load", "heuristic:kraken"]

MB = 10**6


def mbps(x: float) -> float:
    """x megabits per second, in bytes per second."""
    return x * 1e6 / 8


def gbps(x: float) -> float:
    return x * 1e9 / 8


def scenario(n: int = 50, size: str = "50MB", download="200Mbps", upload="100Mbps", source: str = "15Gbps",
             supernodes: int = 1, supernode_upload: str = "10Gbps", mode: str = "p2p", seed: int = 1) -> dict:
    """Raw scenario data (as TOML would load it): one host group, one supernode group."""
    return {
        "name": f"test-{n}x{size}",
        "file": {"size": size},
        "source": {"upload": source},
        "run": {"mode": mode, "seed": seed},
        "supernodes": [{"count": supernodes, "upload": supernode_upload}] if supernodes else [],
        "hosts": [{"count": n, "download": download, "upload": upload}],
    }


def simulate(data, policy: str = "heuristic:d2", rate_policy: str = "heuristic:static", seed: int | None = None,
             trace_path=None) -> tuple[Simulation, dict]:
    """Run a scenario (raw dict or a loaded `Scenario`) the way `dfly sim run` does."""
    sc = parse_scenario(copy.deepcopy(data)) if isinstance(data, dict) else data
    s = sc.run.seed if seed is None else seed
    sim = Simulation(sc, load_piece_selector(policy, seed=s), load_rate_controller(rate_policy, seed=s),
                     seed=seed, trace_path=trace_path)
    return sim, sim.run()


# ------------------------------------------------------------------------------- invariants

def conserved(sim: Simulation) -> tuple[float, float]:
    """(bytes sent over every uplink, bytes received over every downlink)."""
    sent = sim.origin.up.bytes + sum(n.up.bytes for n in sim.hosts) + sum(n.up.bytes for n in sim.supernodes)
    received = sum(n.down.bytes for n in sim.hosts) + sum(n.down.bytes for n in sim.supernodes)
    return sent, received


def assert_conserved(sim: Simulation) -> None:
    sent, received = conserved(sim)
    assert sent > 0
    assert math.isclose(sent, received, rel_tol=1e-9), f"sent {sent} B over uplinks, received {received} B"


def assert_finished_hold_everything(sim: Simulation) -> None:
    finished = [h for h in sim.hosts if h.done_at is not None]
    assert finished
    for h in finished:
        assert h.peer >= 0
        row = sim.swarm.have[h.peer, :sim.task.n_pieces]
        assert row.all(), f"host {h.id} finished holding {int(row.sum())}/{sim.task.n_pieces} pieces"
        assert h.down.bytes >= sim.sc.file.size * (1 - 1e-12), f"host {h.id} finished having received less than the file"


def p2p_lower_bound(sim: Simulation) -> float:
    """Kumar and Ross, from the NICs this run drew (simultaneous arrival, no churn), and the
    inter-IDC terms: an IDC without the origin gets every byte over its links (total L), so
    T >= F / L and T >= N_k * F / (U_k + L)."""
    F = sim.sc.file.size
    u_origin = sim.sc.source.upload_bps
    u_seeds = sum(s.upload_bps for s in sim.supernodes)
    d_min = min(h.download_bps for h in sim.hosts)
    u_hosts = sum(h.upload_bps for h in sim.hosts)
    bound = max(F / u_origin, F / d_min, len(sim.hosts) * F / (u_origin + u_seeds + u_hosts))
    nodes = [sim.origin, *sim.supernodes, *sim.hosts]
    upload = {n.idc: sum(m.upload_bps for m in nodes if m.idc == n.idc) for n in nodes}
    for k in upload:
        if k == sim.origin.idc:
            continue
        inflow = sum(min(next((link.capacity_bps for link in sim.sc.links if set(link.between) == {j, k}),
                              math.inf), upload[j]) for j in upload if j != k)
        if math.isfinite(inflow):
            n_k = sum(h.idc == k for h in sim.hosts)
            bound = max(bound, F / inflow, n_k * F / (upload[k] + inflow))
    return bound


def assert_not_below_physics(sim: Simulation, summary: dict) -> None:
    """No run beats the P2P lower bound; no host beats its own NIC or the origin."""
    F = sim.sc.file.size
    bound = p2p_lower_bound(sim)
    assert summary["lower_bound_s"] == pytest.approx(bound, rel=1e-6, abs=1e-3)
    ct = sim.completion_times()
    assert len(ct) == len(sim.hosts)
    assert ct.max() >= bound * (1 - 1e-9), f"slowest host {ct.max()} s beat the lower bound {bound} s"
    assert summary["completion_s"]["max"] >= summary["lower_bound_s"] * (1 - 1e-9)
    # and the bound with whole pieces (a host uploads a piece only once it holds all of it)
    assert sim.piece_bound_s >= sim.lower_bound_s
    assert ct.max() >= sim.piece_bound_s * (1 - 1e-9), \
        f"slowest host {ct.max()} s beat the whole-piece bound {sim.piece_bound_s} s"
    # per host: the whole file crosses its own downlink, and leaves the origin (which starts at t=0)
    for h in sim.hosts:
        own = max(F / h.download_bps, F / sim.sc.source.upload_bps)
        assert h.done_at - h.arrival >= own * (1 - 1e-9), \
            f"host {h.id} finished in {h.done_at - h.arrival} s, faster than its NIC/origin allow ({own} s)"
    # the last finish: every host's bytes had to be uploaded by someone
    total_up = sim.sc.source.upload_bps + sum(s.upload_bps for s in sim.supernodes) + \
        sum(h.upload_bps for h in sim.hosts)
    assert max(h.done_at for h in sim.hosts) >= len(sim.hosts) * F / total_up * (1 - 1e-9)


# ------------------------------------------------------------------------ source mode: D_cs

@pytest.mark.parametrize("n, size, source, download, expected_s", [
    # N*F/u_s-bound
    (100, "100MB", "1Gbps", "200Mbps", 100 * 100 * MB / gbps(1)),        # 80 s vs 4 s
    (1000, "50MB", "15Gbps", "200Mbps", 1000 * 50 * MB / gbps(15)),      # 26.7 s vs 2 s
    # F/d_min-bound
    (5, "100MB", "10Gbps", "200Mbps", 100 * MB / mbps(200)),             # 0.4 s vs 4 s
    (1, "500MB", "15Gbps", "200Mbps", 500 * MB / mbps(200)),             # one client, Fig. 7
    # both terms equal
    (16, "200MB", "2Gbps", "125Mbps", 16 * 200 * MB / gbps(2)),          # 12.8 s both
])
def test_source_mode_matches_client_server_time(n, size, source, download, expected_s):
    F = int(size.removesuffix("MB")) * MB
    N_F_over_us = n * F / (float(source.removesuffix("Gbps")) * 1e9 / 8)
    F_over_d = F / mbps(float(download.removesuffix("Mbps")))
    assert expected_s == pytest.approx(max(N_F_over_us, F_over_d))
    sim, s = simulate(scenario(n=n, size=size, source=source, download=download, upload=download,
                               supernodes=1, mode="source"))
    assert s["mode"] == "source"
    assert s["finished_hosts"] == n == s["hosts"]
    assert s["client_server_s"] == pytest.approx(expected_s, rel=1e-6, abs=1e-3)
    assert s["completion_s"]["max"] == pytest.approx(expected_s, rel=0.02)
    assert s["completion_s"]["max"] >= expected_s * (1 - 1e-9)       # and never faster
    assert s["source_egress_bytes"] == n * F                          # everybody from the origin
    assert not sim.supernodes                                          # no seeds in source mode
    assert_conserved(sim)


def test_source_mode_on_a_shipped_scenario_with_overrides():
    """fig3, the traditional way: 200 clients at 100 Mbps from a 1 Gbps source."""
    sc = load_scenario(SCENARIOS / "fig3.toml", ["run.mode=source", "hosts.0.count=200"])
    sim, s = simulate(sc)
    expected = max(200 * 200 * MB / gbps(1), 200 * MB / mbps(100))     # 320 s
    assert s["completion_s"]["max"] == pytest.approx(expected, rel=0.02)
    assert s["client_server_s"] == pytest.approx(expected, rel=1e-6)
    assert s["source_egress_bytes"] == 200 * 200 * MB


# --------------------------------------------------- P2P: no run below the lower bound, any policy

LB_SCENARIOS = {
    # homogeneous, bound by total upload: N*F/U = 100*50MB / (1G+1G+100*50M) = 5.71 s
    "homog-upload-bound": scenario(n=100, size="50MB", download="1Gbps", upload="50Mbps", source="1Gbps",
                                   supernode_upload="1Gbps"),
    # homogeneous, bound by the hosts' download: F/d = 2 s (Fig. 8-like NICs)
    "homog-download-bound": scenario(n=100, size="50MB", download="200Mbps", upload="100Mbps"),
    # homogeneous, bound by the origin: F/u_origin = 4 s
    "homog-origin-bound": scenario(n=60, size="50MB", download="1Gbps", upload="1Gbps", source="100Mbps"),
    # heterogeneous, one NIC drawn per host (joint mix): F/d_min = 4 s
    "hetero-joint": scenario(n=50, size="50MB", download={"100Mbps": 0.7, "1Gbps": 0.3},
                             upload={"100Mbps": 0.7, "1Gbps": 0.3}),
    # heterogeneous downloads, thin fixed uploads, two weak seeds: N*F/U = 13.3 s
    "hetero-upload-bound": scenario(n=80, size="50MB", download={"200Mbps": 0.5, "1Gbps": 0.5}, upload="20Mbps",
                                    source="1Gbps", supernodes=2, supernode_upload="200Mbps"),
}


@functools.lru_cache(maxsize=None)
def lb_run(name: str, policy: str) -> tuple[Simulation, dict]:
    return simulate(LB_SCENARIOS[name], policy)


LB_CASES = [pytest.param(name, policy, id=f"{name}-{policy.removeprefix('heuristic:')}")
            for name in LB_SCENARIOS for policy in HEURISTIC_SELECTORS]


@pytest.mark.parametrize("name, policy", LB_CASES)
def test_p2p_never_beats_the_lower_bound(name, policy):
    sim, s = lb_run(name, policy)
    assert s["policy"] == policy and s["mode"] == "p2p"
    assert s["finished_hosts"] == s["hosts"] == len(sim.hosts)
    assert_not_below_physics(sim, s)


@pytest.mark.parametrize("name, policy", LB_CASES)
def test_p2p_bytes_conserved_and_every_finished_host_holds_every_piece(name, policy):
    sim, s = lb_run(name, policy)
    assert_conserved(sim)
    assert_finished_hold_everything(sim)
    F, n = s["file_bytes"], s["hosts"]
    # what hosts received: at least the file each (no churn, nothing lost)
    assert sum(h.down.bytes for h in sim.hosts) >= n * F * (1 - 1e-12)


@pytest.mark.parametrize("name, policy", [c for c in LB_CASES if LB_SCENARIOS[c.values[0]]["supernodes"][0]["count"] == 1])
def test_one_supernode_no_churn_fetches_the_file_from_the_origin_exactly_once(name, policy):
    sim, s = lb_run(name, policy)
    assert len(sim.supernodes) == 1
    assert s["source_egress_bytes"] == s["file_bytes"]
    assert sim.origin.up.bytes == pytest.approx(s["file_bytes"], abs=1e-3)


def test_heterogeneous_mixes_draw_the_nics_the_scenario_says():
    sim, _ = lb_run("hetero-joint", "heuristic:d2")
    downs = {h.download_bps for h in sim.hosts}
    assert downs == {mbps(100), gbps(1)}
    assert all(h.upload_bps == h.download_bps for h in sim.hosts)        # drawn jointly: one NIC
    sim, _ = lb_run("hetero-upload-bound", "heuristic:d2")
    assert {h.download_bps for h in sim.hosts} == {mbps(200), gbps(1)}
    assert {h.upload_bps for h in sim.hosts} == {mbps(20)}


# -------------------------------------------------------------------------------- origin egress

@pytest.fixture(scope="module")
def fig9():
    """The shipped Fig. 9 scenario as is: 500 MB to 200 hosts, 2 supernodes."""
    return simulate(load_scenario(SCENARIOS / "fig9.toml"))


def test_fig9_origin_egress_at_200_hosts_with_two_supernodes(fig9):
    sim, s = fig9
    assert s["hosts"] == 200 and len(sim.supernodes) == 2
    assert s["finished_hosts"] == 200
    assert s["file_bytes"] <= s["source_egress_bytes"] <= 1.05 * s["file_bytes"]
    assert_not_below_physics(sim, s)


def test_fig9_bytes_conserved_and_hosts_complete(fig9):
    sim, _ = fig9
    assert_conserved(sim)
    assert_finished_hold_everything(sim)


def test_origin_egress_at_1000_hosts_with_two_supernodes():
    sc = load_scenario(SCENARIOS / "fig9.toml", ["hosts.0.count=1000", "file.size=50MB"])
    sim, s = simulate(sc)
    assert s["hosts"] == s["finished_hosts"] == 1000 and len(sim.supernodes) == 2
    assert s["file_bytes"] <= s["source_egress_bytes"] <= 1.05 * s["file_bytes"]
    assert s["source_egress_bytes"] < s["hosts"] * s["file_bytes"] / 100    # the point of Fig. 9
    assert_conserved(sim)
    assert_not_below_physics(sim, s)


def test_origin_egress_exactly_the_file_at_200_hosts_with_one_supernode():
    sc = load_scenario(SCENARIOS / "fig9.toml", ["supernodes.0.count=1", "file.size=50MB"])
    sim, s = simulate(sc)
    assert s["hosts"] == s["finished_hosts"] == 200 and len(sim.supernodes) == 1
    assert s["source_egress_bytes"] == s["file_bytes"]


# --------------------------------------------------------------------------------- determinism

def _busy_scenario(seed: int = 3) -> dict:
    """Every random draw a run makes: NIC mix, arrivals, background, churn."""
    d = scenario(n=60, size="50MB", download={"100Mbps": 0.5, "1Gbps": 0.5}, upload={"100Mbps": 0.5, "1Gbps": 0.5},
                 seed=seed)
    d["run"]["arrival"] = {"uniform_s": 5}
    d["hosts"][0]["background"] = {"mean": "30Mbps", "peak": "80Mbps", "on_s": 2, "off_s": 3}
    d["hosts"][0]["churn"] = {"leave_fraction": 0.1}
    return d


def _comparable(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("wall_s", "peak_rss_bytes")}


def test_same_scenario_and_seed_give_the_same_summary():
    _, a = simulate(_busy_scenario(), "heuristic:random")
    _, b = simulate(_busy_scenario(), "heuristic:random")
    assert _comparable(a) == _comparable(b)
    _, c = simulate(_busy_scenario(), "heuristic:random", seed=3)      # the scenario's seed, given
    assert _comparable(a) == _comparable(c)


def test_a_different_seed_gives_a_different_result_on_a_random_policy():
    _, a = simulate(_busy_scenario(), "heuristic:random", seed=3)
    _, b = simulate(_busy_scenario(), "heuristic:random", seed=4)
    assert _comparable(a) != _comparable(b)
    # and not only through the scenario's draws: the policy's own choices differ too
    _, c = simulate(scenario(n=50, size="50MB"), "heuristic:random", seed=1)
    _, d = simulate(scenario(n=50, size="50MB"), "heuristic:random", seed=2)
    assert (c["completion_s"], c["events"]) != (d["completion_s"], d["events"])


# ---------------------------------------------------------------------------- scenario features

def two_idcs(link: str = "500Mbps") -> dict:
    d = scenario(n=60, size="50MB")
    d["idcs"] = [{"name": "hz"}, {"name": "sg"}]
    d["links"] = [{"between": ["hz", "sg"], "capacity": link}]
    d["source"]["idc"] = "hz"
    d["supernodes"][0]["idc"] = "hz"
    d["hosts"][0]["idc"] = "hz"
    d["hosts"].append({"count": 40, "download": "200Mbps", "upload": "100Mbps", "idc": "sg"})
    return d


def test_two_idcs_with_a_limited_link():
    sim, s = simulate(two_idcs())
    assert s["finished_hosts"] == s["hosts"] == 100
    assert s["cross_idc_bytes"] > 0
    # every cross-IDC byte went over the one link, and only those did
    over_links = sum(r.bytes for r in sim.links.values())
    assert s["cross_idc_bytes"] == pytest.approx(over_links, rel=1e-9, abs=1)
    # sg's 40 hosts need the file at least once over the link (their only seed is in hz)
    assert s["cross_idc_bytes"] >= s["file_bytes"]
    assert_conserved(sim)
    assert_finished_hold_everything(sim)
    assert_not_below_physics(sim, s)


def test_link_slots_keep_a_scarce_link_to_useful_transfers():
    """With `link_slots`, a 100 Mbit/s link carries one transfer at a time (a slot's width is
    200 Mbit/s here) instead of many trickles: fewer bytes cross it and sg finishes no later."""
    runs = {}
    for on in (False, True):
        d = two_idcs("100Mbps")
        d["scheduler"] = {"link_slots": on}
        sim, s = simulate(d)
        assert s["finished_hosts"] == 100
        assert_conserved(sim)
        assert_not_below_physics(sim, s)
        runs[on] = s
    assert sim.swarm.links == {(0, 1): [1, 0], (1, 0): [1, 0]}       # every slot given back
    assert runs[True]["cross_idc_bytes"] < runs[False]["cross_idc_bytes"]
    assert runs[True]["completion_s"]["max"] <= runs[False]["completion_s"]["max"]


def end_game_crowd(on: bool) -> dict:
    """A flash crowd whose last pieces run at a parent's 100 Mbit/s into 200 Mbit/s children."""
    d = scenario(n=200, size="20MB", source="2Gbps", supernodes=2)
    d["scheduler"] = {"end_game": on}
    return d


def test_end_game_shortens_the_tail_and_sends_no_byte_twice(tmp_path):
    """Freed parents send the back halves of running last pieces (core rule 6): the last host
    finishes sooner; every host still receives exactly the file, each piece's parts adding
    up to the piece. The gain is a fraction of the last piece's time, 5-16% of the run here
    depending on the seed: every seed must show at least 3%."""
    for seed in (2, 3):
        d_off, d_on = end_game_crowd(False), end_game_crowd(True)
        d_off["run"]["seed"] = d_on["run"]["seed"] = seed
        assert simulate(d_on)[1]["completion_s"]["max"] < 0.97 * simulate(d_off)[1]["completion_s"]["max"]
    _, off = simulate(end_game_crowd(False))
    sim, on = simulate(end_game_crowd(True), trace_path=tmp_path / "t.parquet")
    assert on["finished_hosts"] == 200
    assert on["completion_s"]["max"] < 0.97 * off["completion_s"]["max"]
    assert_conserved(sim)
    assert_not_below_physics(sim, on)
    assert_finished_hold_everything(sim)
    size = sim.sc.file.size
    assert all(math.isclose(h.down.bytes, size, rel_tol=1e-12) for h in sim.hosts)
    assert all(n == 0 for n in sim.swarm.uploads) and not sim.sched._parts and not sim._running
    import pandas as pd
    t = pd.read_parquet(tmp_path / "t.parquet")
    t = t[(t.child < 200) & (t.outcome == "ok")]
    per_piece = t.groupby(["child", "piece"]).bytes.agg(["sum", "count"])
    assert (per_piece["count"] == 2).sum() > 50                     # pieces that came in two parts
    lengths = np.array([sim.task.piece_length(p) for p in per_piece.index.get_level_values("piece")])
    assert (per_piece["sum"].to_numpy() == lengths).all()


def test_end_game_with_churn_and_a_failing_supernode_is_deterministic():
    """Parts die with their parents (here dozens do): a failed part stops its piece's other
    parts and the piece is fetched again whole."""
    def run():
        d = end_game_crowd(True)
        d["supernodes"] = [{"count": 1, "upload": "10Gbps"}, {"count": 1, "upload": "10Gbps", "fail_at_s": 1.0}]
        d["hosts"][0]["churn"] = {"leave_fraction": 0.3}
        return simulate(d)
    sim, a = run()
    assert a["finished_hosts"] == a["hosts"] - a["left_hosts"] and a["left_hosts"] > 0
    assert_conserved(sim)
    assert_finished_hold_everything(sim)
    assert not sim.sched._parts and not sim._running
    _, b = run()
    assert _comparable(a) == _comparable(b)


@pytest.mark.parametrize("host_upload, term", [
    ("10Mbps", "volume"),       # sg's own upload is small: 20 x 50 MB over 200 + 100 Mbps
    ("1Gbps", "seeding"),       # sg replicates fast; one copy over a 100 Mbps link is the floor
])
def test_lower_bound_counts_a_limited_inter_idc_link(host_upload, term):
    """sg holds neither the origin nor a supernode: every byte its hosts get crosses the link."""
    d = scenario(n=4, size="50MB")
    d["idcs"] = [{"name": "hz"}, {"name": "sg"}]
    d["links"] = [{"between": ["hz", "sg"], "capacity": "100Mbps"}]
    d["source"]["idc"] = "hz"
    d["supernodes"][0]["idc"] = "hz"
    d["hosts"][0]["idc"] = "hz"
    d["hosts"].append({"count": 20, "download": "1Gbps", "upload": host_upload, "idc": "sg"})
    sim, s = simulate(d)
    F, link = 50 * MB, mbps(100)
    # Kumar and Ross alone would say 2 s (F / d_min of hz's 200 Mbps hosts)
    expected = {"volume": 20 * F / (20 * mbps(10) + link), "seeding": F / link}[term]
    assert expected > 2.0
    assert s["lower_bound_s"] == pytest.approx(expected, abs=1e-3)      # rounded to ms
    assert s["finished_hosts"] == 24
    assert_not_below_physics(sim, s)
    sg_last = max(h.done_at for h in sim.hosts if h.idc == "sg")
    assert sg_last >= expected * (1 - 1e-9)


def _piece_bound_by_steps(need: float, piece: float, seeds: float, uploads: list[float], dt: float) -> float:
    """The whole-piece bound's differential inequality B' = S + min(U, u_max * B / p), stepped
    forward until the hosts' bytes reach `need`: an independent check of the closed form."""
    total, a, b, t = sum(uploads), max(uploads) / piece, 0.0, 0.0
    while b < need:
        b += (seeds + min(total, a * b)) * dt
        t += dt
    return t


@pytest.mark.parametrize("size, expected_s", [
    ("50MB", 3.578),         # Kumar and Ross: 3.279 s; with 4 MiB pieces 57x of 200 s is out of reach
    ("200MB", 13.414),       # Kumar and Ross: 13.115 s
])
def test_whole_piece_bound_on_seed_fig8_with_a_2gbps_source(size, expected_s):
    """1,000 hosts at 100 Mbit/s up, 2 supernodes of 10 Gbit/s, a 2 Gbit/s origin, 4 MiB pieces."""
    d = load_scenario(SCENARIOS / "fig8-2g.toml", [f"file.size={size}"])
    sim = Simulation(d, load_piece_selector("heuristic:d2"), load_rate_controller("heuristic:static"))
    F, p = sim.sc.file.size, sim.task.piece_size
    seeds = gbps(2) + 2 * gbps(10)
    stepped = _piece_bound_by_steps(1000 * F, p, seeds, [mbps(100)] * 1000, dt=1e-4)
    assert sim.piece_bound_s == pytest.approx(stepped, abs=2e-4)
    assert sim.piece_bound_s == pytest.approx(expected_s, abs=1e-3)
    assert sim.piece_bound_s > sim.lower_bound_s


def test_whole_piece_bound_tends_to_kumar_ross_as_pieces_shrink():
    from dfsim.physics import piece_bound_s
    uploads = np.full(1000, mbps(100))
    kr = 1000 * 200 * MB / (gbps(22) + uploads.sum())
    gaps = [piece_bound_s(200 * MB, p, gbps(22), 1000, uploads) - kr for p in (16 << 20, 4 << 20, 1 << 20, 64 << 10)]
    assert all(g > 0 for g in gaps) and gaps == sorted(gaps, reverse=True)
    assert gaps[-1] < 0.01
    # no host upload at all: the seeds send everything
    assert piece_bound_s(200 * MB, 4 << 20, gbps(22), 1000, np.zeros(1000)) == pytest.approx(1000 * 200 * MB / gbps(22))


def test_lower_bound_ignores_idcs_without_a_listed_link():
    d = scenario(n=4, size="50MB")
    d["idcs"] = [{"name": "hz"}, {"name": "sg"}]
    d["source"]["idc"] = "hz"
    d["hosts"][0]["idc"] = "hz"
    d["hosts"].append({"count": 20, "download": "1Gbps", "upload": "10Mbps", "idc": "sg"})
    sim, s = simulate(d)
    assert s["lower_bound_s"] == pytest.approx(50 * MB / mbps(200), abs=1e-3)
    assert_not_below_physics(sim, s)


def test_uniform_arrival():
    d = scenario(n=50, size="50MB")
    d["run"]["arrival"] = {"uniform_s": 20}
    sim, s = simulate(d)
    arrivals = np.array([h.arrival for h in sim.hosts])
    assert arrivals.min() >= 0 and arrivals.max() < 20
    assert arrivals.max() - arrivals.min() > 10                       # spread, not simultaneous
    assert s["finished_hosts"] == 50
    F = s["file_bytes"]
    for h in sim.hosts:
        assert h.done_at >= h.arrival + F / h.download_bps * (1 - 1e-9)
    # completion is measured from each host's own arrival
    assert s["completion_s"]["max"] == pytest.approx(max(h.done_at - h.arrival for h in sim.hosts), abs=1e-3)
    assert s["completion_s"]["max"] >= s["lower_bound_s"] * (1 - 1e-9)
    assert_conserved(sim)


def test_background_traffic_slows_the_download():
    plain = scenario(n=50, size="50MB")
    busy = copy.deepcopy(plain)
    busy["hosts"][0]["background"] = {"mean": "30Mbps", "peak": "80Mbps", "on_s": 5, "off_s": 20}
    _, s0 = simulate(plain)
    sim, s1 = simulate(busy)
    assert s0["finished_hosts"] == s1["finished_hosts"] == 50
    assert s1["completion_s"]["mean"] > s0["completion_s"]["mean"]
    assert s1["completion_s"]["max"] > s0["completion_s"]["max"]
    assert_conserved(sim)
    assert_not_below_physics(sim, s1)


def test_churn_hosts_leave_and_the_rest_finish():
    d = scenario(n=100, size="50MB", download="1Gbps", upload="50Mbps", source="1Gbps", supernode_upload="1Gbps")
    d["hosts"][0]["churn"] = {"leave_fraction": 0.3}
    sim, s = simulate(d)
    left = [h for h in sim.hosts if h.left]
    assert s["left_hosts"] == len(left) > 0
    assert s["finished_hosts"] == s["hosts"] - s["left_hosts"]
    assert all(h.done_at is None for h in left)                        # they left before finishing
    assert all(h.done_at is not None for h in sim.hosts if not h.left)
    assert_conserved(sim)                                              # aborted transfers count both ends
    assert_finished_hold_everything(sim)


def _supernode_fails(fail_at_s: float) -> dict:
    d = scenario(n=100, size="100MB", supernodes=2)
    d["supernodes"] = [{"count": 1, "upload": "10Gbps"}, {"count": 1, "upload": "10Gbps", "fail_at_s": fail_at_s}]
    return d


def _check_supernode_failure(fail_at_s: float) -> None:
    sim, s = simulate(_supernode_fails(fail_at_s))
    survivor, dead = sim.supernodes
    assert dead.left and not survivor.left
    assert s["sim_s"] > fail_at_s                                      # it failed mid-run
    assert s["finished_hosts"] == s["hosts"] == 100 and s["left_hosts"] == 0
    assert_conserved(sim)
    assert_finished_hold_everything(sim)
    # the origin resends at most what died with the seed before anyone copied it, plus the
    # piece it was fetching; nobody goes back to source while a seed survives
    died = int(sim.swarm.have[dead.peer, :sim.task.n_pieces].sum()) + 1
    assert s["source_egress_bytes"] <= s["file_bytes"] + died * sim.task.piece_size
    assert not sim.swarm.back_sourced


def test_supernode_failing_mid_run_after_its_pieces_spread():
    _check_supernode_failure(2.0)


def test_supernode_failing_while_fetching_hands_its_in_flight_piece_to_the_survivor():
    sim, s = simulate(_supernode_fails(0.02))
    survivor, dead = sim.supernodes
    fetched_by_seeds = sim.swarm.have[survivor.peer, :sim.task.n_pieces] | sim.swarm.have[dead.peer, :sim.task.n_pieces]
    assert fetched_by_seeds.all(), "a piece neither seed fetched: the in-flight one was dropped"
    _check_supernode_failure(0.02)


def test_supernode_failing_before_its_pieces_spread_keeps_origin_egress_low():
    sim, _ = simulate(_supernode_fails(0.12))
    dead = sim.supernodes[1]
    # the case: the dead seed had fetched its whole share (pieces 1, 3, 5, ...) before it failed
    assert sim.swarm.have[dead.peer, 1:sim.task.n_pieces:2].all()
    _check_supernode_failure(0.12)


def test_zero_supernodes_peers_go_back_to_source_and_finish():
    sim, s = simulate(scenario(n=50, size="50MB", supernodes=0))
    assert not sim.supernodes
    assert s["finished_hosts"] == s["hosts"] == 50
    assert sim.swarm.back_sourced, "nobody went back to the source"
    assert s["source_egress_bytes"] >= s["file_bytes"]
    assert s["source_egress_bytes"] < s["hosts"] * s["file_bytes"] / 2  # not everybody from the origin
    assert_conserved(sim)
    assert_finished_hold_everything(sim)
    assert_not_below_physics(sim, s)


class _Counting:
    """A rate controller wrapper that counts the simulator's questions."""

    def __init__(self, inner):
        self.inner, self.name, self.constant, self.calls = inner, inner.name, inner.constant, 0

    def limit(self, obs, now):
        self.calls += 1
        return self.inner.limit(obs, now)


def test_sampling_rate_controller_runs_every_interval():
    d = scenario(n=50, size="50MB")
    d["hosts"][0]["background"] = {"mean": "30Mbps", "peak": "80Mbps", "on_s": 5, "off_s": 20}
    sc = parse_scenario(d)
    rates = _Counting(load_rate_controller("heuristic:sampling", seed=1))
    assert rates.constant is False
    sim = Simulation(sc, load_piece_selector("heuristic:d2", seed=1), rates)
    s = sim.run()
    assert s["finished_hosts"] == 50
    assert rates.calls >= 50                                           # asked once a second per host
    assert_conserved(sim)
    assert_not_below_physics(sim, s)


# ------------------------------------------------------------------- the shipped 2-IDC scenario

def test_heterogeneous_2idc_runs_to_completion():
    sim, s = simulate(load_scenario(SCENARIOS / "heterogeneous-2idc.toml"))
    assert s["hosts"] == 200
    assert s["left_hosts"] > 0                                          # churn in sg
    assert s["finished_hosts"] == s["hosts"] - s["left_hosts"]
    assert all((h.done_at is not None) != h.left for h in sim.hosts)   # each host finished or left
    assert s["cross_idc_bytes"] > 0
    assert s["completion_s"]["max"] >= s["lower_bound_s"] * (1 - 1e-9)
    assert s["sim_s"] < 3600                                            # well inside run.max_sim_s
    assert_conserved(sim)
    assert_finished_hold_everything(sim)


# ------------------------------------------------------------- full scale (minutes; run in CI)

@pytest.mark.slow
@pytest.mark.parametrize("policy", ["heuristic:v1", "heuristic:d2"])
def test_fig8_5gb_1000_hosts_within_30_percent_of_the_lower_bound(policy):
    sim, s = simulate(load_scenario(SCENARIOS / "fig8-15g.toml"), policy)
    print(policy, json.dumps(s))                                        # the numbers, with pytest -s
    assert s["hosts"] == s["finished_hosts"] == 1000
    assert s["file_bytes"] == 5 * 10**9
    bound = max(5e9 / gbps(15), 5e9 / mbps(200), 1000 * 5e9 / (gbps(15) + 2 * gbps(10) + 1000 * mbps(100)))
    assert s["lower_bound_s"] == pytest.approx(bound, rel=1e-6, abs=1e-3)   # 296.3 s: N*F/U
    assert s["lower_bound_s"] * (1 - 1e-9) <= s["completion_s"]["max"] <= 1.3 * s["lower_bound_s"]
    assert s["source_egress_bytes"] <= 1.05 * s["file_bytes"]


# ------------------------------------------------------------------ per-piece network overhead

def test_piece_overhead_and_ramp_hold_each_piece_before_its_bytes_flow():
    """One host, one piece at a time: each of the file's pieces costs its bytes at the NIC's
    rate plus `piece_overhead_s` plus `ramp` bytes at the pair's rate (the calibration's model)."""
    d = scenario(n=1, size="8MiB", download="80Mbps", upload="80Mbps", source="1Gbps", supernode_upload="1Gbps")
    d["file"]["piece_size"] = "1MiB"
    d["scheduler"] = {"concurrent_pieces": 1}
    _, base = simulate(d)
    d["network"] = {"piece_overhead_s": 0.05, "ramp": "100KB"}
    sim, s = simulate(d)
    per_piece = 0.05 + 100e3 / mbps(80)
    assert math.isclose(s["completion_s"]["max"] - base["completion_s"]["max"], 8 * per_piece, rel_tol=0.02)
    assert_conserved(sim)
    assert_finished_hold_everything(sim)
    assert_not_below_physics(sim, s)


def test_piece_overhead_is_in_the_cost_the_scheduler_and_the_trace_see(tmp_path):
    import pyarrow.parquet as pq
    d = scenario(n=1, size="4MiB", download="80Mbps", upload="80Mbps", source="1Gbps", supernode_upload="1Gbps")
    d["file"]["piece_size"] = "1MiB"
    d["scheduler"] = {"concurrent_pieces": 1}
    d["network"] = {"piece_overhead_s": 0.2}
    simulate(d, trace_path=tmp_path / "t.parquet")
    rows = pq.read_table(tmp_path / "t.parquet").to_pandas()
    p2p = rows[rows["parent"] >= 0]
    assert len(p2p) == 4
    # as the live child measures it: from the assignment to the last byte
    assert np.allclose(p2p["duration_s"], 0.2 + 2**20 / mbps(80), rtol=1e-6)


def test_churn_during_the_piece_overhead_loses_no_byte_and_the_rest_finish(tmp_path):
    import pyarrow.parquet as pq
    d = scenario(n=100, size="50MB", download="1Gbps", upload="50Mbps", source="1Gbps", supernode_upload="1Gbps")
    d["hosts"][0]["churn"] = {"leave_fraction": 0.3}
    d["network"] = {"piece_overhead_s": 0.3, "ramp": "64KB"}
    sim, s = simulate(d, trace_path=tmp_path / "t.parquet")
    assert s["left_hosts"] > 0
    # nothing reaches or leaves a host after it left, even a piece assigned before
    rows = pq.read_table(tmp_path / "t.parquet").to_pandas()
    ok = rows[rows["outcome"] == "ok"]
    end = ok["time_s"] + ok["duration_s"]
    for h in (h for h in sim.hosts if h.left):
        mine = (ok["child"] == h.id) | (ok["parent"] == h.id)
        assert (end[mine] <= h.leave_at + 1e-9).all()
    assert s["finished_hosts"] == s["hosts"] - s["left_hosts"]
    assert all(not h.starting for h in sim.hosts)                    # no transfer stuck in start-up
    assert_conserved(sim)
    assert_finished_hold_everything(sim)


def test_a_run_makes_no_cyclic_garbage_per_piece():
    """`Simulation.run` turns the cyclic garbage collector off while the clock runs: sound only
    while the per-piece path (the end game's parts and aborts included) makes no reference
    cycles. A run's cyclic garbage (the simulation itself, once it is dropped) must not grow
    with the number of piece transfers: 8x the pieces here."""
    def cyclic_garbage(size: str) -> tuple[int, int]:
        data = scenario(n=40, size=size, supernode_upload="1Gbps")
        data["file"]["piece_size"] = "1MiB"
        data["scheduler"] = {"end_game": True}
        data["hosts"][0]["churn"] = {"leave_fraction": 0.1}        # aborted transfers too
        gc.collect()
        gc.disable()
        try:
            sim, out = simulate(data)
            pieces = sim.pieces_done
            del sim
            return gc.collect(), pieces
        finally:
            gc.enable()

    small, small_pieces = cyclic_garbage("8MB")
    big, big_pieces = cyclic_garbage("64MB")
    assert big_pieces > 7 * small_pieces
    assert big - small < 0.05 * (big_pieces - small_pieces), (small, big)
