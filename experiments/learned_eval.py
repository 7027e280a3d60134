"""Issue 5's evaluation targets, measured on held-out scenarios and traffic traces.

    python -m experiments.learned_eval --out reports/learned [--model FILE.npz] [--rate-model FILE.npz]
                                       [--data DIR...] [--hetero 8] [--homog 4] [--workers 2] [--quick]

1. Piece selector. Without `--model`, training traces are generated from the heterogeneous
   multi-IDC family (`experiments.datagen.family_scenario`, training seeds >= TRAIN_SEED_BASE,
   hand-written policies with epsilon-random exploration) or read from `--data`, and a model is
   trained (`models.learned.train`, no MLflow). Then every held-out family member (seeds
   1..N, never used in training) is simulated with each hand-written policy and the learned
   one; the target is the learned p95 completion time against the best hand-written policy's:
   <= 0.85 x on `hetero` members, <= 1.02 x on `homog` ones.
2. Rate controller. Without `--rate-model`, business-traffic traces (`--traffic-style`, bursty
   heavy-tailed by default) are generated and a quantile model is trained on them; held-out
   traces (other seeds) compare it with static limits, Dragonfly 2's sampling shaper (a static
   host budget split among tasks: on one host's P2P against business traffic it is the static
   limit of its budget) and a reactive reading of it (NIC minus last interval's business
   traffic): P2P throughput against unserved business demand. Target: >= 1.3 x the P2P
   throughput of the best static limit with no more business impact.
3. Writes `OUT/README.md` (tables, the command, what met or missed), `OUT/pieces.png`,
   `OUT/rates.png` and `OUT/results.json`. Work files (traces, models) go to `--work`.

Rules kept here: held-out seeds are disjoint from training seeds by construction (training
seeds start at TRAIN_SEED_BASE; held-out are 1..N); the same arguments give the same tables.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from experiments.datagen import run_jobs

HANDWRITTEN = ("heuristic:d2", "heuristic:d2-load", "heuristic:v1", "heuristic:kraken",
               "heuristic:rarest-first")
LEARNED = "learned"
TARGETS = {"hetero": 0.85, "homog": 1.02}
RATE_TARGET = 1.3


# ---- piece selector ------------------------------------------------------------------------------

def run_point(job: dict) -> dict:
    """Simulate one (scenario, policy); the policy is a URI or {"file": path}."""
    from dfsim.scenario import parse_scenario
    from dfsim.sim import Simulation
    from models.loader import load_piece_selector, load_rate_controller

    raw = job["scenario"]
    uri, _, slots = job["policy"].partition("+slots")
    if slots:            # a control: the policy with the scenario fixing everyone's upload slots
        raw = dict(raw, scheduler=dict(raw.get("scheduler", {}), upload_slots=int(slots)))
    sc = parse_scenario(raw, name_hint=raw["name"])
    seed = sc.run.seed
    if uri.startswith(LEARNED):
        uri = f"file:{job['model']}"
    sel = load_piece_selector(uri, seed=seed)
    sim = Simulation(sc, sel, load_rate_controller("heuristic:static", seed=seed), seed=seed)
    s = sim.run()
    return {"scenario": sc.name, "kind": job["kind"], "seed": seed, "policy": job["policy"],
            "hosts": s["hosts"], "file_mb": s["file_bytes"] / 1e6, "p95_s": s["completion_s"]["p95"],
            "p50_s": s["completion_s"]["p50"], "max_s": s["completion_s"]["max"],
            "finished": s["finished_hosts"], "lower_bound_s": s["lower_bound_s"],
            "cross_idc_gb": s["cross_idc_bytes"] / 1e9, "wall_s": s["wall_s"]}


def heldout_scenarios(hetero: int, homog: int, hosts: tuple[int, int]) -> list[tuple[str, dict]]:
    from experiments.datagen import TRAIN_SEED_BASE, family_scenario

    out = []
    for kind, n in (("hetero", hetero), ("homog", homog)):
        for seed in range(1, n + 1):
            assert seed < TRAIN_SEED_BASE
            out.append((kind, family_scenario(kind, seed, hosts=hosts)))
    return out


def piece_eval(models: dict[str, str], scenarios: list[tuple[str, dict]], policies=HANDWRITTEN,
               workers: int = 1, log=print, reuse: list[dict] = ()) -> list[dict]:
    """Every scenario with every hand-written policy and every learned model (label -> npz).
    Rows in `reuse` (an earlier run's, same scenario name and policy label) are taken, not rerun."""
    done = {(r["scenario"], r["policy"]): r for r in reuse}
    jobs = []
    rows = []
    for kind, sc in scenarios:
        for p, model in [(p, None) for p in policies] + [(k, str(v)) for k, v in models.items()]:
            if (sc["name"], p) in done:
                rows.append(done[(sc["name"], p)])
            else:
                jobs.append({"scenario": sc, "kind": kind, "policy": p, "model": model})
    rows += run_jobs(run_point, jobs, workers, log,
                     lambda r: f"{r['scenario']} {r['policy']}: p95 {r['p95_s']} s ({r['wall_s']} s)")
    return rows


def _p95(r: dict) -> float:
    # a run where some staying host never finished counts as the simulated-time cap
    return float(r["p95_s"]) if r["p95_s"] is not None else float("inf")


def summarize_pieces(rows: list[dict], learned: str = LEARNED, policies=HANDWRITTEN) -> dict:
    """Per scenario: the best hand-written p95 and the learned one; per kind: geometric means."""
    by: dict[str, dict] = {}
    for r in rows:
        by.setdefault(r["scenario"], {"kind": r["kind"], "seed": r["seed"], "hosts": r["hosts"],
                                      "file_mb": r["file_mb"], "lower_bound_s": r["lower_bound_s"],
                                      "p95": {}})["p95"][r["policy"]] = _p95(r)
    table = []
    for name, d in by.items():
        hw = {p: v for p, v in d["p95"].items() if p in policies}
        best = min(hw, key=hw.get)
        row = {"scenario": name, "kind": d["kind"], "hosts": d["hosts"], "file_mb": d["file_mb"],
               "lower_bound_s": d["lower_bound_s"], "best_handwritten": best, "best_p95_s": hw[best],
               "p95": d["p95"]}
        if learned in d["p95"]:
            row["learned_p95_s"] = d["p95"][learned]
            row["ratio"] = d["p95"][learned] / hw[best]
        table.append(row)
    kinds = {}
    for kind in sorted({r["kind"] for r in table}):
        sub = [r for r in table if r["kind"] == kind]
        # the single best hand-written policy over the kind (lowest geometric-mean p95)
        gm = {p: _gmean([r["p95"][p] for r in sub]) for p in policies if all(p in r["p95"] for r in sub)}
        single = min(gm, key=gm.get)
        k = {"scenarios": len(sub), "best_single_policy": single,
             "gmean_p95": {p: round(v, 2) for p, v in gm.items()}}
        for label in sorted({p for r in sub for p in r["p95"] if p not in policies}):
            ratios = [r["p95"][label] / r["best_p95_s"] for r in sub]
            vs_single = [r["p95"][label] / r["p95"][single] for r in sub]
            k[label] = {"gmean_p95": round(_gmean([r["p95"][label] for r in sub]), 2),
                        "ratio_vs_best_per_scenario": round(_gmean(ratios), 4),
                        "ratio_vs_best_single_policy": round(_gmean(vs_single), 4),
                        "worst_ratio": round(max(ratios), 4), "best_ratio": round(min(ratios), 4),
                        "scenarios_meeting_target": int(sum(x <= TARGETS.get(kind, 1.0) for x in ratios)),
                        "target": TARGETS.get(kind)}
            k[label]["met"] = k[label]["ratio_vs_best_per_scenario"] <= TARGETS.get(kind, 1.0)
        kinds[kind] = k
    return {"table": table, "kinds": kinds}


def _gmean(v) -> float:
    v = [x for x in v]
    if any(not math.isfinite(x) for x in v):
        return float("inf")
    return float(np.exp(np.mean(np.log(v))))


def finetune(model_path: str, out_path: str, grid: dict[str, list[float]], hetero: int, homog: int,
             hosts: tuple[int, int], workers: int, work: Path, log=print) -> dict:
    """Grid search of linear cost terms (`models.learned.finetune`) on training-seed episodes
    (seed block 2 of the family: TRAIN_SEED_BASE + 20,000 on), scored by geometric-mean p95."""
    import shutil

    from experiments.datagen import TRAIN_SEED_BASE, family_scenario
    from models.learned.export import load_mlp
    from models.learned.finetune import grid_search

    base = TRAIN_SEED_BASE + 20_000
    episodes = [(k, family_scenario(k, base + i, hosts=hosts)) for k, n in (("hetero", hetero), ("homog", homog))
                for i in range(n)]

    def evaluate(path: str) -> float:
        rows = piece_eval({LEARNED: path}, episodes, (), workers, log=lambda m: None)
        return _gmean([_p95(r) for r in rows])

    res = grid_search(load_mlp(model_path), grid, evaluate, work / "finetune", log=log)
    shutil.copyfile(res["path"], out_path)
    res["episodes"] = [sc["name"] for _, sc in episodes]
    res["out"] = out_path
    return res


# ---- rate controller -------------------------------------------------------------------------------

def rate_eval(model_path: str, heldout_files: list[Path], margins=(0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3),
              default_margin: float | None = None) -> dict:
    """Learned (over a sweep of margins) vs static limits, sampling, reactive on held-out traces."""
    from models.learned import data as D
    from models.learned.export import load_mlp
    from models.learned.policies import RATE_WINDOW
    from models.learned.traffic import evaluate, model_limits, reactive_limits

    mlp = load_mlp(model_path)
    groups = D.read_traffic_traces(heldout_files)
    series = [s for g in groups for s in g.meta["series"]]
    floor = float(mlp.meta.get("floor", 0.02))
    margin0 = float(mlp.meta.get("margin", 0.05) if default_margin is None else default_margin)
    pred = {}
    for cap, f in series:            # predictions do not depend on the margin: once per host
        pred[id(f)] = model_limits(lambda w: mlp.forward(w), f, RATE_WINDOW, 0.0, -1.0)  # = 1 - q
    learned = []
    for m in sorted(set(margins) | {margin0}):
        lims = [np.clip(pred[id(f)] - m, floor, 1.0) for _, f in series]
        o = evaluate(f"learned-m{m:g}", series, lims)
        learned.append(dict(o.row(), margin=m))
    statics = [dict(evaluate(f"static-{s:.0%}", series, [np.full(len(f), s) for _, f in series]).row(), limit=s)
               for s in np.round(np.arange(0.05, 1.0001, 0.05), 2)]
    reactive = [dict(evaluate(f"reactive-m{m:g}", series, [reactive_limits(f, m) for _, f in series]).row(),
                     margin=m) for m in (0.0, 0.05, 0.1, 0.2, 0.3)]
    sampling = dict(evaluate("d2-sampling (budget = NIC)", series, [np.ones(len(f)) for _, f in series]).row())

    def best_static(impact: float):
        ok = [s for s in statics if s["business_impact"] <= impact + 1e-12]
        return max(ok, key=lambda s: s["p2p_throughput"]) if ok else None

    for row in learned + reactive:
        b = best_static(row["business_impact"])
        row["best_static"] = b["policy"] if b else None
        row["ratio_vs_best_static"] = round(row["p2p_throughput"] / b["p2p_throughput"], 4) \
            if b and b["p2p_throughput"] > 0 else None
    default = next(r for r in learned if r["margin"] == margin0)
    return {"hosts": len(series), "intervals": int(sum(len(f) for _, f in series)), "model": str(model_path),
            "quantile": mlp.meta.get("quantile"), "default_margin": margin0, "learned": learned,
            "static": statics, "reactive": reactive, "sampling": sampling, "default": default,
            "met": bool(default["ratio_vs_best_static"] is not None and default["ratio_vs_best_static"] >= RATE_TARGET)}


# ---- the report ---------------------------------------------------------------------------------------

def render(out: Path, results: dict) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=_jsonable) + "\n")
    lines = ["# Learned policies: issue 5's evaluation targets on held-out data", "",
             f"Generated by `{results['command']}` (git `{results['git_commit']}`, {results['created']}, "
             f"{results['wall_s']} s).", ""]
    pe = results.get("pieces")
    if pe:
        s = pe["summary"]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 1]})
        ax = axes[0]
        table = s["table"]
        labels = [r["scenario"] for r in table]
        xs = np.arange(len(table))
        pols = list(HANDWRITTEN) + [m for m in pe["models"]]
        width = 0.8 / len(pols)
        for i, p in enumerate(pols):
            vals = [r["p95"].get(p, np.nan) / r["best_p95_s"] for r in table]
            ax.bar(xs + (i - len(pols) / 2 + 0.5) * width, vals, width, label=p.replace("heuristic:", ""))
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(TARGETS["hetero"], color="tab:red", ls="--", lw=0.8, label="hetero target 0.85")
        ax.axhline(TARGETS["homog"], color="tab:green", ls=":", lw=0.8, label="homog target 1.02")
        ax.set_xticks(xs, labels, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("p95 completion / best hand-written p95")
        ax.set_yscale("log")
        ax.legend(fontsize=6, ncol=3)
        ax.set_title("held-out family members (lower is better)")
        ax = axes[1]
        for kind, k in s["kinds"].items():
            for j, m in enumerate(pe["models"]):
                if m in k:
                    ax.bar(f"{kind}\n{m}", k[m]["ratio_vs_best_per_scenario"], color="tab:blue" if kind == "hetero" else "tab:gray")
            ax.axhline(TARGETS[kind], color="tab:red" if kind == "hetero" else "tab:green", ls="--", lw=0.8)
        ax.set_ylabel("geometric mean ratio")
        ax.tick_params(axis="x", labelsize=6)
        fig.tight_layout()
        fig.savefig(out / "pieces.png", dpi=110)
        plt.close(fig)
        lines += ["## Piece selector: p95 completion on held-out family members", "",
                  f"Training: {pe['training']}", "",
                  "![p95 ratios](pieces.png)", "",
                  "| kind | model | geo-mean p95 / best hand-written (per scenario) | / best single policy | "
                  "worst | best | scenarios meeting | target | met |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for kind, k in s["kinds"].items():
            for m in pe["models"]:
                if m in k:
                    v = k[m]
                    lines.append(f"| {kind} ({k['scenarios']}) | {m} | {v['ratio_vs_best_per_scenario']:.3f} | "
                                 f"{v['ratio_vs_best_single_policy']:.3f} ({k['best_single_policy']}) | "
                                 f"{v['worst_ratio']:.3f} | {v['best_ratio']:.3f} | "
                                 f"{v['scenarios_meeting_target']}/{k['scenarios']} | <= {v['target']} | "
                                 f"{'yes' if v['met'] else 'no'} |")
        lines += ["", "Per scenario, p95 completion (s); bold = best hand-written:", "",
                  "| scenario | hosts | MB | bound s | " + " | ".join(p.replace("heuristic:", "") for p in pols) + " |",
                  "| --- | --- | --- | --- | " + " | ".join("---" for _ in pols) + " |"]
        for r in table:
            cells = []
            for p in pols:
                v = r["p95"].get(p)
                c = "-" if v is None else f"{v:.1f}"
                cells.append(f"**{c}**" if p == r["best_handwritten"] else c)
            lines.append(f"| {r['scenario']} | {r['hosts']} | {r['file_mb']:.0f} | {r['lower_bound_s']:.1f} | "
                         + " | ".join(cells) + " |")
        lines.append("")
    re_ = results.get("rates")
    if re_:
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, style, lab in (("static", "o-", "static limits"), ("reactive", "s--", "reactive (NIC - last use - m)"),
                                ("learned", "^-", f"learned q{re_['quantile']} (margin sweep)")):
            pts = sorted(re_[key], key=lambda r: r["business_impact"])
            ax.plot([max(p["business_impact"], 1e-5) for p in pts], [p["p2p_throughput"] for p in pts], style,
                    label=lab, ms=4)
        d = re_["default"]
        ax.plot([max(d["business_impact"], 1e-5)], [d["p2p_throughput"]], "r*", ms=12, label="learned, default margin")
        sp = re_["sampling"]
        ax.plot([max(sp["business_impact"], 1e-5)], [sp["p2p_throughput"]], "kx", ms=8, label="d2 sampling (budget = NIC)")
        ax.set_xscale("log")
        ax.set_xlabel("business impact (unserved business demand / demand)")
        ax.set_ylabel("P2P throughput (fraction of NIC)")
        ax.legend(fontsize=7)
        ax.set_title("held-out traffic traces")
        fig.tight_layout()
        fig.savefig(out / "rates.png", dpi=110)
        plt.close(fig)
        lines += ["## Rate controller: P2P throughput vs business impact on held-out traffic", "",
                  f"Training: {re_['training']}", "",
                  f"Held-out: {re_['hosts']} hosts, {re_['intervals']} host-intervals ({re_['heldout']}).", "",
                  "![throughput vs impact](rates.png)", "",
                  "| policy | P2P throughput (NIC fraction) | business impact | best static with no more impact | ratio |",
                  "| --- | --- | --- | --- | --- |"]
        for r in re_["learned"] + re_["reactive"]:
            ratio = "-" if r["ratio_vs_best_static"] is None else f"{r['ratio_vs_best_static']:.2f}"
            star = " (default)" if r is re_["default"] or r == re_["default"] else ""
            lines.append(f"| {r['policy']}{star} | {r['p2p_throughput']:.4f} | {r['business_impact']:.5f} | "
                         f"{r['best_static'] or 'none'} | {ratio} |")
        lines.append(f"| {sp['policy']} | {sp['p2p_throughput']:.4f} | {sp['business_impact']:.5f} | - | - |")
        lines += ["", "Static limits: " + ", ".join(f"{s['policy']} {s['p2p_throughput']:.3f}/{s['business_impact']:.4f}"
                                                   for s in re_["static"]), ""]
    if results.get("notes"):
        lines += ["## Notes", "", *results["notes"], ""]
    path = out / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    return str(v)


# ---- the command ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.learned_eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="reports/learned")
    p.add_argument("--work", default="runs/learned-eval", help="traces and trained models go here")
    p.add_argument("--model", action="append", default=[], metavar="[LABEL=]FILE.npz",
                   help="evaluate this piece-selector file (repeatable; default: train one)")
    p.add_argument("--data", nargs="+", help="piece traces to train on (default: generate from the family)")
    p.add_argument("--train-hetero", type=int, default=30)
    p.add_argument("--train-homog", type=int, default=8)
    p.add_argument("--epsilon", type=float, default=0.3)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--hetero", type=int, default=8, help="held-out hetero members (seeds 1..N)")
    p.add_argument("--homog", type=int, default=4, help="held-out homog members (seeds 1..N)")
    p.add_argument("--hosts", default="100,240", help="host count range of family members")
    p.add_argument("--policies", default=",".join(HANDWRITTEN))
    p.add_argument("--finetune", action="store_true",
                   help="also fine-tune the first model on completion time (grid over linear cost terms on "
                        "training-seed episodes) and evaluate it as learned-ft")
    p.add_argument("--finetune-grid", default='{"piece_holders": [0, 0.5, 1.0], "same_idc": [0, -0.5]}',
                   help="JSON: feature -> candidate coefficients added to the predicted log cost")
    p.add_argument("--finetune-episodes", default="4,1", help="hetero,homog training episodes per trial")
    p.add_argument("--rate-model", help="evaluate this rate-controller file (default: train one)")
    p.add_argument("--traffic-style", choices=("onoff", "bursty"), default="bursty")
    p.add_argument("--traffic-files", type=int, default=8)
    p.add_argument("--traffic-heldout", type=int, default=4)
    p.add_argument("--traffic-hosts", type=int, default=20)
    p.add_argument("--traffic-intervals", type=int, default=1800)
    p.add_argument("--reuse", metavar="RESULTS.json",
                   help="take the piece runs of an earlier report's results.json (same scenario and policy "
                        "label) instead of rerunning them")
    p.add_argument("--skip-pieces", action="store_true")
    p.add_argument("--skip-rates", action="store_true")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--note", action="append", default=[], help="a line for the report's notes")
    p.add_argument("--quick", action="store_true", help="a tiny family and traffic set (tests)")
    a = p.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    from experiments import datagen
    from models.learned.train import TrainConfig, git_commit, train

    hosts = tuple(int(x) for x in a.hosts.split(","))
    if a.quick:
        hosts = (12, 20)
    work = Path(a.work)
    t0 = time.perf_counter()
    results: dict = {"command": "python -m experiments.learned_eval " + " ".join(argv if argv is not None else sys.argv[1:]),
                     "git_commit": git_commit(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "notes": a.note}
    if not a.skip_pieces:
        models: dict[str, str] = {}
        training = []
        for spec in a.model:
            label, _, path = spec.rpartition("=")
            models[label or (LEARNED if not models else f"{LEARNED}-{len(models)}")] = path
            training.append(f"`{path}` (given)")
        if not models:
            data = a.data
            if not data:
                d = work / "pieces"
                datagen.generate_family(d, a.train_hetero if not a.quick else 3, a.train_homog if not a.quick else 1,
                                        seed=0, epsilon=a.epsilon, workers=a.workers, hosts=hosts, log=log)
                data = [str(d)]
            res = train(TrainConfig(kind="piece-selector", data=data, epochs=a.epochs if not a.quick else 2,
                                    hidden=a.hidden, out=str(work / "piece-selector.npz"), mlflow=False,
                                    baselines=not a.quick, val_fraction=0.25), log=log)
            models[LEARNED] = res["out"]
            training.append(f"{res['scenarios']['train']} train / {res['scenarios']['val']} validation scenarios, "
                            f"{res['rows']['train']} rows, val r2 {res['table'][0].get('val_r2')}, data {', '.join(data)}")
        if a.finetune:
            eh, eo = (int(x) for x in a.finetune_episodes.split(","))
            ft = finetune(next(iter(models.values())), str(work / "piece-selector-ft.npz"),
                          json.loads(a.finetune_grid), eh if not a.quick else 1, eo if not a.quick else 0,
                          hosts, a.workers, work, log)
            models[f"{LEARNED}-ft"] = ft["out"]
            training.append(f"learned-ft: {next(iter(models))} + linear cost terms {json.dumps(ft['best'])} "
                            f"chosen by geo-mean p95 over {len(ft['episodes'])} training-seed episodes "
                            f"({', '.join(ft['episodes'])}); trials: "
                            + "; ".join(f"{json.dumps(t['coefs'])} -> {t['score']:.1f} s" for t in ft["trials"]))
        scen = heldout_scenarios(a.hetero if not a.quick else 1, a.homog if not a.quick else 1, hosts)
        pols = tuple(x for x in a.policies.split(",") if x)
        reuse = json.loads(Path(a.reuse).read_text())["pieces"]["rows"] if a.reuse else []
        rows = piece_eval(models, scen, pols, a.workers, log, reuse)
        results["pieces"] = {"models": list(models), "model_files": models, "training": "; ".join(training),
                             "rows": rows, "summary": summarize_pieces(rows, policies=pols)}
        for kind, k in results["pieces"]["summary"]["kinds"].items():
            for m in models:
                if m in k:
                    log(f"{kind} {m}: {k[m]}")
    if not a.skip_rates:
        n_files, hosts_t, intervals = (a.traffic_files, a.traffic_hosts, a.traffic_intervals) if not a.quick \
            else (2, 3, 200)
        held = work / f"traffic-heldout-{a.traffic_style}"
        datagen.generate_traffic(held, files=a.traffic_heldout if not a.quick else 1, hosts=hosts_t,
                                 intervals=intervals, seed=1, log=log, style=a.traffic_style)
        if a.rate_model:
            rate_model, training = a.rate_model, f"`{a.rate_model}` (given)"
        else:
            tdir = work / f"traffic-train-{a.traffic_style}"
            datagen.generate_traffic(tdir, files=n_files, hosts=hosts_t, intervals=intervals, seed=0, log=log,
                                     style=a.traffic_style)
            res = train(TrainConfig(kind="rate-controller", data=[str(tdir)], epochs=a.epochs if not a.quick else 2,
                                    hidden=a.hidden, out=str(work / "rate-controller.npz"), mlflow=False,
                                    baselines=False), log=log)
            rate_model = res["out"]
            training = (f"{n_files} {a.traffic_style} traces (seed block 0), {res['rows']['train']} windows; "
                        f"quantile 0.95, pinball loss")
        held_files = sorted(held.glob("*.parquet"))
        r = rate_eval(rate_model, held_files)
        r["training"] = training
        r["heldout"] = f"{a.traffic_style} traces, seed block 1"
        results["rates"] = r
        log(f"rate controller default: {r['default']}")
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    path = render(Path(a.out), results)
    print(json.dumps({"report": str(path), "wall_s": results["wall_s"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
