"""The scenario a command was given (`SCENARIO.toml`, `--set`, `--seed`), as `dfly sim run` and
`dfly testbed` both read it: bad input is a `UsageError` naming the key."""
from __future__ import annotations

import argparse

from experiments.commands.errors import UsageError


def scenario_and_seed(args: argparse.Namespace):
    """(scenario, seed): `--seed`, else the scenario's `run.seed`."""
    from dfsim.scenario import ScenarioError, load_scenario

    try:
        scenario = load_scenario(args.scenario, args.set)
    except ScenarioError as e:
        raise UsageError(str(e)) from None
    return scenario, scenario.run.seed if args.seed is None else args.seed
