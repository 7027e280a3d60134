"""Reports: a sweep's results table rendered as figures and a markdown page.

`render(results_dir, out_dir)` reads `results.parquet` (written by `experiments.sweep`) and
writes `out_dir/report.md` with PNG figures beside it:
- completion time (p50 and max) against each numeric grid key, one line per mode and policy,
  with the P2P lower bound (Kumar-Ross) dashed and the client-server time dotted;
- when the grid has both `run.mode` values: the speed-up of P2P over the traditional way, next
  to the speed-ups the physics allows (client-server time / P2P bound, Kumar-Ross's and the
  one for whole pieces, `dfsim.physics.piece_bound_s`), and the origin egress reduction; a
  seed's speed-up claim is checked at every point whose piece bound allows it;
- the seed's claims for the study (ANCHORS' table) as reference markers and table rows.
Rules: figures depend only on the table (a rerun renders the same files); the markdown embeds
them by relative path so the page reads on a code host.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from dfnet.core.units import parse_size

# The seed's numbers (ANCHORS, "The seed's own numbers"), by experiment name prefix.
SEED_CLAIMS: dict[str, list[dict]] = {
    "fig3": [{"claim": "traditional download time grows with clients and the source is blown out at 1,200; "
                       "P2P stays flat up to 7,000 clients (seed Fig. 3)"}],
    "fig3-d1readme": [
        {"claim": "P2P about 12 s from 200 to 7,000 clients (Dragonfly 1 README)", "x": [200, 7000], "y": [12, 12],
         "mode": "p2p"},
        {"claim": "wget about 100 s at 200 clients", "x": [200], "y": [100], "mode": "source"},
        {"claim": "wget about 830 s at 1,200 clients", "x": [1200], "y": [830], "mode": "source"},
    ],
    "fig8-15g": [{"claim": "P2P up to 20x faster than the traditional way at 1,000 concurrency", "speedup": 20}],
    "fig8-2g": [{"claim": "P2P up to 57x faster with a 2 Gbps source at 1,000 concurrency", "speedup": 57}],
    "fig9": [{"claim": "origin egress down by over 99.5% at 200 nodes, about 99.9% at 1,000", "reduction": 0.995}],
}


def _numeric(v) -> float | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v) if v == v else None          # NaN: a column older tables lack
    if isinstance(v, str):
        try:
            return float(parse_size(v))
        except ValueError:
            return None
    return None


def render(results: Path, out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyarrow.parquet as pq

    results = Path(results)
    table = pq.read_table(results / "results.parquet" if results.is_dir() else results)
    meta = table.schema.metadata or {}
    name = meta.get(b"experiment", b"sweep").decode()
    rows = table.to_pylist()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    grid_keys = json.loads(meta.get(b"grid", b"[]"))
    # the claims of the longest matching name: fig3-d1readme has its own numbers, fig3 has words
    match = max((k for k in SEED_CLAIMS if name.startswith(k)), key=len, default=None)
    claims = SEED_CLAIMS.get(match, [])
    lines = [f"# {name}", "", f"Rendered by `dfly report` from `{results}` ({len(rows)} points).", ""]

    # one figure per numeric grid key
    for x_key in [k for k in grid_keys if k != "run.mode" and all(_numeric(r[k]) is not None for r in rows)]:
        others = [k for k in grid_keys if k not in (x_key, "run.mode")]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        groups: dict[tuple, list] = {}
        for r in rows:
            groups.setdefault((r.get("run.mode", r.get("mode")), r["policy"],
                               *(r[k] for k in others)), []).append(r)
        for key, rs in sorted(groups.items(), key=lambda kv: str(kv[0])):
            rs = sorted(rs, key=lambda r: _numeric(r[x_key]))
            xs = [_numeric(r[x_key]) for r in rs]
            label = " ".join(str(k) for k in key)
            ax.plot(xs, [r["completion_s.max"] for r in rs], marker="o", label=f"{label} max")
            ax.plot(xs, [r["completion_s.p50"] for r in rs], marker=".", alpha=0.6, label=f"{label} p50")
            if key[0] != "source":
                ax.plot(xs, [r["lower_bound_s"] for r in rs], "k--", lw=1, alpha=0.7)
                if all(_numeric(r.get("piece_bound_s")) for r in rs):
                    ax.plot(xs, [r["piece_bound_s"] for r in rs], "k-.", lw=1, alpha=0.5)
            else:
                ax.plot(xs, [r["client_server_s"] for r in rs], "k:", lw=1, alpha=0.7)
        for c in claims:
            if "x" in c:
                ax.scatter(c["x"], c["y"], marker="*", s=140, color="red", zorder=5)
        ax.set_xlabel(x_key)
        ax.set_ylabel("completion time (s)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{name}: completion vs {x_key} (dashed: P2P bound, dash-dot: with whole pieces, "
                     "dotted: client-server, *: seed)",
                     fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        png = f"{_slug(name)}-{_slug(x_key)}.png"
        fig.savefig(out / png, dpi=110)
        plt.close(fig)
        lines += [f"![completion vs {x_key}]({png})", ""]

    # P2P vs traditional
    if "run.mode" in grid_keys:
        others = [k for k in grid_keys if k != "run.mode"]
        pairs: dict[tuple, dict] = {}
        for r in rows:
            pairs.setdefault((r["policy"], r["seed"], *(r[k] for k in others)), {})[r["run.mode"]] = r
        lines += ["## P2P against the traditional way", "",
                  "| " + " | ".join(others + ["policy", "P2P max (s)", "P2P max / bound", "traditional max (s)",
                                              "speed-up", "speed-up the physics allows",
                                              "with whole pieces", "origin egress reduction"]) + " |",
                  "|" + " --- |" * (len(others) + 8)]
        best_speedup, best_reduction = 0.0, 0.0
        speedups: list[tuple[str, float, float]] = []     # point, ours, what whole pieces allow
        for key, modes in sorted(pairs.items(), key=lambda kv: [_order(v) for v in kv[0]]):
            if "p2p" not in modes or "source" not in modes:
                continue
            p, s = modes["p2p"], modes["source"]
            speed = s["completion_s.max"] / max(p["completion_s.max"], 1e-9)
            allowed = s["client_server_s"] / max(p["lower_bound_s"], 1e-9)
            piece_bound = _numeric(p.get("piece_bound_s"))
            pieces = s["client_server_s"] / piece_bound if piece_bound else None
            red = 1 - p["source_egress_bytes"] / max(s["source_egress_bytes"], 1)
            best_speedup, best_reduction = max(best_speedup, speed), max(best_reduction, red)
            point = ", ".join(f"{k}={v}" for k, v in zip(others, key[2:]))
            if pieces:
                speedups.append((point, speed, pieces))
            lines.append("| " + " | ".join([str(v) for v in key[2:]] + [
                key[0], f"{p['completion_s.max']:.1f}", f"{p['completion_s.max'] / max(p['lower_bound_s'], 1e-9):.2f}",
                f"{s['completion_s.max']:.1f}", f"{speed:.1f}x", f"{allowed:.1f}x",
                f"{pieces:.1f}x" if pieces else "", f"{red * 100:.2f}%"]) + " |")
        lines.append("")
        for c in claims:
            if "speedup" in c:
                lines.append(f"Seed: {c['claim']}. Ours: up to {best_speedup:.1f}x.")
                allowed_points = [(pt, ours) for pt, ours, most in speedups if most >= c["speedup"]]
                if allowed_points:
                    short = [f"{pt} ({ours:.1f}x)" for pt, ours in allowed_points if ours < c["speedup"]]
                    lines.append(f"Points where whole pieces allow {c['speedup']}x or more: {len(allowed_points)}; "
                                 f"ours reaches it at {len(allowed_points) - len(short)}"
                                 + (f", not at {'; '.join(short)}." if short else "."))
            if "reduction" in c:
                lines.append(f"Seed: {c['claim']}. Ours: up to {best_reduction * 100:.2f}%.")
        lines.append("")

    # every point
    cols = grid_keys + ["policy", "seed", "completion_s.p50", "completion_s.p95", "completion_s.max",
                        "lower_bound_s", "piece_bound_s", "client_server_s", "source_egress_bytes"]
    cols = [c for c in cols if c in table.column_names]
    lines += ["## Every point", "", "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for r in sorted(rows, key=lambda r: [_order(r[c]) for c in cols]):
        lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    if claims:
        lines += ["", "## The seed's claims", ""] + [f"- {c['claim']}" for c in claims]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _order(v) -> tuple:
    """Sort numbers and sizes by value, words by text, numbers first."""
    n = _numeric(v)
    return (0, n, "") if n is not None else (1, 0.0, str(v))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
