"""`dfly demo`: simulate, generate traces, train, register, deploy live, verify, report."""
from __future__ import annotations

import argparse


def demo(args: argparse.Namespace) -> int:
    from experiments.demo import main
    return main(quick=args.quick)


def add_parser(sub) -> None:
    d = sub.add_parser("demo", help="the whole platform in one command (a few minutes)")
    d.add_argument("--quick", action="store_true", help="smaller training data and fewer epochs")
    d.set_defaults(func=demo)
