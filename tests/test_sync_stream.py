"""The sync stream, with real processes on loopback: downloads over it, its checks, the fallback.

The supernode offers a long-lived stream per peer and task (`dfnet/supernode/stream.py`);
daemons use it when offered and sync with HTTP POSTs otherwise. These tests drive it with a
real daemon and with a raw socket, as a broken or hostile peer would.
"""
from __future__ import annotations

import json
import socket
import time

import pytest

from tests.live import nodes
from tests.test_live import MiB, _metric, _sha, cluster  # noqa: F401  (a fixture)


def _register(sn: nodes.Node, url: str, peer: str) -> dict:
    return sn.post_json("/v1/register", {"url": url, "peer": {"id": peer, "addr": "127.0.0.1:1"}})


def _open(sn: nodes.Node, tid: str, token: str, peer: str) -> tuple[socket.socket, int, bytes]:
    """Ask for the stream; return the socket, the status and what followed the head."""
    host, port = sn.addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(f"GET /v1/tasks/{tid}/stream?peer={peer} HTTP/1.1\r\nHost: {sn.addr}\r\n"
              f"Connection: Upgrade\r\nUpgrade: dfly-sync\r\nX-Dfly-Token: {token}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    return s, int(head.split()[1]), rest


def _lines(s: socket.socket, rest: bytes = b"") -> list[bytes]:
    """Every line the supernode sends until it closes the stream."""
    data = rest
    while chunk := s.recv(65536):
        data += chunk
    return data.splitlines()


def _ask(s: socket.socket, body: dict) -> dict:
    s.sendall(json.dumps(body).encode() + b"\n")
    line = b""
    while not line.endswith(b"\n"):
        chunk = s.recv(65536)
        assert chunk, line
        line += chunk
    return json.loads(line)


@pytest.mark.parametrize("extra, streams", [((), 1), (("--no-sync-stream",), 0)],
                         ids=["stream", "http-when-no-stream-is-offered"])
def test_a_download_syncs_over_the_stream_or_over_http(cluster, extra, streams):
    url, sha = cluster.file("f.bin", size=32 * MiB)
    sn = cluster.supernode("sn", *extra)       # --no-sync-stream: as an older supernode
    d = cluster.daemon("d0", "--supernode", sn.addr)
    r = nodes.dfget(url, "-O", str(cluster.root / "out.bin"), "--daemon", d.addr)
    assert r.returncode == 0, r.stderr
    assert _sha(cluster.root / "out.bin") == sha
    m = sn.get_text("/metrics")
    assert _metric(m, "dragonfly_scheduler_sync_stream_total") == streams
    assert _metric(m, "dragonfly_scheduler_sync_total") >= 2
    assert _metric(m, "dragonfly_scheduler_piece_assigned_total") == 8      # 8 pieces of 4 MiB


def test_a_stream_needs_the_task_token_and_a_registered_peer(cluster):
    url, _ = cluster.file("f.bin", size=8 * MiB)
    sn = cluster.supernode()
    reg = _register(sn, url, "p1")
    for token, peer, status in (("f" * 32, "p1", 404), ("", "p1", 404), (reg["token"], "nobody", 400)):
        s, got, rest = _open(sn, reg["task_id"], token, peer)
        with s:
            assert got == status
            body = rest.split(b"\r\n")[-1] if b"\r\n" in rest else rest
            assert b"error" in rest and b"Traceback" not in rest, body
    s, got, _ = _open(sn, "0" * 64, reg["token"], "p1")          # a task nobody registered
    s.close()
    assert got == 404
    assert _metric(sn.get_text("/metrics"), "dragonfly_scheduler_sync_stream_total") == 0


def test_a_bad_message_ends_its_stream_with_one_line_and_the_others_go_on(cluster):
    url, _ = cluster.file("f.bin", size=8 * MiB)
    sn = cluster.supernode()
    reg = _register(sn, url, "p1")
    _register(sn, url, "p2")
    tid, token = reg["task_id"], reg["token"]
    good, status, _ = _open(sn, tid, token, "p2")
    assert status == 101
    bad_messages = [b"not json\n", b"\xff\xfe\n", b"[1, 2]\n", b'{"peer": "p1", "done": [[1]]}\n',
                    b'{"peer": "p2"}\n']                              # another peer's id
    for bad in bad_messages:
        s, status, rest = _open(sn, tid, token, "p1")
        with s:
            assert status == 101
            s.sendall(bad)
            lines = _lines(s, rest)                                  # ... and then it is closed
        assert len(lines) == 1, lines
        err = json.loads(lines[0])
        assert err["status"] == 400 and err["error"] and "Traceback" not in err["error"]
        # the other peer's stream still gets its replies
        reply = _ask(good, {"peer": "p2", "idle": False})
        assert set(reply) >= {"assign", "done", "retry_after"}
    with good:
        reply = _ask(good, {"peer": "p2", "done": [], "idle": False})
        assert "error" not in reply
    assert "Traceback" not in sn.logs()
    # and HTTP syncs still work next to streams
    req_body = json.dumps({"peer": "p1", "idle": False}).encode()
    import urllib.request
    req = urllib.request.Request(f"http://{sn.addr}/v1/tasks/{tid}/sync", data=req_body, method="POST",
                                 headers={"Content-Type": "application/json", "X-Dfly-Token": token})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert "assign" in json.loads(r.read())


def test_a_held_sync_ends_with_its_stream_and_a_second_message_meanwhile_is_refused(cluster):
    url, _ = cluster.file("f.bin", size=8 * MiB)
    sn = cluster.supernode("sn", "--upload-limit", "4MiB/s")       # the seed has one upload slot
    reg = _register(sn, url, "p1")
    _register(sn, url, "p2")
    tid, token = reg["task_id"], reg["token"]
    p1, status, _ = _open(sn, tid, token, "p1")
    assert status == 101
    with p1:
        assert len(_ask(p1, {"peer": "p1", "idle": True})["assign"]) == 1       # the seed's slot
        p2, status, rest = _open(sn, tid, token, "p2")
        with p2:
            p2.sendall(b'{"peer": "p2", "idle": true}\n')                       # held: no slot
            p2.sendall(b'{"peer": "p2", "idle": true}\n')                       # too early
            lines = _lines(p2, rest)
        assert [json.loads(x)["status"] for x in lines] == [400], lines
        assert "previous reply" in json.loads(lines[0])["error"]
        p2, status, _ = _open(sn, tid, token, "p2")
        p2.sendall(b'{"peer": "p2", "idle": true}\n')                           # held again ...
        p2.close()                                                              # ... and gone
        p2, status, _ = _open(sn, tid, token, "p2")
        with p2:
            assert status == 101
            assert "error" not in _ask(p2, {"peer": "p2", "idle": False})       # not held: answered
        assert "error" not in _ask(p1, {"peer": "p1", "idle": False})
    assert "Traceback" not in sn.logs()


def test_a_message_in_parts_is_one_message_and_an_endless_one_is_cut_off(cluster):
    url, _ = cluster.file("f.bin", size=8 * MiB)
    sn = cluster.supernode()
    reg = _register(sn, url, "p1")
    s, status, _ = _open(sn, reg["task_id"], reg["token"], "p1")
    with s:
        body = json.dumps({"peer": "p1", "idle": False}).encode()
        s.sendall(body[:5])
        time.sleep(0.2)                                  # two reads on the supernode's side
        s.sendall(body[5:] + b"\n")
        line = b""
        while not line.endswith(b"\n"):
            line += s.recv(65536)
        assert "assign" in json.loads(line)
    s, status, rest = _open(sn, reg["task_id"], reg["token"], "p1")
    with s:
        try:
            for _ in range(80):                          # 5 MiB without a newline
                s.sendall(b"x" * (64 << 10))
        except OSError:
            pass                                         # cut off while sending: as expected
        try:
            lines = _lines(s, rest)
        except ConnectionResetError:       # closed with our bytes unread: the kernel resets,
            lines = []                     # and the error line may be lost with it
    assert all(json.loads(x)["status"] == 400 and "too large" in json.loads(x)["error"] for x in lines)
    s, status, _ = _open(sn, reg["task_id"], reg["token"], "p1")              # the supernode goes on
    with s:
        assert "assign" in _ask(s, {"peer": "p1", "idle": False})
    assert "Traceback" not in sn.logs()
