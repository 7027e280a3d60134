"""`dfly config-service` and its client (issue 3, item 4).

The service runs as a real child process (`python -m experiments.cli config-service`) on an
ephemeral port, which it reports as one JSON line `{"listening": "HOST:PORT"}` on stdout.
Requests go through the client module (`dfnet.configservice.client`) or, for malformed ones,
through raw `http.client`. Every service is stopped with SIGTERM and must exit 0 having logged
only JSON lines. Flag errors that happen before the service starts are checked in-process.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import logging
import select
import signal
import socket
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest

from dfnet.configservice.client import (
    ConfigServiceError, SupernodeHeartbeat, SupernodeInfo, get_settings, heartbeat,
    nearest_supernodes, poll_settings, put_settings,
)
from dfnet.configservice.nearest import nearest_first, shared_location_parts
from dfnet.configservice.settings import parse_rate_limit
from experiments.cli import main

ROOT = Path(__file__).resolve().parents[1]
LOG_KEYS = {"ts", "level", "component", "msg"}


# --- the service in a child process ------------------------------------------------------

class Service:
    """One `dfly config-service` child process; `url` is its base URL once it listens."""

    def __init__(self, db: Path | str, *flags: str, listen: str = "127.0.0.1:0"):
        self._stderr = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "experiments.cli", "config-service", "--listen", listen, "--db", str(db), *flags],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
        )
        ready, _, _ = select.select([self.proc.stdout], [], [], 15)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.proc.kill()
            raise AssertionError(f"the service did not report its address: {self._read_stderr()}")
        self.addr = json.loads(line)["listening"]
        self.url = f"http://{self.addr}"

    def stop(self) -> list[dict]:
        """SIGTERM; the service must exit 0 with JSON log lines only. Returns the log records."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=10) == 0
        self.proc.stdout.close()
        records = [json.loads(line) for line in self._read_stderr().splitlines()]
        self._stderr.close()
        assert all(LOG_KEYS <= set(r) for r in records), records
        assert records[-1]["msg"] == "stopped"
        return records

    def _read_stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()


@contextmanager
def service(db: Path | str, *flags: str, listen: str = "127.0.0.1:0"):
    s = Service(db, *flags, listen=listen)
    try:
        yield s
    finally:
        if s.proc.poll() is None:
            s.stop()


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    with service(tmp_path_factory.mktemp("cs") / "config.db") as s:
        yield s


def run(coro_fn, *args, **kwargs):
    """Run `coro_fn(session, *args, **kwargs)` with a fresh aiohttp session."""
    async def go():
        async with aiohttp.ClientSession() as session:
            return await coro_fn(session, *args, **kwargs)
    return asyncio.run(go())


def raw(addr: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, JSON answer) of one plain HTTP request."""
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


# --- supernodes: nearest first, healthy only ---------------------------------------------

def test_healthy_supernodes_nearest_first_for_a_host(svc):
    nodes = [
        SupernodeInfo("hz-busy", "10.0.0.1:8002", "hz", "asia|cn|hz|r1", tasks=7),
        SupernodeInfo("hz-idle", "10.0.0.2:8002", "hz", "asia|cn|hz|r2", tasks=1),
        SupernodeInfo("sg-dc1", "10.1.0.1:8002", "sg", "asia|sg|dc1|r3", tasks=0),
        SupernodeInfo("sg-dc2", "10.1.0.2:8002", "sg", "asia|sg|dc2|r9", tasks=5),
    ]
    for info in nodes:
        assert run(heartbeat, svc.url, info) == 6.0

    # a host in sg, rack r17 of dc2: its IDC first, the longer shared location prefix first,
    # then the other IDC, least loaded first
    got = run(nearest_supernodes, svc.url, "sg", "asia|sg|dc2|r17")
    assert [sn["id"] for sn in got] == ["sg-dc2", "sg-dc1", "hz-idle", "hz-busy"]
    assert {"id", "addr", "idc", "location", "last_seen_s_ago"} <= set(got[0])
    assert got[0]["addr"] == "10.1.0.2:8002" and 0 <= got[0]["last_seen_s_ago"] < 6

    # the same supernodes from hz; and for a host that says nothing, least loaded, then id
    hz = run(nearest_supernodes, svc.url, "hz", "asia|cn|hz|r2")
    assert [sn["id"] for sn in hz] == ["hz-idle", "hz-busy", "sg-dc1", "sg-dc2"]
    anywhere = run(nearest_supernodes, svc.url)
    assert [sn["id"] for sn in anywhere] == ["sg-dc1", "hz-idle", "sg-dc2", "hz-busy"]

    # a heartbeat refreshes the record: hz-busy now idle comes first among hz's
    run(heartbeat, svc.url, SupernodeInfo("hz-busy", "10.0.0.1:8002", "hz", "asia|cn|hz|r1", tasks=0))
    hz = run(nearest_supernodes, svc.url, "hz", "eu")
    assert [sn["id"] for sn in hz][:2] == ["hz-busy", "hz-idle"]


def test_a_supernode_that_stops_heartbeating_disappears_after_the_ttl(tmp_path):
    async def scenario(session, url):
        steady = SupernodeInfo("steady", "127.0.0.1:9001", "hz", "a|b")
        assert await heartbeat(session, url, SupernodeInfo("quiet", "127.0.0.1:9002", "hz", "a|b")) == 1.0
        async with SupernodeHeartbeat(session, url, steady) as hb:
            await asyncio.sleep(0.2)
            both = [sn["id"] for sn in await nearest_supernodes(session, url, "hz", "a|b")]
            await asyncio.sleep(1.3)            # past quiet's TTL; steady beats every 1/3 s
            after = [sn["id"] for sn in await nearest_supernodes(session, url, "hz", "a|b")]
            assert hb.ok and hb.ttl_s == 1.0
        return both, after

    with service(tmp_path / "c.db", "--supernode-ttl", "1") as s:
        both, after = run(scenario, s.url)
        records = s.stop()
    assert both == ["quiet", "steady"]
    assert after == ["steady"]
    assert [r["id"] for r in records if r["msg"] == "supernode lost"] == ["quiet"]


def test_heartbeat_task_survives_the_service_being_down(tmp_path):
    db = tmp_path / "c.db"
    first = Service(db, "--supernode-ttl", "1")
    addr, url = first.addr, first.url

    second: list[Service] = []

    async def scenario(session):
        async with SupernodeHeartbeat(session, url, SupernodeInfo("sn1", "127.0.0.1:9001")) as hb:
            await asyncio.sleep(0.2)
            assert hb.ok
            await asyncio.to_thread(first.stop)
            await asyncio.sleep(1.0)            # three failed heartbeats
            assert hb.ok is False
            second.append(await asyncio.to_thread(Service, db, "--supernode-ttl", "1", listen=addr))
            for _ in range(40):
                if hb.ok and await nearest_supernodes(session, url):
                    break
                await asyncio.sleep(0.1)
            return [sn["id"] for sn in await nearest_supernodes(session, url)]

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    client_log = logging.getLogger("dfnet.configservice.client")
    client_log.addHandler(handler)
    level = client_log.level
    client_log.setLevel(logging.INFO)
    try:
        assert run(scenario) == ["sn1"]
    finally:
        client_log.removeHandler(handler)
        client_log.setLevel(level)
        for s in second:                        # after the heartbeat task has stopped
            s.stop()
    messages = [r.getMessage() for r in records]
    assert messages.count("config service heartbeat failing; retrying") == 1
    assert messages.count("config service heartbeat ok") == 2     # at the start, after the restart


# --- settings ----------------------------------------------------------------------------

def test_settings_round_trip_version_and_validation(tmp_path):
    async def scenario(session, url):
        assert await get_settings(session, url) == (0, {})
        v, s = await put_settings(session, url, {"download_limit": "20M", "upload_limit": "100Mbps",
                                                 "task_limit": 1_000_000, "policy": "heuristic:v1",
                                                 "rate_policy": "heuristic:sampling"})
        assert v == 1
        assert s == {"download_limit": 20 * 2**20, "upload_limit": 12_500_000, "task_limit": 1_000_000,
                     "policy": "heuristic:v1", "rate_policy": "heuristic:sampling"}
        assert await get_settings(session, url) == (1, s)
        # setting the same values changes nothing, so the version stays
        assert (await put_settings(session, url, {"policy": "heuristic:v1"}))[0] == 1
        # null deletes; learned policy URIs are accepted by shape
        v, s = await put_settings(session, url, {"task_limit": None, "policy": "models:/piece-selector@production"})
        assert v == 2 and "task_limit" not in s and s["policy"] == "models:/piece-selector@production"

        errors = []
        for bad in ({"download_limit": "20MB"}, {"download_limit": "fast"}, {"upload_limit": 0},
                    {"upload_limit": True}, {"policy": "heuristic:nope"}, {"rate_policy": "heuristic:d2"},
                    {"policy": 3}, {"colour": "blue"}, {"task_limit": "1M", "policy": "bogus"}):
            with pytest.raises(ConfigServiceError) as e:
                await put_settings(session, url, bad)
            errors.append(str(e.value))
        # all or nothing: the last one's good key did not land either
        assert await get_settings(session, url) == (2, s)
        return errors

    with service(tmp_path / "c.db") as svc:
        errors = run(scenario, svc.url)
    assert all("HTTP 400" in e and "\n" not in e for e in errors)
    assert "did you mean 'MB/s'" in errors[0]
    assert "known: heuristic:random" in errors[4]          # names the known piece selectors
    assert "unknown rate controller 'heuristic:d2'" in errors[5]
    assert "unknown setting 'colour'" in errors[7]


def test_nodes_pick_up_new_settings_by_polling(svc):
    async def scenario(session):
        seen = []
        poller = asyncio.create_task(poll_settings(session, svc.url, lambda v, s: seen.append((v, s)), interval_s=0.05))
        await asyncio.sleep(0.2)
        version, _ = await put_settings(session, svc.url, {"download_limit": "50MB/s"})
        await asyncio.sleep(0.3)
        poller.cancel()
        return seen, version

    seen, version = run(scenario)
    assert len(seen) == 2                       # the first answer, then the change; no repeats
    assert seen[-1][0] == version and seen[-1][1]["download_limit"] == 50_000_000


def test_settings_persist_across_a_restart(tmp_path):
    db = tmp_path / "persist.db"
    with service(db) as first:
        written = run(put_settings, first.url, {"upload_limit": "1Gbps", "policy": "heuristic:d2"})
        run(heartbeat, first.url, SupernodeInfo("sn1", "127.0.0.1:9001"))
    with service(f"sqlite:///{db}") as second:        # the same file, named by URL
        assert run(get_settings, second.url) == written == (1, {"upload_limit": 125_000_000, "policy": "heuristic:d2"})
        assert [sn["id"] for sn in run(nearest_supernodes, second.url)] == ["sn1"]   # younger than its TTL


# --- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize("method, path, body, fragment", [
    ("POST", "/v1/supernodes/heartbeat", b"{not json", "not JSON"),
    ("POST", "/v1/supernodes/heartbeat", b"\xff\xfe", "not JSON"),
    ("POST", "/v1/supernodes/heartbeat", b"[1, 2]", "JSON object"),
    ("POST", "/v1/supernodes/heartbeat", b'{"addr": "10.0.0.1:8002", "idc": "", "location": ""}', "missing field 'id'"),
    ("POST", "/v1/supernodes/heartbeat", b'{"id": 7, "addr": "10.0.0.1:8002", "idc": "", "location": ""}', "'id' must be a string"),
    ("POST", "/v1/supernodes/heartbeat", b'{"id": "a", "addr": "nowhere", "idc": "", "location": ""}', "field 'addr'"),
    ("POST", "/v1/supernodes/heartbeat", b'{"id": "a", "addr": "h:0", "idc": "", "location": ""}', "out of range"),
    ("POST", "/v1/supernodes/heartbeat", b'{"id": "a", "addr": "h:1", "idc": "", "location": "", "tasks": -1}', "'tasks'"),
    ("POST", "/v1/supernodes/heartbeat", b'{"id": "a", "addr": "h:1", "idc": "", "location": "", "tasks": 1.5}', "'tasks'"),
    ("POST", "/v1/supernodes/heartbeat", b'{"id": "a", "addr": "h:1", "idc": "", "location": "", "x": 1}', "unknown field 'x'"),
    ("POST", "/v1/supernodes/heartbeat", b'{"id": "a", "addr": "h:1", "idc": "", "location": "a\\nb"}', "printable"),
    ("PUT", "/v1/settings", b'{"download_limit": NaN}', "not JSON"),
    ("PUT", "/v1/settings", b"[" * 100_00 + b"]" * 100_00, "not JSON"),
    ("PUT", "/v1/settings", b'{"download_limit": "' + b"9" * 70_000 + b'"}', "larger than 65536"),
    ("PUT", "/v1/settings", b"", "not JSON"),
    ("GET", "/v1/supernodes?region=x", None, "unknown query parameter 'region'"),
])
def test_malformed_requests_get_a_400_with_one_line(svc, method, path, body, fragment):
    status, answer = raw(svc.addr, method, path, body)
    assert status == 400
    assert set(answer) == {"error"} and fragment in answer["error"] and "\n" not in answer["error"]


def test_chunked_huge_body_is_refused(svc):
    def chunks():
        for _ in range(20):
            yield b"x" * 8192
    host, port = svc.addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("PUT", "/v1/settings", body=chunks(), encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 400 and "larger than 65536" in json.loads(resp.read())["error"]
    conn.close()


def test_wrong_routes_and_methods_answer_json(svc):
    assert raw(svc.addr, "GET", "/v2/settings") == (404, {"error": "Not Found"})
    assert raw(svc.addr, "DELETE", "/v1/settings") == (405, {"error": "Method Not Allowed"})
    assert raw(svc.addr, "GET", "/healthz") == (200, {"status": "ok"})


def test_client_errors_are_one_line(svc):
    with socket.socket() as s:                   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    for call in (lambda: run(get_settings, closed),
                 lambda: run(nearest_supernodes, closed, "hz", "a"),
                 lambda: run(heartbeat, svc.url, SupernodeInfo("x", "bad address"))):
        with pytest.raises(ConfigServiceError) as e:
            call()
        assert "\n" not in str(e.value)
    assert "field 'addr'" in str(e.value)


@pytest.mark.parametrize("flags, fragment", [
    (["--db", "postgres://db.example/cfg"], "only SQLite"),
    (["--db", "sqlite://relative.db"], "only SQLite"),
    (["--db", "{tmp}/missing/dir/x.db"], "unable to open database file"),
    (["--db", "{tmp}/not-a-db.txt"], "not a database"),
    (["--listen", "localhost"], "not an address"),
    (["--listen", "127.0.0.1:65536"], "out of range"),
    (["--supernode-ttl", "soon"], "not a number"),
])
def test_bad_flags_exit_2_with_one_line(capsys, tmp_path, flags, fragment):
    (tmp_path / "not-a-db.txt").write_text("hello\n")
    argv = ["config-service", "--db", str(tmp_path / "ok.db"), *[f.format(tmp=tmp_path) for f in flags]]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("dfly: error:") and fragment in err
    assert not (tmp_path / "missing").exists()


def test_an_address_in_use_exits_2_with_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        addr = "127.0.0.1:%d" % taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "experiments.cli", "config-service", "--listen", addr,
                               "--db", str(tmp_path / "c.db")], cwd=ROOT, capture_output=True, text=True, timeout=15)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "cannot listen" in proc.stderr and "in use" in proc.stderr


# --- the rules as pure functions ---------------------------------------------------------

@pytest.mark.parametrize("text, bps", [
    (20971520, 20971520), ("20M", 20 * 2**20), ("20m", 20 * 2**20), ("1.5K", 1536), ("100Mbps", 12_500_000),
    ("12.5 MB/s", 12_500_000), ("4MiB/s", 4 * 2**20), ("1Gbps", 125_000_000), ("300", 300),
])
def test_rate_limits_in_bytes_per_second(text, bps):
    assert parse_rate_limit(text) == bps


@pytest.mark.parametrize("text", ["20MB", "mbps", "-5M", "0", "0.4", True, None, [1], "20 M bps", "1e3M", 10**30, "9" * 70])
def test_bad_rate_limits_refused(text):
    with pytest.raises(ValueError):
        parse_rate_limit(text)


def test_location_affinity_counts_leading_parts():
    assert shared_location_parts("a|b|c", "a|b|d") == 2
    assert shared_location_parts("a|b|c", "x|b|c") == 0
    assert shared_location_parts("", "") == 0
    order = nearest_first([{"id": "z", "idc": "", "location": "", "tasks": None},
                           {"id": "a", "idc": "", "location": "", "tasks": None}], "", "")
    assert [sn["id"] for sn in order] == ["a", "z"]
