"""`dfly models`: list registered policy models and move their aliases (MLflow, no stages)."""
from __future__ import annotations

import argparse
import json

from experiments.commands.errors import UsageError


def models_list(args: argparse.Namespace) -> int:
    from models.learned import registry

    try:
        models = registry.list_models(args.tracking_uri)
    except registry.RegistryError as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps(models))
        return 0
    if not models:
        print(f"no registered models in {registry.tracking_uri(args.tracking_uri)}")
        return 0
    for m in models:
        aliases = ", ".join(f"@{a} -> {v}" for a, v in m["aliases"].items()) or "no aliases"
        print(f"{m['name']}  ({len(m['versions'])} versions; {aliases})")
        for v in m["versions"]:
            tag = (" @" + " @".join(v["aliases"])) if v["aliases"] else ""
            print(f"  version {v['version']:>3}  {v['kind'] or '-':15}  run {v['run_id'] or '-'}{tag}")
    return 0


def models_promote(args: argparse.Namespace) -> int:
    from models.learned import registry

    try:
        before = registry.promote(args.name, args.version, args.alias, args.tracking_uri)
    except registry.RegistryError as e:
        raise UsageError(str(e)) from None
    moved = f" (was version {before})" if before is not None else ""
    print(f"{args.name}@{args.alias} -> version {args.version}{moved}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list registered models, move aliases")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow registry URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    s = p.add_subparsers(dest="models_command", metavar="SUBCOMMAND", required=True)
    ls = s.add_parser("list", help="registered models, their versions and aliases")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=models_list)
    pr = s.add_parser("promote", help="point ALIAS of NAME at VERSION, e.g. promote piece-selector 3 production")
    pr.add_argument("name", metavar="NAME")
    pr.add_argument("version", metavar="VERSION")
    pr.add_argument("alias", metavar="ALIAS")
    pr.set_defaults(func=models_promote)
