"""`dfly`: the one command line over every body: simulator, live runtime, training, studies.

It sits in the top layer (`experiments`) because it reaches every package below it. Each
command lives in its own module under `experiments/commands/` (listed in `COMMANDS`, in help
order) with an `add_parser(subparsers)`; it parses its flags, turns bad input into a
`UsageError` (one line on stderr, exit code 2), and imports its body lazily so `dfly --help`
stays instant.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from experiments.commands.errors import UsageError

EXIT_USAGE = 2

# command modules, in the order `dfly --help` lists them
COMMANDS = (
    "experiments.commands.sim",
    "experiments.commands.runtime",
    "experiments.commands.sweep",
    "experiments.commands.demo",
    "experiments.commands.train",
    "experiments.commands.registry",
    "experiments.commands.config_service",
    "experiments.commands.preheat",
    "experiments.commands.testbed",
)

__all__ = ["main", "UsageError", "EXIT_USAGE"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dfly", description="P2P distribution research platform.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(name).add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"dfly: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("dfly: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        print(f"dfly: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
