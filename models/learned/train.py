"""Training: torch MLPs by gradient descent, scikit-learn baselines on the same split, export,
and MLflow tracking and registration. Needs the `ml` extra (torch, scikit-learn, mlflow).

Owns: `TrainConfig` and `train(cfg)`, which `dfly train` calls.

- `piece-selector`: predicts a candidate's transfer cost (log seconds per MiB) from its feature
  row; mean-squared error. Baselines: the training mean, LinearRegression, Ridge and
  HistGradientBoostingRegressor.
- `rate-controller`: predicts the `quantile` of the next interval's business traffic (fraction
  of the NIC) from the last `RATE_WINDOW` intervals; pinball loss. Baselines: the window's
  last value and empirical quantile, and a quantile HistGradientBoostingRegressor. Then the
  policy comparison on the held-out traces (`models.learned.traffic.compare`).

Rules kept here:
- Train and validation are split by scenario (trace file's scenario/seed), never by row.
- The exported model's numpy forward pass is checked against torch's before it is saved.
- MLflow: one run per training (params, metrics, the evaluation table, the dataset digest and
  manifest, the git commit); with `register`, a pyfunc model carrying the `.npz` with a
  signature is registered under that name and, with `alias`, the alias is set to it.
- Deterministic for one seed (torch and numpy seeded; torch on a fixed number of threads).
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from models.interfaces import FEATURE_SCHEMA_VERSION, FEATURES

from . import data as D
from .export import MLP, save_mlp
from .policies import PIECE_LOG1P, RATE_FEATURE_SCHEMA_VERSION, RATE_FEATURES, RATE_WINDOW
from .traffic import compare

KINDS = ("piece-selector", "rate-controller")


class TrainError(ValueError):
    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


@dataclass
class TrainConfig:
    kind: str
    data: list[str]
    epochs: int = 20
    hidden: int = 32
    lr: float = 3e-3
    batch: int = 1024
    seed: int = 0
    val_fraction: float = 0.25
    max_rows: int = 2_000_000
    quantile: float = 0.95
    margin: float = 0.05
    floor: float = 0.02
    out: str | None = None
    register: str | None = None
    alias: str | None = None
    tracking_uri: str | None = None
    mlflow: bool = True
    experiment: str | None = None
    baselines: bool = True
    extra: dict = field(default_factory=dict)


def git_commit() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ---- the network ---------------------------------------------------------------------------

def _fit_mlp(xtr: np.ndarray, ytr: np.ndarray, xva: np.ndarray, yva: np.ndarray, cfg: TrainConfig,
             loss_name: str, log) -> tuple[list[np.ndarray], list[np.ndarray], list[dict]]:
    import torch

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    f = xtr.shape[1]
    net = torch.nn.Sequential(torch.nn.Linear(f, cfg.hidden), torch.nn.ReLU(), torch.nn.Linear(cfg.hidden, 1))
    net = net.double()
    with torch.no_grad():           # start at the constant the loss prefers: fewer wasted epochs
        net[2].bias.fill_(float(np.quantile(ytr, cfg.quantile) if loss_name == "pinball" else ytr.mean()))
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs))
    q = cfg.quantile

    def loss_fn(pred, y):
        if loss_name == "pinball":
            d = y - pred
            return torch.mean(torch.maximum(q * d, (q - 1.0) * d))
        return torch.mean((pred - y) ** 2)

    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    xv, yv = torch.from_numpy(xva), torch.from_numpy(yva)
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    n = len(xt)
    batch = max(32, min(cfg.batch, n // 50))   # small data: smaller batches, at least ~50 steps an epoch
    for epoch in range(cfg.epochs):
        net.train()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss = loss_fn(net(xt[idx])[:, 0], yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        net.eval()
        with torch.no_grad():
            val = float(loss_fn(net(xv)[:, 0], yv)) if len(xv) else float("nan")
        history.append({"epoch": epoch + 1, "train_loss": total / max(n, 1), "val_loss": val})
        log(f"epoch {epoch + 1}/{cfg.epochs}: train {loss_name} {total / max(n, 1):.4f}, val {val:.4f}")
    layers = [m for m in net if isinstance(m, torch.nn.Linear)]
    weights = [m.weight.detach().numpy().T.copy() for m in layers]
    biases = [m.bias.detach().numpy().copy() for m in layers]
    with torch.no_grad():
        ref = net(torch.from_numpy(xva[:256]))[:, 0].numpy() if len(xva) else np.zeros(0)
    return weights, biases, history, ref


# ---- metrics --------------------------------------------------------------------------------

def _regression(y: np.ndarray, p: np.ndarray) -> dict:
    err = p - y
    ss = float(np.sum((y - y.mean()) ** 2))
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err))),
            "r2": 1.0 - float(np.sum(err ** 2)) / ss if ss > 0 else 0.0}


def _quantile(y: np.ndarray, p: np.ndarray, q: float) -> dict:
    d = y - p
    return {"pinball": float(np.mean(np.maximum(q * d, (q - 1.0) * d))),
            "coverage": float(np.mean(y <= p)), "mean_pred": float(np.mean(p))}


def _transform(x: np.ndarray, log_mask: np.ndarray) -> np.ndarray:
    z = x.copy()
    z[:, log_mask] = np.log1p(np.maximum(z[:, log_mask], 0.0))
    return z


# ---- the whole run --------------------------------------------------------------------------

def train(cfg: TrainConfig, log=print) -> dict:
    if cfg.kind not in KINDS:
        raise TrainError(f"unknown model kind {cfg.kind!r}; known: {', '.join(KINDS)}")
    for key, ok in (("epochs", cfg.epochs >= 1), ("hidden", cfg.hidden >= 1), ("batch", cfg.batch >= 1),
                    ("lr", cfg.lr > 0), ("quantile", 0 < cfg.quantile < 1),
                    ("margin", 0 <= cfg.margin < 1), ("max_rows", cfg.max_rows >= 100)):
        if not ok:
            raise TrainError(f"bad {key}: {getattr(cfg, key)!r}")
    if cfg.alias and not cfg.register:
        raise TrainError("--alias needs --register NAME")
    t0 = time.perf_counter()
    files = D.expand(cfg.data)
    dataset_digest = D.digest(files)
    if cfg.kind == "piece-selector":
        groups = D.read_piece_traces(files)
        names, version, loss_name = FEATURES, FEATURE_SCHEMA_VERSION, "mse"
        log_mask = np.array([n in PIECE_LOG1P for n in FEATURES])
    else:
        groups = D.read_traffic_traces(files)
        names, version, loss_name = RATE_FEATURES, RATE_FEATURE_SCHEMA_VERSION, "pinball"
        log_mask = np.zeros(len(RATE_FEATURES), dtype=bool)
    empty = [g.key for g in groups if len(g.y) == 0]
    groups = [g for g in groups if len(g.y) > 0]
    train_g, val_g = D.split_by_group(groups, cfg.val_fraction, cfg.seed)
    xtr, ytr = D.stack(train_g)
    xva, yva = D.stack(val_g)
    rng = np.random.default_rng(cfg.seed)
    if len(ytr) > cfg.max_rows:
        keep = np.sort(rng.choice(len(ytr), cfg.max_rows, replace=False))
        xtr, ytr = xtr[keep], ytr[keep]
    log(f"{len(files)} files, {len(groups)} scenarios ({len(train_g)} train / {len(val_g)} validation), "
        f"{len(ytr)} train rows, {len(yva)} validation rows; dataset {dataset_digest[:19]}")

    ztr, zva = _transform(xtr, log_mask), _transform(xva, log_mask)
    mean = ztr.mean(axis=0)
    std = ztr.std(axis=0)
    std = np.where(std > 1e-9, std, 1.0)
    ntr, nva = (ztr - mean) / std, (zva - mean) / std

    weights, biases, history, torch_ref = _fit_mlp(ntr, ytr, nva, yva, cfg, loss_name, log)
    meta = {"quantile": cfg.quantile, "margin": cfg.margin, "floor": cfg.floor} if cfg.kind == "rate-controller" \
        else {"target": "log seconds per MiB", "upload_slots": 200, "seed_upload_slots": 2000}
    mlp = MLP(cfg.kind, version, tuple(names), log_mask, mean, std, weights, biases, meta)
    np_ref = mlp.forward(xva[:256])
    if len(np_ref) and not np.allclose(np_ref, torch_ref, rtol=1e-6, atol=1e-6):
        raise TrainError("the exported numpy forward pass disagrees with torch's")

    # evaluation: the MLP and the baselines on the same split
    p_tr, p_va = mlp.forward(xtr), mlp.forward(xva)
    table: list[dict] = []
    if cfg.kind == "piece-selector":
        table.append({"model": "mlp", **{f"train_{k}": v for k, v in _regression(ytr, p_tr).items()},
                      **{f"val_{k}": v for k, v in _regression(yva, p_va).items()}})
        table.append({"model": "train-mean", **{f"val_{k}": v for k, v in
                                                _regression(yva, np.full(len(yva), ytr.mean())).items()}})
        if cfg.baselines:
            from sklearn.ensemble import HistGradientBoostingRegressor
            from sklearn.linear_model import LinearRegression, Ridge

            for label, model, xa, xb in (
                ("linear", LinearRegression(), ntr, nva),
                ("ridge", Ridge(alpha=1.0), ntr, nva),
                ("hist-gbt", HistGradientBoostingRegressor(max_iter=200, random_state=cfg.seed), ztr, zva),
            ):
                model.fit(xa, ytr)
                table.append({"model": label,
                              **{f"train_{k}": v for k, v in _regression(ytr, model.predict(xa)).items()},
                              **{f"val_{k}": v for k, v in _regression(yva, model.predict(xb)).items()}})
    else:
        q = cfg.quantile
        table.append({"model": "mlp", **{f"train_{k}": v for k, v in _quantile(ytr, p_tr, q).items()},
                      **{f"val_{k}": v for k, v in _quantile(yva, p_va, q).items()}})
        table.append({"model": "last-value", **{f"val_{k}": v for k, v in _quantile(yva, xva[:, -1], q).items()}})
        table.append({"model": "window-quantile",
                      **{f"val_{k}": v for k, v in _quantile(yva, np.quantile(xva, q, axis=1), q).items()}})
        if cfg.baselines:
            from sklearn.ensemble import HistGradientBoostingRegressor

            hgb = HistGradientBoostingRegressor(loss="quantile", quantile=q, max_iter=200, random_state=cfg.seed)
            hgb.fit(xtr, ytr)
            table.append({"model": "hist-gbt-quantile",
                          **{f"train_{k}": v for k, v in _quantile(ytr, hgb.predict(xtr), q).items()},
                          **{f"val_{k}": v for k, v in _quantile(yva, hgb.predict(xva), q).items()}})
    table = [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()} for row in table]
    policy_eval = None
    if cfg.kind == "rate-controller":
        series = [s for g in val_g for s in g.meta["series"]]
        policy_eval = compare(series, lambda w: mlp.forward(w), RATE_WINDOW, cfg.margin, cfg.floor)
        mlp.meta["evaluation"] = {"learned": policy_eval["learned"],
                                  "best_static_no_more_impact": policy_eval["best_static_no_more_impact"],
                                  "throughput_ratio": policy_eval["throughput_ratio"]}

    commit = git_commit()
    mlp.meta.update({"dataset_digest": dataset_digest, "git_commit": commit,
                     "train_scenarios": sorted(g.key for g in train_g),
                     "val_scenarios": sorted(g.key for g in val_g),
                     "val_metrics": {k: v for k, v in table[0].items() if k.startswith("val_")}})
    out = Path(cfg.out or f"runs/models/{cfg.kind}.npz")
    save_mlp(out, mlp)
    result = {"kind": cfg.kind, "out": str(out), "dataset_digest": dataset_digest, "git_commit": commit,
              "files": len(files), "scenarios": {"train": len(train_g), "val": len(val_g)},
              "dropped_empty_scenarios": empty,
              "rows": {"train": int(len(ytr)), "val": int(len(yva))}, "table": table,
              "history": history, "policy_evaluation": policy_eval, "run_id": None, "version": None,
              "train_s": None}
    if cfg.mlflow:
        _log_mlflow(cfg, result, mlp, out, files, xva, train_g, val_g, log)
    result["train_s"] = round(time.perf_counter() - t0, 2)
    return result


def _log_mlflow(cfg: TrainConfig, result: dict, mlp: MLP, out: Path, files, xva, train_g, val_g, log) -> None:
    from . import registry

    uri = registry.tracking_uri(cfg.tracking_uri)
    import logging
    import warnings

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow
        import pandas as pd
        from mlflow.models import infer_signature

        from .pyfunc import NpzPolicyModel
    registry._quiet()
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_experiment(cfg.experiment or f"dfly-train-{cfg.kind}")
    params = {k: v for k, v in asdict(cfg).items()
              if k not in ("data", "extra", "tracking_uri", "mlflow", "register", "alias", "experiment")}
    params.update({"data": ",".join(str(p) for p in cfg.data)[:500], "files": len(files),
                   "feature_schema_version": mlp.feature_schema_version, "n_features": mlp.n_features,
                   "train_rows": result["rows"]["train"], "val_rows": result["rows"]["val"]})
    with mlflow.start_run(run_name=f"{cfg.kind}-{time.strftime('%Y%m%d-%H%M%S')}") as run:
        mlflow.log_params(params)
        mlflow.set_tags({"dataset_digest": result["dataset_digest"], "git_commit": result["git_commit"],
                         "dfly.kind": cfg.kind, "mlflow.source.git.commit": result["git_commit"]})
        for row in result["table"]:
            mlflow.log_metrics({f"{row['model']}.{k}": v for k, v in row.items()
                                if k != "model" and isinstance(v, (int, float)) and np.isfinite(v)})
        for h in result["history"]:
            mlflow.log_metrics({"train_loss": h["train_loss"], "val_loss": h["val_loss"]}, step=h["epoch"])
        pe = result["policy_evaluation"]
        if pe:
            mlflow.log_table(data=pd.DataFrame(pe["table"]), artifact_file="policy_evaluation.json")
            if pe["throughput_ratio"] is not None:
                mlflow.log_metric("throughput_ratio_vs_best_static", pe["throughput_ratio"])
        mlflow.log_table(data=pd.DataFrame(result["table"]), artifact_file="evaluation.json")
        mlflow.log_dict({"digest": result["dataset_digest"],
                         "train": [{"scenario": g.key, "path": str(g.path), "rows": int(len(g.y))} for g in train_g],
                         "val": [{"scenario": g.key, "path": str(g.path), "rows": int(len(g.y))} for g in val_g]},
                        "dataset.json")
        example = pd.DataFrame(xva[:5], columns=list(mlp.feature_names))
        signature = infer_signature(example, mlp.forward(xva[:5]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info = mlflow.pyfunc.log_model(
                name="model", python_model=NpzPolicyModel(), artifacts={"npz": str(out)},
                signature=signature, input_example=example, registered_model_name=cfg.register,
                pip_requirements=[f"numpy=={np.__version__}", "dragonfly-lab"])
        result["run_id"] = run.info.run_id
    if cfg.register:
        version = str(info.registered_model_version)
        client = registry.client(uri)
        client.set_model_version_tag(cfg.register, version, "dfly.kind", cfg.kind)
        client.set_model_version_tag(cfg.register, version, "dataset_digest", result["dataset_digest"])
        if cfg.alias:
            client.set_registered_model_alias(cfg.register, cfg.alias, version)
        result["version"] = version
        log(f"registered {cfg.register} version {version}" + (f" as @{cfg.alias}" if cfg.alias else "")
            + f" in {uri}")


def format_table(rows: list[dict]) -> str:
    """A plain text table of the evaluation rows."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def result_json(result: dict) -> str:
    return json.dumps({k: v for k, v in result.items() if k != "history"}, default=float)
