"""Live runtime benchmarks (issue 3): real processes on loopback, ratios against curl.

    .venv/bin/python tests/benchmarks/bench_live.py [--size 1GiB] [--only NAME] [--route stream|http|both]

1. `single`: one download of a file through supernode + daemon vs `curl` from the same origin
   in the same run (throughput ratio; target >= 0.6), then a second, cached download (new
   daemon, the supernode serves it from its cache after a 304).
2. `fanout`: 8 daemons fetching the same file at once vs 8 concurrent curls: origin egress and
   total time.
3. `memory`: the daemon's peak RSS (VmHWM) for a small and a large file: memory must not grow
   with the file.
4. `capacity`: the supernode's piece assignments per second of its CPU for 1,000 registered
   peers of one task (`heuristic:d2`), driven by a load generator in another process, each
   sync reporting the previous assignments as done: over the sync stream (one connection per
   peer) and over HTTP POSTs (`--route`, default both, each on a fresh supernode); and the
   same decisions without the network (the core alone).
Prints one JSON object per benchmark.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dfnet.core.units import parse_size  # noqa: E402
from tests.live import nodes  # noqa: E402


def make_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        block = os.urandom(1 << 20)
        left = size
        while left > 0:
            f.write(block[: min(left, len(block))])
            left -= len(block)


def curl(url: str, out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["curl", "-sf", "-o", str(out), url], check=True)
    return time.perf_counter() - t0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (and its threads), from /proc."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU time of a process (and its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / os.sysconf("SC_CLK_TCK"), int(fields[12]) / os.sysconf("SC_CLK_TCK")


def vmhwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def bench_single(tmp: Path, size: int) -> dict:
    files, logs = tmp / "files", tmp / "logs"
    make_file(files / "f.bin", size)
    # each timed download starts with no other file's dirty pages to write back: the kernel's
    # writeback of the previous 1 GiB (the test file, curl's copy) shares the 2 cores
    os.sync()
    o = nodes.origin(files, logs)
    sn = nodes.supernode("sn", tmp / "sn", logs, "--log-level", "warning")
    d = nodes.daemon("d", tmp / "d", logs, "--supernode", sn.addr, "--log-level", "warning")
    d2 = nodes.daemon("d2", tmp / "d2", logs, "--supernode", sn.addr, "--log-level", "warning")
    url = f"http://{o.addr}/f.bin"
    try:
        t_curl = curl(url, tmp / "curl.bin")
        os.sync()
        procs = {"origin": o, "supernode": sn, "daemon": d}
        cpu0 = {k: cpu_seconds(n.proc.pid) for k, n in procs.items()}
        t0 = time.perf_counter()
        r = nodes.dfget(url, "-O", str(tmp / "p2p.bin"), "--daemon", d.addr, timeout=3600)
        t_p2p = time.perf_counter() - t0
        assert r.returncode == 0, r.stderr
        # CPU seconds per GB moved, per process: on 2 cores this is what caps throughput
        cpu = {k: round((cpu_seconds(n.proc.pid) - cpu0[k]) / (size / 1e9), 2) for k, n in procs.items()}
        os.sync()
        t0 = time.perf_counter()
        r = nodes.dfget(url, "-O", str(tmp / "cached.bin"), "--daemon", d2.addr, timeout=3600)
        t_cached = time.perf_counter() - t0
        assert r.returncode == 0, r.stderr
        return {"bench": "single", "bytes": size, "curl_MBps": round(size / t_curl / 1e6, 1),
                "dfget_MBps": round(size / t_p2p / 1e6, 1), "ratio_vs_curl": round(t_curl / t_p2p, 3),
                "cached_MBps": round(size / t_cached / 1e6, 1), "cpu_s_per_GB": cpu,
                "origin_bytes": o.get_json("/_stats")["bytes_sent"] - size}
    finally:
        for n in (d2, d, sn, o):
            n.stop()


def bench_fanout(tmp: Path, size: int, n: int = 8) -> dict:
    files, logs = tmp / "files", tmp / "logs"
    make_file(files / "f.bin", size)
    o = nodes.origin(files, logs)
    url = f"http://{o.addr}/f.bin"
    try:
        t0 = time.perf_counter()
        procs = [subprocess.Popen(["curl", "-sf", "-o", str(tmp / f"c{i}.bin"), url]) for i in range(n)]
        assert all(p.wait() == 0 for p in procs)
        t_curl = time.perf_counter() - t0
        curl_bytes = o.get_json("/_stats")["bytes_sent"]
        for i in range(n):
            (tmp / f"c{i}.bin").unlink()
        sn = nodes.supernode("sn", tmp / "sn", logs, "--log-level", "warning")
        ds = [nodes.daemon(f"d{i}", tmp / f"d{i}", logs, "--supernode", sn.addr, "--log-level", "warning")
              for i in range(n)]
        try:
            t0 = time.perf_counter()
            procs = [nodes.dfget_start(url, "-O", str(tmp / f"p{i}.bin"), "--daemon", d.addr) for i, d in enumerate(ds)]
            for p in procs:
                _, err = p.communicate(timeout=3600)
                assert p.returncode == 0, err
            t_p2p = time.perf_counter() - t0
        finally:
            for d in ds + [sn]:
                d.stop()
        p2p_bytes = o.get_json("/_stats")["bytes_sent"] - curl_bytes
        return {"bench": "fanout", "hosts": n, "bytes": size, "curl_s": round(t_curl, 2), "dfget_s": round(t_p2p, 2),
                "curl_origin_x_file": round(curl_bytes / size, 3), "p2p_origin_x_file": round(p2p_bytes / size, 3)}
    finally:
        o.stop()


def bench_memory(tmp: Path, small: int, large: int) -> dict:
    files, logs = tmp / "files", tmp / "logs"
    make_file(files / "small.bin", small)
    make_file(files / "large.bin", large)
    o = nodes.origin(files, logs)
    sn = nodes.supernode("sn", tmp / "sn", logs, "--log-level", "warning")
    out = {"bench": "memory"}
    try:
        for name, size in (("small", small), ("large", large)):
            d = nodes.daemon(f"d-{name}", tmp / f"d-{name}", logs, "--supernode", sn.addr, "--log-level", "warning")
            try:
                r = nodes.dfget(f"http://{o.addr}/{name}.bin", "-O", str(tmp / f"{name}.out"), "--daemon", d.addr,
                                timeout=3600)
                assert r.returncode == 0, r.stderr
                out[f"{name}_bytes"] = size
                out[f"{name}_daemon_peak_rss_MiB"] = round(vmhwm(d.proc.pid) / 2**20, 1)
            finally:
                d.stop()
                (tmp / f"{name}.out").unlink(missing_ok=True)
        out["supernode_peak_rss_MiB"] = round(vmhwm(sn.proc.pid) / 2**20, 1)
        return out
    finally:
        sn.stop()
        o.stop()


CAPACITY_PEERS = 1000


def bench_capacity(tmp: Path, routes: tuple[str, ...] = ("stream", "http")) -> dict:
    """1,000 peers of one task hammer the supernode's syncs from a second process."""
    files, logs = tmp / "files", tmp / "logs"
    make_file(files / "f.bin", 64 << 20)
    o = nodes.origin(files, logs)
    out = {"bench": "capacity", "peers": CAPACITY_PEERS}
    try:
        for route in routes:
            # 256 KiB pieces: 256 pieces, so 1,000 peers need 256,000 assignments
            sn = nodes.supernode(f"sn-{route}", tmp / f"sn-{route}", logs, "--log-level", "warning",
                                 "--piece-size", "256KiB")
            try:
                user0, sys0 = cpu_split(sn.proc.pid)
                gen = subprocess.run([sys.executable, __file__, "--load-generator", sn.addr, f"http://{o.addr}/f.bin",
                                      route], capture_output=True, text=True, timeout=3600)
                user, system = (b - a for a, b in zip((user0, sys0), cpu_split(sn.proc.pid)))
                cpu = user + system
                assert gen.returncode == 0, gen.stderr[-2000:]
                r = json.loads(gen.stdout)
            finally:
                sn.stop()
            # the supernode is one process on one core: assignments per second of its CPU time
            # is its capacity on one core, whatever the load generator and the machine do
            r["supernode_cpu_s"] = round(cpu, 2)
            r["supernode_system_cpu_s"] = round(system, 2)      # the kernel's share: sockets, wake-ups
            r["supernode_us_per_sync"] = round(cpu / r["syncs"] * 1e6)
            r["assignments_per_supernode_cpu_s"] = round(r["assignments"] / cpu)
            out[route] = r
    finally:
        o.stop()
    return {**out, "core_only": core_capacity()}


async def load_generator(addr: str, url: str, route: str) -> dict:
    import aiohttp
    conn = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=conn) as s:
        async def register(i: int) -> tuple[str, dict]:
            body = {"url": url, "peer": {"id": f"p{i}", "addr": f"127.0.0.1:{20000 + i}"}}
            async with s.post(f"http://{addr}/v1/register", json=body) as r:
                return f"p{i}", await r.json()
        regs = await asyncio.gather(*(register(i) for i in range(CAPACITY_PEERS)))
        tid, token = regs[0][1]["task_id"], regs[0][1]["token"]
        await asyncio.sleep(2.0)         # let the seed cut the file
        assigned = 0
        syncs = 0

        async def post(pid: str):
            async def ask(body: dict) -> dict:
                async with s.post(f"http://{addr}/v1/tasks/{tid}/sync", headers={"X-Dfly-Token": token},
                                  json=body) as r:
                    return await r.json()
            return ask

        async def stream(pid: str):
            host, port = addr.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(f"GET /v1/tasks/{tid}/stream?peer={pid} HTTP/1.1\r\nHost: {addr}\r\n"
                         f"Connection: Upgrade\r\nUpgrade: dfly-sync\r\nX-Dfly-Token: {token}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            assert b" 101 " in head, head

            async def ask(body: dict) -> dict:
                writer.write(json.dumps(body).encode() + b"\n")
                return json.loads(await reader.readline())
            return ask

        async def peer(pid: str) -> None:
            nonlocal assigned, syncs
            ask = await (stream if route == "stream" else post)(pid)
            done: list = []
            while True:
                reply = await ask({"peer": pid, "done": done, "idle": not done})
                syncs += 1
                if reply.get("done"):
                    return
                done = [[a[0], a[1], 256 << 10, 0.05] for a in reply["assign"]]
                assigned += len(done)
                if not done:
                    await asyncio.sleep(reply.get("retry_after", 0.05) or 0.05)

        t0 = time.perf_counter()
        await asyncio.gather(*(peer(pid) for pid, _ in regs))
        dt = time.perf_counter() - t0
    return {"route": route, "assignments": assigned, "syncs": syncs, "s": round(dt, 2),
            "assignments_per_s": round(assigned / dt), "assignments_per_sync": round(assigned / max(syncs, 1), 2)}


def core_capacity() -> dict:
    """The same workload straight into the core scheduler (no HTTP): its decision cost."""
    from dfnet.core.scheduler import Decision, Scheduler, SchedulerConfig
    from dfnet.core.swarm import Swarm
    from dfnet.core.task import Task
    from models.loader import load_piece_selector, resolve_upload_slots

    sel = load_piece_selector("heuristic:d2")
    task = Task("0" * 64, "http://x/f", 64 << 20, 256 << 10)
    sw = Swarm(task, *resolve_upload_slots(sel))
    sched = Scheduler(sw, sel, SchedulerConfig(concurrent_pieces=16))   # as `dfly supernode`
    seed = sw.add_peer("seed", is_seed=True)
    for p in range(task.n_pieces):
        sw.add_piece(seed, p)
    peers = [sw.add_peer(f"p{i}") for i in range(CAPACITY_PEERS)]
    pending = {p: [] for p in peers}
    active = list(peers)
    assigned = 0
    now = 0.0
    t0 = time.perf_counter()
    c0 = time.process_time()
    while active:
        nxt = []
        for p in active:
            for a in pending[p]:
                sched.piece_done(p, a.piece, a.parent, task.piece_size, 0.05, now)
            d = sched.request(p, now)
            pending[p] = d.assignments if d.kind == Decision.ASSIGN else []
            assigned += len(pending[p])
            if d.kind != Decision.DONE:
                nxt.append(p)
        active = nxt
        now += 0.05
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    # per CPU second too: comparable with the supernode's figure on a busy machine
    return {"assignments": assigned, "s": round(dt, 2), "assignments_per_s": round(assigned / dt),
            "cpu_s": round(cpu, 2), "assignments_per_cpu_s": round(assigned / cpu)}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--load-generator":
        print(json.dumps(asyncio.run(load_generator(sys.argv[2], sys.argv[3], sys.argv[4]))))
        return
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="1GiB")
    p.add_argument("--only", default=None, choices=["single", "fanout", "memory", "capacity"])
    p.add_argument("--route", default="both", choices=["stream", "http", "both"],
                   help="capacity: the sync stream, HTTP POSTs, or both (default) on fresh supernodes")
    a = p.parse_args()
    size = parse_size(a.size)
    for name in ("single", "fanout", "memory", "capacity"):
        if a.only and a.only != name:
            continue
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as d:
            tmp = Path(d)
            (tmp / "files").mkdir()
            (tmp / "logs").mkdir()
            if name == "single":
                r = bench_single(tmp, size)
            elif name == "fanout":
                r = bench_fanout(tmp, size)
            elif name == "memory":
                r = bench_memory(tmp, 32 << 20, max(size * 2, 2 << 30))
            else:
                r = bench_capacity(tmp, ("stream", "http") if a.route == "both" else (a.route,))
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
