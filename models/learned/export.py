"""The exported model file: a small versioned `.npz` holding one MLP and everything needed to
run it with numpy alone.

Owns: the file format (`FORMAT`, `FORMAT_VERSION`), writing it (`save_mlp`) and reading and
checking it (`load_mlp`). Training writes it; `file:PATH` and `models:/...` URIs read it; the
MLflow registry stores it as the model's one artifact.

Format version 1, arrays in one `.npz` (no pickles; `np.load(..., allow_pickle=False)`):

| key | shape, dtype | meaning |
| --- | --- | --- |
| `format` | 0-d str | `"dragonfly-lab/mlp"` |
| `format_version` | 0-d int | 1 |
| `kind` | 0-d str | `piece-selector` or `rate-controller` |
| `feature_schema_version` | 0-d int | the version of the input table the model was trained on |
| `feature_names` | (F,) str | its input columns, in order |
| `log1p` | (F,) bool | columns that pass through log1p before normalisation |
| `mean`, `std` | (F,) float | input normalisation after the log1p: z = (x' - mean) / std |
| `W0`, `b0`, `W1`, `b1`, ... | float | dense layers; ReLU between them, none after the last |
| `meta` | 0-d str | JSON: the policy's parameters (e.g. `quantile`, `margin`) and provenance (git commit, dataset digest, metrics) |

Rules kept here:
- Reading never trusts the file: every key, shape, dtype and value is checked, and any problem
  is a `ModelFileError` with a one-line message.
- numpy only. No torch, no mlflow: daemons load these files at start-up.
"""
from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT = "dragonfly-lab/mlp"
FORMAT_VERSION = 1
KINDS = ("piece-selector", "rate-controller")
SUFFIX = ".npz"


class ModelFileError(ValueError):
    """An exported model file that cannot be used; the message is one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


@dataclass(slots=True)
class MLP:
    """A dense ReLU network with its input transform, as exported."""

    kind: str
    feature_schema_version: int
    feature_names: tuple[str, ...]
    log1p: np.ndarray            # bool (F,)
    mean: np.ndarray             # float64 (F,)
    std: np.ndarray              # float64 (F,)
    weights: list[np.ndarray]    # W0 (F, H0), W1 (H0, H1), ..., last (H, 1)
    biases: list[np.ndarray]
    meta: dict = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Reference forward pass (not the fast one the policies use): one output per row."""
        z = np.array(x, dtype=np.float64, copy=True)
        z[:, self.log1p] = np.log1p(np.maximum(z[:, self.log1p], 0.0))
        h = (z - self.mean) / self.std
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ w + b
            if i < len(self.weights) - 1:
                h = np.maximum(h, 0.0)
        return h[:, 0]


def save_mlp(path: str | Path, mlp: MLP) -> Path:
    """Write `mlp` to `path` (format version 1) and return the path."""
    _check(mlp, str(path))
    arrays: dict[str, np.ndarray] = {
        "format": np.array(FORMAT),
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "kind": np.array(mlp.kind),
        "feature_schema_version": np.array(int(mlp.feature_schema_version), dtype=np.int64),
        "feature_names": np.array(list(mlp.feature_names), dtype=str),
        "log1p": np.asarray(mlp.log1p, dtype=bool),
        "mean": np.asarray(mlp.mean, dtype=np.float64),
        "std": np.asarray(mlp.std, dtype=np.float64),
        "meta": np.array(json.dumps(mlp.meta, sort_keys=True)),
    }
    for i, (w, b) in enumerate(zip(mlp.weights, mlp.biases)):
        arrays[f"W{i}"] = np.asarray(w, dtype=np.float64)
        arrays[f"b{i}"] = np.asarray(b, dtype=np.float64)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())
    return path


def load_mlp(path: str | Path) -> MLP:
    """Read and check an exported model file; any problem is a one-line `ModelFileError`."""
    where = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"{where}: no such model file") from None
    except IsADirectoryError:
        raise ModelFileError(f"{where}: is a directory, not a model file") from None
    except OSError as e:
        raise ModelFileError(f"{where}: {e.strerror or e}") from None
    return loads_mlp(data, where)


def loads_mlp(data: bytes, where: str = "model") -> MLP:
    """`load_mlp` for bytes already in memory; `where` names them in errors."""
    if data[:4] != b"PK\x03\x04":
        raise ModelFileError(f"{where}: corrupted model file (not an .npz archive)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, zipfile.LargeZipFile) as e:
        raise ModelFileError(f"{where}: corrupted model file (not a readable .npz: {e})") from None
    except Exception as e:   # zlib errors and the like: still a corrupted file
        raise ModelFileError(f"{where}: corrupted model file ({type(e).__name__}: {e})") from None

    def scalar(key: str, kind: type):
        if key not in arrays:
            raise ModelFileError(f"{where}: corrupted model file (no '{key}')")
        a = arrays[key]
        if a.shape != ():
            raise ModelFileError(f"{where}: corrupted model file ('{key}' is not a scalar)")
        try:
            return kind(a.item())
        except (TypeError, ValueError):
            raise ModelFileError(f"{where}: corrupted model file ('{key}' is not a {kind.__name__})") from None

    if scalar("format", str) != FORMAT:
        raise ModelFileError(f"{where}: not a {FORMAT} model file")
    version = scalar("format_version", int)
    if version != FORMAT_VERSION:
        raise ModelFileError(f"{where}: model file format version {version}; this code reads {FORMAT_VERSION}")
    try:
        meta = json.loads(scalar("meta", str))
        if not isinstance(meta, dict):
            raise ValueError("not an object")
    except ValueError as e:
        raise ModelFileError(f"{where}: corrupted model file (meta: {e})") from None
    names = arrays.get("feature_names")
    if names is None or names.ndim != 1 or names.dtype.kind != "U":
        raise ModelFileError(f"{where}: corrupted model file (feature_names)")
    weights, biases = [], []
    while f"W{len(weights)}" in arrays:
        i = len(weights)
        if f"b{i}" not in arrays:
            raise ModelFileError(f"{where}: corrupted model file (no 'b{i}')")
        weights.append(arrays[f"W{i}"])
        biases.append(arrays[f"b{i}"])
    mlp = MLP(kind=scalar("kind", str), feature_schema_version=scalar("feature_schema_version", int),
              feature_names=tuple(str(n) for n in names), log1p=arrays.get("log1p"),
              mean=arrays.get("mean"), std=arrays.get("std"), weights=weights, biases=biases, meta=meta)
    _check(mlp, where)
    return mlp


def _check(mlp: MLP, where: str) -> None:
    def bad(what: str):
        raise ModelFileError(f"{where}: corrupted model file ({what})")

    if mlp.kind not in KINDS:
        bad(f"unknown kind {mlp.kind!r}; known: {', '.join(KINDS)}")
    f = len(mlp.feature_names)
    if f == 0:
        bad("no features")
    for key in ("log1p", "mean", "std"):
        a = getattr(mlp, key)
        if a is None or np.shape(a) != (f,):
            bad(f"'{key}' does not have one entry per feature")
    if np.asarray(mlp.log1p).dtype != bool:
        bad("'log1p' is not boolean")
    for key in ("mean", "std"):
        a = np.asarray(getattr(mlp, key))
        if a.dtype.kind != "f" or not np.all(np.isfinite(a)):
            bad(f"'{key}' is not finite")
    if not np.all(np.asarray(mlp.std) > 0):
        bad("'std' has a non-positive entry")
    if not mlp.weights:
        bad("no layers")
    width = f
    for i, (w, b) in enumerate(zip(mlp.weights, mlp.biases)):
        w, b = np.asarray(w), np.asarray(b)
        if w.ndim != 2 or w.shape[0] != width or b.shape != (w.shape[1],):
            bad(f"layer {i} has shape {w.shape} after a width of {width}")
        if w.dtype.kind != "f" or b.dtype.kind != "f" or not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
            bad(f"layer {i} is not finite")
        width = w.shape[1]
    if width != 1:
        bad(f"the last layer has {width} outputs, not 1")
