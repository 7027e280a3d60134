"""What a piece costs on the testbed beyond its bytes, measured there, for the simulator.

    python -m experiments.testbed.calibration [--out reports/testbed/calibration.json]

Owns the measurement behind the simulator's `testbed` network profile
(`dfsim.scenario.NETWORK_PROFILES`), which `dfly testbed --compare` simulates with (issue 7,
item 4). Root needed, about 3 minutes; copy its fit into the profile when the testbed changes.

Rules kept here:
- Measured on the gap suite's scenarios (`gap.CASES`) with `heuristic:d2`: the live supernode
  logs, at debug level, every piece reported done with how long its parent's slot was held
  (assignment to report), both ends' nominal rates and how many transfers each end had.
- Only pieces that had their pair to themselves count: the parent uploaded that piece alone
  and the child fetched it alone, at assignment and at report. Their rate is the pair's
  nominal min(child download, parent upload), so what the slot was held beyond bytes / rate
  is overhead, not sharing.
- The model is the simulator's (`dfsim.scenario.NetworkSpec`): overhead = piece_overhead_s +
  ramp_bytes / rate, fitted by least squares over those pieces. The per-piece part is the
  round trips (assignment reply, request to the parent, report); the part that shrinks with
  the rate is TCP's start on a link whose tbf queue holds 50 ms (a new or idle connection
  starts slow; at 10-30 Mbit/s the round trip under load is tens of milliseconds).
- It describes the testbed, not a scenario: every testbed scenario without its own
  `[network]` table is simulated with it. The simulator's default profile stays `datacenter`
  (zero): there a round trip is well under a millisecond and TCP's start is over in a few.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from dfsim.scenario import NETWORK_PROFILES, Scenario

TESTBED_NETWORK = NETWORK_PROFILES["testbed"]


def for_testbed(sc: Scenario) -> Scenario:
    """`sc` as the testbed carries it: its own `[network]` if it has one, and without the
    end game (`scheduler.end_game`), which live daemons do not run."""
    if sc.scheduler.end_game:
        sc = replace(sc, scheduler=replace(sc.scheduler, end_game=False))
    return sc if "network" in sc.raw else replace(sc, network=TESTBED_NETWORK)


def pieces_from_log(path: Path) -> list[dict]:
    """The "piece held" records of a supernode's log (JSON lines)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if '"piece held"' in line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def alone(records: list[dict]) -> list[dict]:
    """Pieces that had their pair to themselves from assignment to report."""
    return [r for r in records if r["parent_uploads"] == [1, 1] and r["child_inflight"] == [1, 1]]


def fit(records: list[dict]) -> dict:
    """Least squares of overhead = a + b / rate over `records`; b is bytes, a seconds."""
    import numpy as np

    rate = np.array([min(r["child_down_bps"], r["parent_up_bps"]) for r in records], dtype=float)
    nbytes = np.array([r["bytes"] for r in records], dtype=float)
    over = np.array([r["held_s"] for r in records]) - nbytes / rate
    a, b = np.linalg.lstsq(np.column_stack([np.ones_like(rate), 1.0 / rate]), over, rcond=None)[0]
    groups = {}
    for mbit in sorted(set((rate * 8 / 1e6).round(1))):
        m = np.isclose(rate * 8 / 1e6, mbit, atol=0.05)
        groups[f"{mbit:g}Mbit/s"] = {"pieces": int(m.sum()), "overhead_mean_s": round(float(over[m].mean()), 4),
                                     "overhead_p50_s": round(float(np.median(over[m])), 4),
                                     "fitted_s": round(float(a + b / rate[m][0]), 4)}
    return {"piece_overhead_s": round(float(a), 4), "ramp_bytes": int(round(b)), "pieces": len(records),
            "by_rate": groups}


def measure(policy: str = "heuristic:d2") -> dict:
    from experiments.testbed import netns
    from experiments.testbed.gap import CASES
    from experiments.testbed.plan import make_plan
    from experiments.testbed.runner import Testbed, log
    from dfsim.scenario import load_scenario

    reason = netns.available()
    if reason:
        raise SystemExit(f"calibration: cannot build a testbed here: {reason}")
    records, cases = [], []
    for name, scenario, sets in CASES:
        sc = load_scenario(scenario, sets)
        log(f"calibration: {name}")
        bed = Testbed(make_plan(sc, sc.run.seed), policy=policy, keep_outputs=True, supernode_log_level="debug")
        try:
            live = bed.run()
            got = [r for s in bed.supernodes for r in pieces_from_log(s.log_path)]
        finally:
            shutil.rmtree(bed.dir, ignore_errors=True)
        use = alone(got)
        records += use
        cases.append({"case": name, "pieces": len(got), "alone": len(use),
                      "live_p50_s": live["completion_s"]["p50"]})
    if len(records) < 10:
        raise SystemExit(f"calibration: only {len(records)} pieces had their pair to themselves; too few to fit")
    return {"fit": fit(records), "cases": cases, "policy": policy}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.testbed.calibration", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, metavar="PATH", help="also write the measurement as JSON here")
    ap.add_argument("--policy", default="heuristic:d2", metavar="URI")
    args = ap.parse_args(argv)
    result = measure(args.policy)
    f = result["fit"]
    result["current"] = {"piece_overhead_s": TESTBED_NETWORK.piece_overhead_s, "ramp_bytes": TESTBED_NETWORK.ramp_bytes}
    print(json.dumps(result, indent=1))
    print(f"fit over {f['pieces']} pieces: piece_overhead_s = {f['piece_overhead_s']}, ramp_bytes = {f['ramp_bytes']} "
          f"(the simulator's testbed profile has {TESTBED_NETWORK.piece_overhead_s}, {TESTBED_NETWORK.ramp_bytes})", file=sys.stderr)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
