"""`dfly sim run`: simulate one scenario and print its summary (DESIGN, "The command surface")."""
from __future__ import annotations

import argparse
import json

from experiments.commands.errors import UsageError
from experiments.commands.scenario_args import scenario_and_seed


def sim_run(args: argparse.Namespace) -> int:
    from models.loader import PolicyError, load_piece_selector, load_rate_controller

    scenario, seed = scenario_and_seed(args)
    try:
        selector = load_piece_selector(args.policy, seed=seed)
        rates = load_rate_controller(args.rate_policy, seed=seed)
    except PolicyError as e:
        raise UsageError(str(e)) from None

    from dfsim.sim import Simulation

    sim = Simulation(scenario, selector, rates, seed=seed, trace_path=args.trace, progress=not args.no_progress)
    summary = sim.run()
    if args.json:
        print(json.dumps(summary))
    else:
        _print_summary(summary, args.trace)
    return 0


def _print_summary(s: dict, trace: str | None) -> None:
    c = s["completion_s"]
    lines = [
        f"scenario        {s['scenario']}  ({s['mode']}, policy {s['policy']})",
        f"hosts           {s['finished_hosts']}/{s['hosts']} finished"
        + (f", {s['left_hosts']} left" if s.get("left_hosts") else ""),
        f"file            {s['file_bytes'] / 1e9:.3f} GB in pieces of {s['piece_bytes'] / 2**20:.2f} MiB",
        f"completion (s)  mean {c['mean']}  p50 {c['p50']}  p95 {c['p95']}  p99 {c['p99']}  max {c['max']}",
        f"bounds (s)      P2P lower bound {s['lower_bound_s']}  client-server {s['client_server_s']}",
        f"origin egress   {s['source_egress_bytes'] / 1e9:.3f} GB"
        f" ({s['source_egress_bytes'] / max(s['file_bytes'], 1):.2f} x the file)",
        f"cross-IDC       {s['cross_idc_bytes'] / 1e9:.3f} GB",
        f"cost            {s['events']} events in {s['wall_s']} s wall, peak RSS {s['peak_rss_bytes'] / 2**20:.0f} MiB",
    ]
    if trace:
        lines.append(f"trace           {trace}")
    print("\n".join(lines))


def add_parser(sub) -> None:
    sim = sub.add_parser("sim", help="run the simulator")
    sim_sub = sim.add_subparsers(dest="sim_command", metavar="SUBCOMMAND", required=True)
    run = sim_sub.add_parser("run", help="simulate one scenario and print its summary")
    run.add_argument("scenario", metavar="SCENARIO.toml")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a scenario key by dotted path, e.g. hosts.0.count=200 (repeatable)")
    run.add_argument("--policy", default="heuristic:d2", metavar="URI", help="piece selector (default heuristic:d2)")
    run.add_argument("--rate-policy", default="heuristic:static", metavar="URI",
                     help="rate controller (default heuristic:static)")
    run.add_argument("--seed", type=int, default=None, help="seed (default: the scenario's run.seed)")
    run.add_argument("--trace", metavar="OUT.parquet", default=None, help="write one row per piece transfer")
    run.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    run.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    run.set_defaults(func=sim_run)
