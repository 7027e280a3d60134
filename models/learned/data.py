"""Training data: trace files to (features, label) groups, split by scenario.

Owns: reading piece-transfer traces (`dfly sim run --trace`, schema in `datasets/README.md`)
and business-traffic traces (`models.learned.traffic`) into `Group`s, one per file, keyed by
the scenario and seed in the file's metadata; the dataset digest; the split by scenario.

Rules kept here:
- A group is one simulated scenario run (or one traffic trace file). Training and validation
  are split by group, never by row: rows of one run are far from independent.
- The piece-selector label is the transfer's cost, log seconds per MiB, of `ok` P2P rows
  (origin fetches have no features and are dropped).
- Any unusable input (missing path, not Parquet, another schema) is a `DataError`, one line.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.interfaces import FEATURE_SCHEMA_VERSION, FEATURES

from .policies import RATE_WINDOW

MIB = float(2**20)


class DataError(ValueError):
    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


@dataclass(slots=True)
class Group:
    key: str                      # "scenario/seed" (or the file name)
    path: Path
    x: np.ndarray                 # float64 (n, F)
    y: np.ndarray                 # float64 (n,)
    rows_read: int = 0
    meta: dict = field(default_factory=dict)


def expand(paths) -> list[Path]:
    """Files named, and the *.parquet files under directories named, sorted, each once."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(p.rglob("*.parquet"))
            if not found:
                raise DataError(f"{p}: no .parquet files in this directory")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"{p}: no such file or directory")
    seen, unique = set(), []
    for p in out:
        r = p.resolve()
        if r not in seen:
            seen.add(r)
            unique.append(p)
    return unique


def digest(files: list[Path]) -> str:
    """sha256 over the files' own sha256s, in sorted order: the same data gives the same digest."""
    parts = []
    for f in files:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        parts.append(h.hexdigest())
    return "sha256:" + hashlib.sha256("\n".join(sorted(parts)).encode()).hexdigest()


def _read(path: Path, columns: list[str]):
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__})") from None
    meta = {k.decode(): v.decode() for k, v in (pf.schema_arrow.metadata or {}).items()}
    missing = [c for c in columns if c not in pf.schema_arrow.names]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing[:4])}; is it the right kind of trace?")
    try:
        table = pf.read(columns=columns)
    except Exception as e:
        raise DataError(f"{path}: unreadable Parquet data ({type(e).__name__}: {e})") from None
    return table, meta


def _key(path: Path, meta: dict) -> str:
    if "scenario" in meta and "seed" in meta:
        return f"{meta['scenario']}/{meta['seed']}"
    return path.stem


PIECE_COLUMNS = ["parent", "bytes", "duration_s", "outcome", "candidates"] + [f"f_{n}" for n in FEATURES]


def read_piece_traces(files: list[Path]) -> list[Group]:
    groups: dict[str, Group] = {}
    for path in files:
        table, meta = _read(path, PIECE_COLUMNS)
        if meta.get("feature_schema_version") != str(FEATURE_SCHEMA_VERSION):
            raise DataError(f"{path}: feature schema version {meta.get('feature_schema_version')!r}; "
                            f"this code trains on {FEATURE_SCHEMA_VERSION}")
        cols = {c: table.column(c).to_numpy(zero_copy_only=False) for c in PIECE_COLUMNS}
        x = np.column_stack([cols[f"f_{n}"] for n in FEATURES]).astype(np.float64)
        nbytes = cols["bytes"].astype(np.float64)
        dur = cols["duration_s"].astype(np.float64)
        keep = ((cols["outcome"] == "ok") & (cols["parent"] >= 0) & (cols["candidates"] > 0)
                & (nbytes > 0) & (dur > 0) & np.all(np.isfinite(x), axis=1))
        y = np.log(dur[keep] * MIB / nbytes[keep])
        key = _key(path, meta)
        if key in groups:           # the same scenario and seed twice: one group
            g = groups[key]
            g.x = np.vstack([g.x, x[keep]])
            g.y = np.concatenate([g.y, y])
            g.rows_read += len(nbytes)
        else:
            groups[key] = Group(key, path, x[keep], y, len(nbytes), meta)
    return [g for g in groups.values()]


TRAFFIC_COLUMNS = ["host", "t_s", "capacity_bps", "business_bps"]


def read_traffic_traces(files: list[Path], window: int = RATE_WINDOW) -> list[Group]:
    """Sliding windows of business traffic (fraction of the NIC) -> the next interval's fraction.

    Each group also keeps, in `meta["series"]`, the per-host (capacity, fraction) series for the
    policy evaluation.
    """
    groups: list[Group] = []
    for path in files:
        table, meta = _read(path, TRAFFIC_COLUMNS)
        if "traffic_schema_version" not in meta:
            raise DataError(f"{path}: not a business-traffic trace (no traffic_schema_version)")
        host = table.column("host").to_numpy()
        t = table.column("t_s").to_numpy()
        cap = table.column("capacity_bps").to_numpy().astype(np.float64)
        bus = table.column("business_bps").to_numpy().astype(np.float64)
        order = np.lexsort((t, host))
        host, cap, bus = host[order], cap[order], bus[order]
        xs, ys, series = [], [], []
        for h in np.unique(host):
            sel = host == h
            c = cap[sel]
            frac = np.clip(bus[sel] / np.maximum(c, 1.0), 0.0, 1.0)
            series.append((float(c[0]), frac))
            if len(frac) <= window:
                continue
            w = np.lib.stride_tricks.sliding_window_view(frac, window)[:-1]
            xs.append(w)
            ys.append(frac[window:])
        if not xs:
            raise DataError(f"{path}: no host has more than {window} intervals")
        meta = dict(meta, series=series)
        groups.append(Group(_key(path, meta), path, np.vstack(xs), np.concatenate(ys), len(host), meta))
    return groups


def split_by_group(groups: list[Group], val_fraction: float, seed: int) -> tuple[list[Group], list[Group]]:
    """Validation = a seeded random `val_fraction` of the groups (at least one); the rest trains."""
    if len(groups) < 2:
        raise DataError(f"need traces of at least 2 scenarios (scenario/seed) to split by scenario, "
                        f"got {len(groups)}")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"validation fraction must be in (0, 1), got {val_fraction}")
    keys = sorted(g.key for g in groups)
    rng = np.random.default_rng(seed)
    n_val = min(len(keys) - 1, max(1, int(round(val_fraction * len(keys)))))
    val_keys = set(rng.permutation(keys)[:n_val].tolist())
    train = [g for g in groups if g.key not in val_keys]
    val = [g for g in groups if g.key in val_keys]
    return train, val


def stack(groups: list[Group]) -> tuple[np.ndarray, np.ndarray]:
    if not groups:
        return np.zeros((0, 0)), np.zeros(0)
    return np.vstack([g.x for g in groups]), np.concatenate([g.y for g in groups])
