"""The sync stream, with real processes on loopback: downloads over it, its checks, the fallback.

The supernode offers a long-lived stream per peer and task (`dfnet/supernode/stream.py`);
daemons use it when offered and sync with HTTP POSTs otherwise. These tests drive it with a
real daemon and with a raw socket, as a broken or hostile peer would, and across the
supernode's idle close of a stream and its restart (a peer it no longer knows: 409, register
again).
"""
from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
import urllib.error
import urllib.request

import pytest

from dfnet.daemon import supernodes
from dfnet.protocol import SyncReply
from tests.live import nodes
from tests.test_live import MiB, _metric, _recorded_pieces, _sha, cluster  # noqa: F401  (a fixture)


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
    # an unknown peer is 409 "register again" (as after a supernode restart), not a bad request
    for token, peer, status in (("f" * 32, "p1", 404), ("", "p1", 404), (reg["token"], "nobody", 409)):
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


def _post_sync(sn: nodes.Node, tid: str, token: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://{sn.addr}/v1/tasks/{tid}/sync", data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json", "X-Dfly-Token": token})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_peer_the_supernode_no_longer_knows_is_told_to_register_again_on_both_routes(cluster):
    url, _ = cluster.file("f.bin", size=8 * MiB)
    sn = cluster.supernode()
    reg = _register(sn, url, "p1")
    tid, token = reg["task_id"], reg["token"]
    s, status, rest = _open(sn, tid, token, "p1")
    with s:
        assert status == 101
        # the peer leaves (as a forgotten one): its stream's next message gets one 409 line
        req = urllib.request.Request(f"http://{sn.addr}/v1/tasks/{tid}/leave", data=b'{"peer": "p1"}',
                                     method="POST", headers={"X-Dfly-Token": token})
        urllib.request.urlopen(req, timeout=10).close()
        s.sendall(b'{"peer": "p1", "idle": false}\n')
        lines = _lines(s, rest)
    assert len(lines) == 1, lines
    err = json.loads(lines[0])
    assert err["status"] == 409 and "register again" in err["error"], err
    status, body = _post_sync(sn, tid, token, {"peer": "p1", "idle": False})       # the HTTP route alike
    assert status == 409 and "register again" in body["error"], body
    # ... and a daemon registers again on either: TaskGone, not a download error
    for status in (404, 409):
        with pytest.raises(supernodes.TaskGone):
            supernodes._raise_for(status, {"error": "x"})
    assert "Traceback" not in sn.logs()


def test_an_idle_close_crossing_the_next_sync_is_not_a_supernode_failure(cluster):
    """The supernode closes a silent stream; the daemon's next sync goes out before it has
    seen the close (its event loop busy meanwhile): the sync is sent again on a new stream."""
    url, _ = cluster.file("f.bin", size=8 * MiB)
    sn = cluster.supernode("sn", "--stream-idle-s", "0.2")
    reg = _register(sn, url, "p1")

    async def main() -> tuple[SyncReply, SyncReply, SyncReply]:
        s = await supernodes.SyncStream.open(sn.addr, reg["task_id"], reg["token"], "p1")
        assert s is not None
        try:
            first = await s.sync({"peer": "p1", "idle": False})
            time.sleep(1.0)         # blocks the loop: the supernode's close (after 0.2-0.25 s) is unseen
            assert not s.reader.at_eof()
            crossed = await s.sync({"peer": "p1", "idle": False})
            await asyncio.sleep(1.0)            # the loop sees this close: reopened before sending
            seen = await s.sync({"peer": "p1", "idle": False})
            return first, crossed, seen
        finally:
            s.close()

    replies = asyncio.run(main())
    assert all(isinstance(r, SyncReply) for r in replies)
    assert _metric(sn.get_text("/metrics"), "dragonfly_scheduler_sync_stream_total") == 3
    assert "Traceback" not in sn.logs()


def test_a_stream_idle_past_the_supernodes_timeout_is_reopened_and_the_download_completes(cluster):
    url, sha = cluster.file("f.bin", size=16 * MiB)
    # the seed sends at 8 MiB/s (two slots): a sync about every second, the stream closed after 0.3 s
    sn = cluster.supernode("sn", "--stream-idle-s", "0.3", "--upload-limit", "8M")
    d = cluster.daemon("d0", "--supernode", sn.addr)
    out = cluster.root / "out.bin"
    r = nodes.dfget(url, "-O", str(out), "--daemon", d.addr, "--no-back-source", timeout=60)
    assert r.returncode == 0, r.stderr
    assert _sha(out) == sha
    logs = d.logs()
    assert "sync stream reopened" in logs
    assert "supernode unavailable" not in logs and "registering again" not in logs
    assert _metric(sn.get_text("/metrics"), "dragonfly_scheduler_sync_stream_total") >= 2
    assert "Traceback" not in sn.logs() + logs


@pytest.mark.parametrize("route", ["stream", "http"])
def test_a_held_sync_cut_by_a_restart_is_sent_again_and_told_to_register_again(cluster, route):
    """A sync the supernode holds (long poll) when it is killed and restarted on the same port:
    the daemon's client sends it again to the new process, which does not know the peer, and
    the answer is "register again" (`TaskGone`), not the supernode failing nor a bad request.
    The client's event loop is blocked during the restart, so the cut is seen after it, as a
    daemon busy meanwhile would see it (else its retry could fall in the gap, then fail over)."""
    url, _ = cluster.file("f.bin", size=8 * MiB)
    sn = cluster.supernode("sn", "--upload-limit", "4M")          # the seed has one upload slot
    reg = _register(sn, url, "hog")
    tid, token = reg["task_id"], reg["token"]
    assert len(_post_sync(sn, tid, token, {"peer": "hog", "idle": True})[1]["assign"]) == 1     # ... taken
    _register(sn, url, "p1")
    restarted = []

    async def main() -> None:
        import aiohttp
        async with aiohttp.ClientSession() as session:
            if route == "stream":
                s = await supernodes.SyncStream.open(sn.addr, tid, token, "p1")
                assert s is not None
                ask = s.sync
            else:
                async def ask(body: dict) -> SyncReply:
                    return await supernodes.sync(session, sn.addr, tid, token, body)
            held = asyncio.create_task(ask({"peer": "p1", "idle": True}))           # no slot: held
            await asyncio.sleep(0.5)
            assert not held.done()
            sn.kill()                                  # blocking from here: the loop sees nothing
            restarted.append(nodes.supernode("sn-restarted", cluster.root / "sn", cluster.root / "logs",
                                             "--listen", sn.addr, "--upload-limit", "4M"))
            with pytest.raises(supernodes.TaskGone, match="register again"):
                await held
            if route == "stream":
                s.close()

    try:
        asyncio.run(main())
        m = restarted[0].get_text("/metrics")
        assert _metric(m, "dragonfly_scheduler_sync_stream_total") == 0      # refused before the 101
        assert "Traceback" not in restarted[0].logs()
    finally:
        for n in restarted:
            n.stop()


@pytest.mark.parametrize("extra, streams", [((), 1), (("--no-sync-stream",), 0)], ids=["stream", "http"])
def test_a_supernode_restarted_mid_download_the_daemon_registers_again_and_finishes(cluster, extra, streams):
    """Kill the supernode mid-download and start it again on the same port and data: the new
    process knows the task (its cache) but not the peer; the daemon's next sync is refused with
    409 (the stream's upgrade or error line, or the POST), it registers again and finishes, with
    no back-to-source allowed. The daemon is stopped (SIGSTOP) for the restart so that its next
    sync reaches the new process, as a daemon busy with other parents would, not the gap."""
    url, sha = cluster.file("f.bin", size=24 * MiB)
    sn = cluster.supernode("sn", "--upload-limit", "8M", *extra)    # 3 s of pieces
    d = cluster.daemon("d0", "--supernode", sn.addr)
    out = cluster.root / "out.bin"
    p = nodes.dfget_start(url, "-O", str(out), "--daemon", d.addr, "--no-back-source")
    restarted = None
    try:
        deadline = time.monotonic() + 30
        while _recorded_pieces(cluster.root / "d0") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _recorded_pieces(cluster.root / "d0") < 6, "finished before the restart"
        d.proc.send_signal(signal.SIGSTOP)
        try:
            sn.kill()
            restarted = nodes.supernode("sn-restarted", cluster.root / "sn", cluster.root / "logs",
                                        "--listen", sn.addr, "--upload-limit", "8M", *extra)
        finally:
            d.proc.send_signal(signal.SIGCONT)
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert _sha(out) == sha
        logs = d.logs()
        assert "registering again" in logs and "supernode unavailable" not in logs
        m = restarted.get_text("/metrics")
        assert _metric(m, "dragonfly_scheduler_register_peer_total") >= 1
        assert min(_metric(m, "dragonfly_scheduler_sync_stream_total"), 1) == streams
        assert _metric(m, "dragonfly_scheduler_sync_total") >= 1
        assert "Traceback" not in restarted.logs() + logs
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
        if restarted is not None:
            restarted.stop()


def test_a_bad_stream_idle_timeout_is_one_usage_line(tmp_path):
    for value in ("0", "nan"):
        r = nodes.subprocess_run([nodes.PY, "-m", "experiments.cli", "supernode", "--listen", "127.0.0.1:0",
                                  "--data", str(tmp_path / "sn"), f"--stream-idle-s={value}"], timeout=30)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip() == "dfly: error: --stream-idle-s must be a finite number of seconds > 0"


class Forgetful:
    """A supernode that registers every peer and forgets the task at every sync (409), as a
    broken one that restarts or collects the task in a loop would: real HTTP on loopback, in a
    thread of the test process."""

    def __init__(self, length: int):
        import threading
        from aiohttp import web
        self.registrations = 0
        self.length = length
        app = web.Application()
        app.router.add_post("/v1/register", self._register)
        app.router.add_post("/v1/tasks/{task}/sync", self._sync)
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.addr = "127.0.0.1:%d" % site._server.sockets[0].getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def _register(self, request):
        from aiohttp import web
        self.registrations += 1
        return web.json_response({"task_id": "ab" * 32, "length": self.length, "piece_size": 4 * MiB,
                                  "token": "t" * 32, "stream": False})

    async def _sync(self, request):
        from aiohttp import web
        return web.json_response({"error": "unknown peer: register again"}, status=409)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_a_supernode_that_keeps_forgetting_the_task_is_given_up_for_the_source(cluster):
    """Registering again after a restart is routine, but not forever: after FORGOTTEN_LIMIT
    re-registrations in a row with no piece gained the daemon treats the supernode as down
    and, with back-to-source allowed, downloads from the origin."""
    from dfnet.daemon.download import FORGOTTEN_LIMIT
    url, sha = cluster.file("f.bin", size=8 * MiB)
    sn = Forgetful(8 * MiB)
    try:
        d = cluster.daemon("d0", "--supernode", sn.addr)
        out = cluster.root / "out.bin"
        r = nodes.dfget(url, "-O", str(out), "--daemon", d.addr, timeout=60)
        assert r.returncode == 0, r.stderr
        assert _sha(out) == sha
        assert sn.registrations == FORGOTTEN_LIMIT + 1
        logs = d.logs()
        assert f"forgot the task {FORGOTTEN_LIMIT + 1} times in a row with no piece gained" in logs
        assert "downloading from the source" in logs and "Traceback" not in logs
    finally:
        sn.stop()
