"""The live runtime with real processes on loopback: origin, supernodes, daemons, dfget.

Every node is a real child process (`tests/live/nodes.py`); the origin is a real HTTP server
counting the bytes it sends. Files are 64 MiB (16 pieces of 4 MiB), so each test takes seconds.
"""
from __future__ import annotations

import hashlib
import os
import struct
import time
from pathlib import Path

import pytest

from dfnet import errors
from dfnet.supernode.service import READ_BUFFER
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
    caught = [_metric(g.get_text("/metrics"), "dragonfly_dfdaemon_piece_corrupt_total") for g in good]
    assert sum(caught) >= 1
    # a parent caught once is not used again by that child: at most the pieces it had in
    # flight from it when the first failed its digest (a window, 16)
    assert all(c <= 16 for c in caught), caught
    # reports from two different children isolate it from the task (one child may have
    # finished from the others before it was ever offered the bad parent)
    if all(c >= 1 for c in caught):
        assert "parent isolated" in sn.logs(), caught


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


def test_preheat_of_a_file_url_warms_every_supernode(cluster):
    """`dfly preheat URL`: both supernodes hold the file afterwards, the origin sent it about
    once per supernode, and downloads through either send nothing more from the origin."""
    import json
    url, sha = cluster.file("warm.bin")
    sns = [cluster.supernode(f"sn{i}", "--revalidate-s", "600") for i in range(2)]
    r = nodes.subprocess_run([nodes.PY, "-m", "experiments.cli", "preheat", url,
                              *[a for sn in sns for a in ("--supernode", sn.addr)]])
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["bytes"] == SIZE and "warmed" in r.stderr
    sent = cluster.origin_bytes()
    assert sent <= 2 * SIZE * 1.1
    for i, sn in enumerate(sns):
        d = cluster.daemon(f"d{i}", "--supernode", sn.addr)
        r = nodes.dfget(url, "-O", str(cluster.root / f"out{i}.bin"), "--daemon", d.addr)
        assert r.returncode == 0, r.stderr
        assert _sha(cluster.root / f"out{i}.bin") == sha
    assert cluster.origin_bytes() == sent


def test_proxy_rules_send_matching_files_p2p_and_pass_the_rest(cluster):
    """A daemon used as a plain HTTP proxy with `--proxy-rule`: GETs whose URL matches go P2P
    (the origin sends the file once for two daemons), others pass through untouched; a bad
    rule is one line and exit 2."""
    import urllib.request
    url, sha = cluster.file("rule.bin")
    (cluster.root / "files" / "note.txt").write_text("plain")
    sn = cluster.supernode()
    ds = [cluster.daemon(f"d{i}", "--supernode", sn.addr, "--proxy-listen", "127.0.0.1:0",
                         "--proxy-rule", r"\.bin$") for i in range(2)]
    for d in ds:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://{d.info['proxy']}"}))
        with opener.open(url, timeout=60) as r:
            assert hashlib.sha256(r.read()).hexdigest() == sha
        with opener.open(f"http://{cluster.origin.addr}/note.txt", timeout=60) as r:
            assert r.read() == b"plain"
    assert cluster.origin_bytes() <= SIZE * 1.1 + 2 * len("plain")
    for d in ds:
        m = d.get_text("/metrics")
        assert _metric(m, 'dragonfly_dfdaemon_proxy_request_total{type="p2p"}') == 1
        assert _metric(m, 'dragonfly_dfdaemon_proxy_request_total{type="passthrough"}') == 1
    r = nodes.subprocess_run([nodes.PY, "-m", "experiments.cli", "daemon", "--proxy-rule", "(unclosed"])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--proxy-rule" in r.stderr


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


def test_origin_cut_mid_download_resumes_with_range(cluster):
    url, sha = cluster.file("big.bin")
    cluster.origin.post_json("/_faults", {"cut_after": 40 * MiB + 12345})     # mid-piece
    sn = cluster.supernode()
    d = cluster.daemon("d0", "--supernode", sn.addr)
    r = nodes.dfget(url, "-O", str(cluster.root / "out.bin"), "--daemon", d.addr)
    assert r.returncode == 0, r.stderr
    assert _sha(cluster.root / "out.bin") == sha
    assert "resuming" in sn.logs()
    reqs = cluster.origin.get_json("/_stats")["requests"]
    assert any(q["headers"].get("Range", "").startswith("bytes=") for q in reqs)
    # The seed goes on from the last byte it took in; what sat in its client's read buffer
    # when the cut came (at most twice READ_BUFFER, aiohttp drops it) is fetched again.
    # Starting over would cost 40 MiB more.
    assert cluster.origin_bytes() <= SIZE + 2 * READ_BUFFER


def test_back_to_source_when_no_supernode_answers(cluster):
    url, sha = cluster.file("small.bin", size=10 * MiB)
    d = cluster.daemon("d0", "--supernode", "127.0.0.1:9")     # nothing listens there
    out = cluster.root / "out.bin"
    r = nodes.dfget(url, "-O", str(out), "--daemon", d.addr, "--no-back-source")
    assert r.returncode == errors.NETWORK and "no supernode answered" in r.stderr
    assert not out.exists()
    r = nodes.dfget(url, "-O", str(out), "--daemon", d.addr)
    assert r.returncode == 0, r.stderr
    assert _sha(out) == sha
    assert _metric(d.get_text("/metrics"), "dragonfly_dfdaemon_back_source_total") == 1


def test_download_limit_holds(cluster):
    url, sha = cluster.file("small.bin", size=24 * MiB)
    sn = cluster.supernode()
    d = cluster.daemon("d0", "--supernode", sn.addr, "--download-limit", "8M")
    t0 = time.monotonic()
    r = nodes.dfget(url, "-O", str(cluster.root / "out.bin"), "--daemon", d.addr)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    # 24 MiB at 8 MiB/s: at least ~3 s minus the bucket's initial burst (a quarter second)
    assert took >= 2.5, took
    assert "8388608" in d.get_text("/metrics")      # the limit gauge


def test_peers_get_pieces_only_with_the_task_token_and_no_path_escapes(cluster):
    import urllib.error
    import urllib.request
    url, _ = cluster.file("small.bin", size=8 * MiB)
    sn = cluster.supernode()
    d = cluster.daemon("d0", "--supernode", sn.addr)
    assert nodes.dfget(url, "-O", str(cluster.root / "out.bin"), "--daemon", d.addr).returncode == 0
    tid = next((cluster.root / "d0" / "tasks").iterdir()).name
    up = d.info["upload"]

    def get(path: str, token: str | None = None) -> int:
        req = urllib.request.Request(f"http://{up}{path}", headers={"X-Dfly-Token": token} if token else {})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    assert get(f"/v1/tasks/{tid}/pieces/0") == 403                   # no token
    assert get(f"/v1/tasks/{tid}/pieces/0", "f" * 32) == 403         # a wrong one
    assert get("/v1/tasks/..%2F..%2Fpeer-id/pieces/0", "f" * 32) == 400
    assert get(f"/v1/tasks/{tid}/pieces/999", "f" * 32) in (400, 403)
    assert get("/v1/download") in (404, 405)                        # no local API on the upload port


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"url": 5}', b'{"url": "http://x/", "peer": {"id": "p"}}',
                                  b'{"url": "http://x/", "peer": {"id": "p", "addr": "h:1", "upload_bps": "fast"}}'])
def test_malformed_peer_messages_get_one_line_400(cluster, body):
    import urllib.error
    import urllib.request
    sn = cluster.supernode()
    req = urllib.request.Request(f"http://{sn.addr}/v1/register", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 400
    msg = e.value.read().decode()
    assert "error" in msg and "\n" not in msg.strip() and "Traceback" not in msg
    assert "Traceback" not in sn.logs()


def test_full_disk_is_a_file_error_and_leaves_no_output(cluster):
    import subprocess
    small = cluster.root / "small-disk"
    small.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(small)]).returncode:
        pytest.skip("needs root to mount a 16 MiB tmpfs")
    try:
        url, _ = cluster.file("big.bin")
        sn = cluster.supernode()
        d = nodes.daemon("d-small", small / "data", cluster.root / "logs", "--supernode", sn.addr)
        try:
            out = cluster.root / "out.bin"
            r = nodes.dfget(url, "-O", str(out), "--daemon", d.addr)
            assert r.returncode == errors.FILE_IO, r.stderr
            assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
            assert not out.exists()
        finally:
            d.stop()
    finally:
        subprocess.run(["umount", "-l", str(small)])


def test_dfget_starts_a_daemon_when_none_answers(cluster, tmp_path):
    import socket
    url, sha = cluster.file("small.bin", size=8 * MiB)
    sn = cluster.supernode()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, DFLY_HOME=str(tmp_path / "home"), DFLY_SUPERNODES=sn.addr, DFLY_DAEMON_IDLE_S="2")
    import subprocess
    r = subprocess.run([nodes.PY, "-m", "dfnet.dfget", url, "-O", str(tmp_path / "out.bin"),
                        "--daemon", f"127.0.0.1:{port}"], cwd=nodes.ROOT, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert _sha(tmp_path / "out.bin") == sha
    log = (tmp_path / "home" / "daemon.log").read_text()
    assert '"listening"' not in log and "idle" not in log      # still serving right after
    deadline = time.monotonic() + 15
    while "idle; exiting" not in (tmp_path / "home" / "daemon.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "idle; exiting" in (tmp_path / "home" / "daemon.log").read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs: needs root")
def test_a_disk_too_small_for_the_task_fails_at_once_in_one_line(cluster):
    """The daemon reserves the task's space when it opens it: a full disk is found before any
    byte moves, and said in one line, not as a write error halfway through."""
    import subprocess
    url, _ = cluster.file("big.bin")
    data = cluster.root / "d0"
    data.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(data)], check=True)
    try:
        sn = cluster.supernode()
        d = cluster.daemon("d0", "--supernode", sn.addr)
        r = nodes.dfget(url, "-O", str(cluster.root / "out.bin"), "--daemon", d.addr)
        assert r.returncode == errors.FILE_IO
        assert r.stderr.count("\n") == 1 and "not enough disk space" in r.stderr, r.stderr
        assert not (cluster.root / "out.bin").exists()
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


def test_dfget_downloads_without_loading_aiohttp(cluster, tmp_path):
    """dfget talks to its daemon in a few lines of HTTP/1.1: importing aiohttp took 0.3-0.4 s
    of CPU at every start, before the download could begin."""
    import subprocess
    url, sha = cluster.file("small.bin", size=8 * MiB)
    sn = cluster.supernode()
    d = cluster.daemon("d", "--supernode", sn.addr)
    out = tmp_path / "out.bin"
    script = ("import runpy, sys\n"
              f"sys.argv = ['dfget', {url!r}, '-O', {str(out)!r}, '--daemon', {d.addr!r}]\n"
              "try:\n    runpy.run_module('dfnet.dfget', run_name='__main__')\n"
              "except SystemExit as e:\n    code = e.code\n"
              "print(code, 'aiohttp' in sys.modules)\n")
    r = subprocess.run([nodes.PY, "-c", script], cwd=nodes.ROOT, capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["0", "False"], (r.stdout, r.stderr)
    assert _sha(out) == sha


def test_the_end_of_a_download_is_reported_at_once(cluster, tmp_path):
    """"done" goes out as soon as the download ends: the daemon paces its progress lines, and
    slept out each pause (0.25 s) even when the download ended during it."""
    import json
    import urllib.request
    url, _ = cluster.file("small.bin", size=4 * MiB)
    sn = cluster.supernode()
    d = cluster.daemon("d", "--supernode", sn.addr)
    assert nodes.dfget(url, "-O", str(tmp_path / "a.bin"), "--daemon", d.addr).returncode == 0
    # the same file again: the daemon holds it, so the job ends a few round trips after it starts
    req = urllib.request.Request(f"http://{d.addr}/v1/download", method="POST",
                                 data=json.dumps({"url": url, "output": str(tmp_path / "b.bin")}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        events = [(time.monotonic(), json.loads(line)["event"]) for line in resp]
    assert events[0][1] == "start" and events[-1][1] == "done", events
    assert events[-1][0] - events[0][0] < 0.2, events
    assert (tmp_path / "b.bin").stat().st_size == 4 * MiB
