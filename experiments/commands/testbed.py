"""`dfly testbed`: run a scenario on live nodes in shaped network namespaces (issue 7).

    dfly testbed SCENARIO.toml [--set KEY=VALUE]... [--policy URI] [--seed N] [--json]
                 [--compare] [--figure PATH] [--timeout SECONDS] [--keep]

Bad input (scenario, policy, too many hosts, a machine without root or `ip netns`) is one line
and exit code 2; a run whose hosts fail still prints its summary (they are listed in
`failed_hosts`) and exits 1.
"""
from __future__ import annotations

import argparse
import json
import os

from experiments.commands.errors import UsageError
from experiments.commands.scenario_args import scenario_and_seed


def testbed(args: argparse.Namespace) -> int:
    from experiments.testbed import netns
    from experiments.testbed.plan import PlanError, make_plan
    from models.loader import PolicyError, load_piece_selector

    scenario, seed = scenario_and_seed(args)
    try:
        load_piece_selector(args.policy, seed=seed)
    except PolicyError as e:
        raise UsageError(str(e)) from None
    try:
        plan = make_plan(scenario, seed)
    except PlanError as e:
        raise UsageError(str(e)) from None
    if args.figure and not args.compare:
        raise UsageError("--figure needs --compare")
    reason = netns.available()
    if reason:
        raise UsageError(f"cannot build a testbed here: {reason}")
    from experiments.testbed.runner import Testbed, log

    for note in plan.notes:
        log(f"note: {note}")
    sim = sim_times = None
    if args.compare:
        from experiments.testbed.calibration import for_testbed
        from experiments.testbed.compare import simulate
        simulated = for_testbed(scenario)
        net = simulated.network
        log(f"simulating first (network profile {net.profile}: per piece {net.piece_overhead_s} s + "
            f"{net.ramp_bytes} B at the pair's rate)")
        sim, sim_times = simulate(simulated, args.policy, seed)
        sim["network"] = {"profile": net.profile, "piece_overhead_s": net.piece_overhead_s,
                          "ramp_bytes": net.ramp_bytes}
    live = Testbed(plan, policy=args.policy, timeout_s=args.timeout, keep_outputs=args.keep,
                   node_log_level=args.log_level).run()
    if args.compare:
        from experiments.testbed.compare import errors, figure
        result = {"sim": sim, "live": live, "error": errors(sim, live)}
        if args.figure:
            busy = live["cpu"]["machine_busy"]
            figure(args.figure, sim_times, live["completion_times_s"],
                   f"{scenario.name}: {len(plan.hosts)} hosts, {scenario.file.size / 1e6:.0f} MB, {args.policy}",
                   f"testbed on one machine, {os.cpu_count()} cores shared with other work "
                   f"(machine {busy * 100:.0f}% busy during the run)")
            log(f"figure written to {args.figure}")
    else:
        result = live
    if args.json:
        print(json.dumps(result))
    else:
        _print(result)
    return 1 if live["failed_hosts"] else 0


def _print(result: dict) -> None:
    runs = [("live", result)] if "live" not in result else [("sim", result["sim"]), ("live", result["live"])]
    for label, s in runs:
        c = s["completion_s"]
        print(f"{label:5} {s['scenario']} ({s['mode']}, {s['policy']}): {s['finished_hosts']}/{s['hosts']} finished"
              f"{', %d left' % s['left_hosts'] if s.get('left_hosts') else ''}; completion p50 {c['p50']} p95 {c['p95']}"
              f" max {c['max']} s; origin {s['source_egress_bytes'] / max(s['file_bytes'], 1):.2f} x the file;"
              f" bounds {s['lower_bound_s']} / {s['client_server_s']} s")
    if "error" in result:
        print("error (sim/live - 1): " + ", ".join(f"{k} {v:+.1%}" if v is not None else f"{k} -"
                                                   for k, v in result["error"].items()))
    live = result.get("live", result)
    for f in live["failed_hosts"]:
        print(f"failed: h{f['host']}: {f['error']}")
    cpu = live["cpu"]
    print(f"cpu: daemons {cpu['daemons_s']} s over {cpu['run_s']} s ({cpu['daemons_share_of_machine']:.0%} of "
          f"{cpu['cores']} cores), supernodes {cpu['supernodes_s']} s, machine busy {cpu['machine_busy']:.0%}")


def add_parser(sub) -> None:
    p = sub.add_parser("testbed", help="run a scenario on live nodes in shaped network namespaces (root)")
    p.add_argument("scenario", metavar="SCENARIO.toml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario key by dotted path, e.g. hosts.0.count=40 (repeatable)")
    p.add_argument("--policy", default="heuristic:d2", metavar="URI", help="piece selector (default heuristic:d2)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: the scenario's run.seed)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--compare", action="store_true", help="also simulate, and report sim/live - 1")
    p.add_argument("--figure", default=None, metavar="PATH", help="with --compare: write both completion CDFs here")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="give up on hosts not done by then (default 60 s + 4 x the expected time)")
    p.add_argument("--keep", action="store_true", help="keep the run folder (logs, outputs) in the temp dir")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                   help="the nodes' log level (logs are in the run folder; see --keep)")
    p.set_defaults(func=testbed)
