"""The supernode's seed cache on disk: reload after a restart, LRU GC between watermarks."""
from __future__ import annotations

import hashlib
import time

from dfnet.core.task import task_id
from dfnet.storage import TaskFiles
from dfnet.supernode.service import Supernode
from models.deploy import PolicyHandle

MiB = 1 << 20


def _cached(root, name: str, size: int, last_used: float) -> str:
    """A complete cached task as an earlier supernode run leaves it."""
    tid = task_id(f"http://origin/{name}")
    files = TaskFiles.create(root / "tasks", tid, {"key": tid, "length": size, "piece_size": MiB,
                                                   "token": "t" * 32, "current": True})
    data = bytes([len(name)]) * MiB
    for p in range(files.n_pieces):
        files.write(p * MiB, data[: files.piece_range(p)[1]])
        files.commit(p, hashlib.sha256(data[: files.piece_range(p)[1]]).hexdigest())
    files.close()
    return tid


def _supernode(root, high: int, low: int) -> Supernode:
    return Supernode(root, PolicyHandle("heuristic:d2", "piece-selector"), "127.0.0.1:1",
                     cache_high=high, cache_low=low)


def test_gc_removes_least_recently_used_down_to_the_low_watermark(tmp_path):
    ids = [_cached(tmp_path, name, 4 * MiB, 0) for name in ("a", "b", "c", "d")]
    sn = _supernode(tmp_path, high=10 * MiB, low=6 * MiB)
    assert set(sn._stored) == set(ids) and set(sn.current.values()) == set(ids)
    now = time.time()
    for i, tid in enumerate(ids):          # a is the oldest, d the newest
        sn._stored[tid].last_used = now - 100 + i
    sn._gc()
    left = {p.name for p in (tmp_path / "tasks").iterdir()}
    # 16 MiB passed the 10 MiB high watermark: the oldest go until <= 6 MiB is left
    assert left == {ids[3]}
    assert set(sn.current.values()) == {ids[3]}
    assert sn.metrics.get("dragonfly_cdn_gc_tasks_total") == 3


def test_gc_never_collects_a_task_in_use(tmp_path):
    ids = [_cached(tmp_path, name, 4 * MiB, 0) for name in ("a", "b", "c")]
    sn = _supernode(tmp_path, high=8 * MiB, low=4 * MiB)
    now = time.time()
    for i, tid in enumerate(ids):
        sn._stored[tid].last_used = now - 100 + i
    in_use = sn._task_for(ids[0])          # the oldest, but a peer synced a moment ago
    assert in_use is not None and in_use.in_use
    sn._gc()
    left = {p.name for p in (tmp_path / "tasks").iterdir()}
    assert ids[0] in left and ids[1] not in left


def test_cache_survives_a_restart_with_its_pieces(tmp_path):
    tid = _cached(tmp_path, "a", 3 * MiB + 5, 0)
    sn = _supernode(tmp_path, high=1 << 40, low=1 << 39)
    t = sn._task_for(tid)
    assert t.files.complete and all(t.digests)
    assert t.swarm.finished[t.seed] == 4
