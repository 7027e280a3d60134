"""Piece-transfer traces: one Parquet row per piece transfer, the learned policies' data.

Owns the trace schema (documented in `datasets/README.md`). Rows are buffered in columns and
written in row groups, so a 10,000-host run does not hold its whole trace in memory.

Each row: when the transfer started, child and parent node ids, piece, bytes, duration,
whether it crossed IDCs, how it ended, and the feature row the policy scored for that
choice (`f_<name>` for each name in `models.interfaces.FEATURES`; NaN where no policy chose,
as for origin fetches).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models.interfaces import FEATURE_SCHEMA_VERSION, FEATURES, N_FEATURES

TRACE_SCHEMA_VERSION = 1
ROW_GROUP = 200_000

_FIELDS = [
    ("time_s", pa.float64()), ("child", pa.int32()), ("parent", pa.int32()),
    ("piece", pa.int32()), ("bytes", pa.int64()), ("duration_s", pa.float64()),
    ("cross_idc", pa.bool_()), ("outcome", pa.string()), ("candidates", pa.int32()),
]
SCHEMA = pa.schema(_FIELDS + [(f"f_{name}", pa.float32()) for name in FEATURES])
_NAN_ROW = np.full(N_FEATURES, np.nan, dtype=np.float32)


class TraceWriter:
    def __init__(self, path: str | Path, metadata: dict[str, str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"trace_schema_version": str(TRACE_SCHEMA_VERSION),
                "feature_schema_version": str(FEATURE_SCHEMA_VERSION), **metadata}
        self._writer = pq.ParquetWriter(self.path, SCHEMA.with_metadata(meta))
        self._cols: list[list] = [[] for _ in _FIELDS]
        self._feat: list[np.ndarray] = []
        self.rows = 0

    def add(self, time_s: float, child: int, parent: int, piece: int, nbytes: int, duration_s: float,
            cross_idc: bool, outcome: str, candidates: int, features: np.ndarray | None) -> None:
        for col, v in zip(self._cols, (time_s, child, parent, piece, nbytes, duration_s,
                                       cross_idc, outcome, candidates)):
            col.append(v)
        self._feat.append(_NAN_ROW if features is None else features)
        if len(self._feat) >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if not self._feat:
            return
        feats = np.vstack(self._feat).astype(np.float32)
        arrays = [pa.array(col, type=t) for col, (_, t) in zip(self._cols, _FIELDS)]
        arrays += [pa.array(feats[:, j]) for j in range(N_FEATURES)]
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=SCHEMA))
        self.rows += len(self._feat)
        self._cols = [[] for _ in _FIELDS]
        self._feat = []

    def close(self) -> None:
        self._flush()
        self._writer.close()
