"""The live runtime with real processes on loopback: origin, supernodes, daemons, dfget.

Every node is a real child process (`tests/live/nodes.py`); the origin is a real HTTP server
counting the bytes it sends. Files are 64 MiB (16 pieces of 4 MiB), so each test takes seconds.
"""
from __future__ import annotations

import hashlib
import os
import re
import struct
import time
from pathlib import Path

import pytest

from dfnet import errors
from tests.live import nodes

MiB = 1 << 20
SIZE = 64 * MiB
PIECE = 4 * MiB
SECRET = "Bearer s3cret-token-77"


@pytest.fixture
def cluster(tmp_path):
    """An origin serving `files/`, and a list to register nodes for cleanup."""
    files = tmp_path / "files"
    files.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    started: list[nodes.Node] = []

    class Cluster:
        root = tmp_path
        origin = nodes.origin(files, logs)

        def file(self, name: str, size: int = SIZE, seed: int = 1) -> tuple[str, str]:
            """Write a random file; return its URL and sha256."""
            data = _random_bytes(size, seed)
            (files / name).write_bytes(data)
            return f"http://{self.origin.addr}/{name}", hashlib.sha256(data).hexdigest()

        def supernode(self, name: str = "sn", *extra: str) -> nodes.Node:
            n = nodes.supernode(name, tmp_path / name, logs, *extra)
            started.append(n)
            return n

        def daemon(self, name: str, *extra: str) -> nodes.Node:
            n = nodes.daemon(name, tmp_path / name, logs, "--log-level", "debug", *extra)
            started.append(n)
            return n

        def origin_bytes(self) -> int:
            return self.origin.get_json("/_stats")["bytes_sent"]

    c = Cluster()
    started.append(c.origin)
    yield c
    for n in reversed(started):
        n.stop()


def _random_bytes(n: int, seed: int) -> bytes:
    import random
    return random.Random(seed).randbytes(n)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_four_dfgets_share_one_origin_fetch_and_credentials_stay_home(cluster):
    url, sha = cluster.file("big.bin")
    sn = cluster.supernode("sn", "--upload-limit", "16M")     # 4 upload slots: peers must share
    ds = [cluster.daemon(f"d{i}", "--supernode", sn.addr) for i in range(4)]
    outs = [cluster.root / f"out{i}.bin" for i in range(4)]
    # d0 asks first, with a source credential: the supernode's origin fetch uses it
    procs = [nodes.dfget_start(url, "-O", str(outs[0]), "--daemon", ds[0].addr, "-H", f"Authorization: {SECRET}")]
    deadline = time.monotonic() + 20
    while not cluster.origin.get_json("/_stats")["requests"] and time.monotonic() < deadline:
        time.sleep(0.02)
    procs += [nodes.dfget_start(url, "-O", str(o), "--daemon", d.addr) for d, o in zip(ds[1:], outs[1:])]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert all(_sha(o) == sha for o in outs)
    sent = cluster.origin_bytes()
    assert sent <= 1.1 * SIZE, f"origin sent {sent / SIZE:.2f} x the file"
    # the source credential reached the origin (the supernode fetched with it) ...
    reqs = cluster.origin.get_json("/_stats")["requests"]
    assert any(r["headers"].get("Authorization") == SECRET for r in reqs)
    # ... and no other daemon: not in what they received, logged or export
    served = 0
    for d in ds[1:]:
        text = d.logs()
        assert "s3cret" not in text
        for line in text.splitlines():
            if '"piece request"' in line:      # debug log of the header names each request had
                served += 1
                assert "Authorization" not in line and "header_names" in line
        assert "s3cret" not in d.get_text("/metrics")
    assert served > 0
    assert "s3cret" not in sn.logs() and "s3cret" not in sn.get_text("/metrics")
    assert "s3cret" not in ds[0].get_text("/metrics")
    # the daemons served each other: P2P bytes uploaded by daemons, not only by the seed
    uploaded = sum(_metric(d.get_text("/metrics"), "dragonfly_dfdaemon_upload_traffic") for d in ds)
    assert uploaded > 0


def _recorded_pieces(data: Path) -> int:
    recs = list(data.glob("tasks/*/pieces"))
    if not recs:
        return 0
    raw = recs[0].read_bytes()
    return len({struct.unpack_from("<I", raw, off)[0] for off in range(0, len(raw) - len(raw) % 36, 36)})


def test_daemon_killed_mid_download_resumes_without_refetching_finished_pieces(cluster):
    url, sha = cluster.file("big.bin")
    sn = cluster.supernode()
    d = cluster.daemon("d0", "--supernode", sn.addr, "--download-limit", "16M")
    out = cluster.root / "out.bin"
    p = nodes.dfget_start(url, "-O", str(out), "--daemon", d.addr)
    deadline = time.monotonic() + 60
    while _recorded_pieces(cluster.root / "d0") < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    d.kill()
    p.communicate(timeout=30)
    assert p.returncode == errors.NETWORK            # dfget lost its daemon: a network error
    assert not out.exists()                          # nothing partial looks complete
    held = _recorded_pieces(cluster.root / "d0")
    n = SIZE // PIECE
    assert 5 <= held < n
    restarted = nodes.daemon("d0-restarted", cluster.root / "d0", cluster.root / "logs", "--supernode", sn.addr)
    try:
        r = nodes.dfget(url, "-O", str(out), "--daemon", restarted.addr)
        assert r.returncode == 0, r.stderr
        assert _sha(out) == sha
        fetched = _metric(restarted.get_text("/metrics"), "dragonfly_dfdaemon_download_traffic") / PIECE
        # only the pieces not recorded when it died (those in flight, and those never started)
        assert fetched == n - held, (fetched, n, held)
        assert "resuming" in restarted.logs()
    finally:
        restarted.stop()


def test_a_parent_serving_corrupt_pieces_is_caught(cluster):
    url, sha = cluster.file("big.bin")
    sn = cluster.supernode()
    bad = cluster.daemon("bad", "--supernode", sn.addr, "--idc", "x")
    r = nodes.dfget(url, "-O", str(cluster.root / "bad.bin"), "--daemon", bad.addr)
    assert r.returncode == 0, r.stderr
    # its disk rots: every piece it serves from now on is wrong
    data = next((cluster.root / "bad").glob("tasks/*/data"))
    with open(data, "r+b") as f:
        for off in range(0, SIZE, PIECE):
            f.seek(off + 100)
            f.write(b"\xff" * 64)
    # same IDC as the bad parent, so the scheduler prefers it over the seed
    good = [cluster.daemon(f"g{i}", "--supernode", sn.addr, "--idc", "x") for i in range(2)]
    outs = [cluster.root / f"g{i}.bin" for i in range(2)]
    procs = [nodes.dfget_start(url, "-O", str(o), "--daemon", g.addr) for g, o in zip(good, outs)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert all(_sha(o) == sha for o in outs)
    corrupt = sum(_metric(g.get_text("/metrics"), "dragonfly_dfdaemon_piece_corrupt_total") for g in good)
    assert corrupt >= 1
    # a parent caught once is not used again by that child: at most the pieces it had in
    # flight from it when the first failed its digest (4); two reports isolate it for all
    assert corrupt <= 4 * len(good)
    assert "parent isolated" in sn.logs() or corrupt == 1


def test_second_download_is_served_from_the_cache_after_revalidation(cluster):
    url, sha = cluster.file("big.bin")
    sn = cluster.supernode("sn", "--revalidate-s", "0")
    d = cluster.daemon("d0", "--supernode", sn.addr)
    assert nodes.dfget(url, "-O", str(cluster.root / "a.bin"), "--daemon", d.addr).returncode == 0
    sent = cluster.origin_bytes()
    d2 = cluster.daemon("d1", "--supernode", sn.addr)
    r = nodes.dfget(url, "-O", str(cluster.root / "b.bin"), "--daemon", d2.addr)
    assert r.returncode == 0, r.stderr
    assert _sha(cluster.root / "b.bin") == sha
    assert cluster.origin_bytes() == sent                 # a 304, no body
    reqs = cluster.origin.get_json("/_stats")["requests"]
    assert "If-None-Match" in reqs[-1]["headers"]
    # the source changes: a new task version with the new bytes
    new_url, new_sha = cluster.file("big.bin", seed=2)
    os.utime(cluster.root / "files" / "big.bin", (time.time() + 5, time.time() + 5))
    d3 = cluster.daemon("d2", "--supernode", sn.addr)
    r = nodes.dfget(url, "-O", str(cluster.root / "c.bin"), "--daemon", d3.addr)
    assert r.returncode == 0, r.stderr
    assert _sha(cluster.root / "c.bin") == new_sha


@pytest.mark.parametrize("case, code", [
    ("bad-url", errors.USAGE), ("bad-header", errors.USAGE), ("bad-digest-text", errors.USAGE),
    ("no-such-folder", errors.FILE_IO), ("404", errors.SERVER_ERROR), ("unreachable", errors.NETWORK),
    ("wrong-digest", errors.DIGEST_MISMATCH), ("bad-limit", errors.USAGE),
])
def test_dfget_bad_input_one_line_and_wget_exit_code(cluster, case, code):
    url, sha = cluster.file("small.bin", size=3 * MiB)
    sn = cluster.supernode()
    d = cluster.daemon("d0", "--supernode", sn.addr)
    out = cluster.root / "out.bin"
    args = {
        "bad-url": ["ftp://x/y", "-O", str(out)],
        "bad-header": [url, "-O", str(out), "-H", "NoColonHere"],
        "bad-digest-text": [url, "-O", str(out), "--digest", "sha256:xyz"],
        "no-such-folder": [url, "-O", str(cluster.root / "nope" / "out.bin")],
        "404": [f"http://{cluster.origin.addr}/missing.bin", "-O", str(out)],
        "unreachable": ["http://127.0.0.1:9/x.bin", "-O", str(out)],
        "wrong-digest": [url, "-O", str(out), "--digest", "sha256:" + "0" * 64],
        "bad-limit": [url, "-O", str(out), "--limit-rate", "fast"],
    }[case]
    r = nodes.dfget(*args, "--daemon", d.addr)
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dfget: error:"), r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_supernode_killed_mid_distribution_daemons_fail_over(cluster):
    """Config service + two supernodes; the nearest one dies mid-distribution."""
    url, sha = cluster.file("big.bin")
    cs = nodes.Node("config", [nodes.PY, "-m", "experiments.cli", "config-service", "--listen", "127.0.0.1:0",
                               "--db", str(cluster.root / "config.db")], cluster.root / "logs")
    try:
        cs_url = f"http://{cs.addr}"
        # the near one (same IDC as the hosts) is slow, so it dies with the work half done
        near = cluster.supernode("near", "--config-service", cs_url, "--idc", "a", "--upload-limit", "8M")
        cluster.supernode("far", "--config-service", cs_url, "--idc", "b")
        deadline = time.monotonic() + 20
        while len(cs.get_json("/v1/supernodes?idc=a")["supernodes"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        order = [s["addr"] for s in cs.get_json("/v1/supernodes?idc=a")["supernodes"]]
        assert order[0] == near.addr and len(order) == 2
        ds = [cluster.daemon(f"d{i}", "--config-service", cs_url, "--idc", "a") for i in range(3)]
        outs = [cluster.root / f"out{i}.bin" for i in range(3)]
        procs = [nodes.dfget_start(url, "-O", str(o), "--daemon", d.addr) for d, o in zip(ds, outs)]
        deadline = time.monotonic() + 30
        while sum(_recorded_pieces(cluster.root / f"d{i}") for i in range(3)) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        near.kill()
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
        assert all(_sha(o) == sha for o in outs)
        assert any("supernode unavailable" in d.logs() for d in ds)
    finally:
        cs.stop()
