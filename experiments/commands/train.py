"""`dfly train`: train a learned policy on traces, evaluate it against baselines, export it,
log the run to MLflow and optionally register it (issue 5; `models.learned.train`)."""
from __future__ import annotations

import argparse
import json
import sys

from experiments.commands.errors import UsageError

ML_HINT = "dfly train needs the ml extra: .venv/bin/pip install -c constraints.txt -e '.[ml]'"


def train_cmd(args: argparse.Namespace) -> int:
    from models.learned.data import DataError
    from models.learned.export import ModelFileError
    from models.learned.registry import RegistryError
    from models.learned.train import TrainConfig, TrainError, format_table, result_json, train

    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))  # noqa: E731
    if args.generate is not None:
        _generate(args, log)
    cfg = TrainConfig(kind=args.kind, data=args.data, epochs=args.epochs, hidden=args.hidden, lr=args.lr,
                      batch=args.batch, seed=args.seed, val_fraction=args.val_fraction, max_rows=args.max_rows,
                      quantile=args.quantile, margin=args.margin, out=args.out, register=args.register,
                      alias=args.alias, tracking_uri=args.tracking_uri, mlflow=not args.no_mlflow,
                      baselines=not args.no_baselines)
    try:
        result = train(cfg, log=log)
    except (DataError, TrainError, RegistryError, ModelFileError) as e:
        raise UsageError(str(e)) from None
    except ImportError as e:
        raise UsageError(f"{ML_HINT} ({e})") from None
    if args.json:
        print(result_json(result))
        return 0
    print(f"{result['kind']}: {result['rows']['train']} train / {result['rows']['val']} validation rows "
          f"from {result['scenarios']['train']} / {result['scenarios']['val']} scenarios "
          f"(split by scenario); dataset {result['dataset_digest']}")
    print(format_table(result["table"]))
    pe = result["policy_evaluation"]
    if pe:
        print("\nheld-out traffic: P2P throughput (fraction of the NIC) vs business impact (unserved demand)")
        print(format_table(pe["table"]))
        best = pe["best_static_no_more_impact"]
        ratio = pe["throughput_ratio"]
        print(f"learned vs best static limit with no more impact ({best['policy'] if best else 'none'}): "
              + (f"{ratio:.2f}x throughput" if ratio is not None else "no static limit is that gentle"))
    print(f"\nexported {result['out']} (git {result['git_commit'][:12]}, {result['train_s']} s)")
    if result["run_id"]:
        print(f"mlflow run {result['run_id']}" + (f", registered {args.register} version {result['version']}"
                                                  + (f" @{args.alias}" if args.alias else "")
                                                  if result["version"] else ""))
    return 0


def _generate(args: argparse.Namespace, log) -> None:
    from pathlib import Path

    if args.generate < 1:
        raise UsageError(f"--generate must be >= 1, got {args.generate}")
    if len(args.data) != 1 or (Path(args.data[0]).exists() and not Path(args.data[0]).is_dir()):
        raise UsageError("--generate writes into one directory: give exactly one --data DIR")
    from experiments import datagen

    if args.kind == "piece-selector":
        datagen.generate_pieces(args.data[0], scenarios=args.generate, seed=args.seed, log=log)
    else:
        datagen.generate_traffic(args.data[0], files=args.generate, seed=args.seed, log=log)


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a learned policy (piece-selector or rate-controller)",
                       description="Train a learned policy by gradient descent on traces, compare it with "
                                   "scikit-learn baselines on a by-scenario validation split, export the "
                                   ".npz, log to MLflow and optionally register it.")
    p.add_argument("kind", choices=("piece-selector", "rate-controller"))
    p.add_argument("--data", nargs="+", required=True, metavar="PATH",
                   help="trace Parquet files or directories of them (dfly sim run --trace for piece-selector; "
                        "python -m experiments.datagen traffic for rate-controller)")
    p.add_argument("--generate", type=int, default=None, metavar="N",
                   help="first generate N scenarios (or traffic files) into the one --data directory")
    p.add_argument("--register", metavar="NAME", help="register the model in MLflow under NAME")
    p.add_argument("--alias", metavar="ALIAS", help="point ALIAS (e.g. production) at the new version")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--hidden", type=int, default=32, help="hidden units of the one hidden layer (32)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.25, help="share of scenarios held out (0.25)")
    p.add_argument("--max-rows", type=int, default=2_000_000, help="subsample training rows above this")
    p.add_argument("--quantile", type=float, default=0.95, help="rate-controller: predicted quantile (0.95)")
    p.add_argument("--margin", type=float, default=0.05, help="rate-controller: safety margin, NIC fraction")
    p.add_argument("--out", metavar="FILE", help="exported model (default runs/models/KIND.npz)")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking/registry URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow (no --register)")
    p.add_argument("--no-baselines", action="store_true", help="skip the scikit-learn baselines")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_checked)


def _checked(args: argparse.Namespace) -> int:
    if args.no_mlflow and args.register:
        raise UsageError("--register needs MLflow; drop --no-mlflow")
    return train_cmd(args)


__all__ = ["add_parser", "json"]
