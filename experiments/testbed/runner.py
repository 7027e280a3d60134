"""One testbed run: build the plan for real, distribute the file, measure, tear everything down.

Owns the order of a run and its clean-up guarantee:

1. sweep what crashed runs left (namespaces, links, run folders under a dead `dft<pid>` tag);
2. build: one bridge per IDC (joined by a router namespace whose legs are shaped at the
   inter-IDC capacity), one namespace per host, supernode and the origin, each on a veth
   shaped both ways (`netns.Network`);
3. start the origin, then (P2P) the supernodes and one daemon per host, as real processes;
4. at each host's arrival, its download starts (`clients`); churned hosts and failing
   supernodes are SIGKILLed at their time;
5. summarise in `dfly sim run --json`'s keys, from measured times and the origin's counter.

Rules kept here:
- Clean-up runs on success, error, Ctrl-C and SIGTERM (`run` turns SIGTERM into
  KeyboardInterrupt while it runs); a SIGKILLed orchestrator is cleaned by the next run's sweep.
- Completion time is finish minus the host's *scheduled* arrival, as in the simulator; a
  thread that wakes late because the CPU is busy is counted against the testbed, not hidden.
- Daemons are given their NIC rates as --download-limit/--upload-limit, and supernodes their
  upload as --upload-limit, as an operator would: the scheduler then knows each node's upload
  and sizes its upload slots from it, as the simulator's does (an unlimited supernode would
  take every child at once). tc still does the shaping (it counts wire bytes, so it binds first).
- Progress goes to stderr, the summary to the caller.
"""
from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from dfsim.sim import slot_width
from experiments.testbed import clients, netns
from experiments.testbed.plan import Endpoint, Plan
from experiments.testbed.procs import NodeProcess

SUPERNODE_PORT = 8002
DAEMON_PORT = 65001
UPLOAD_PORT = 65002
ORIGIN_PORT = 8080
START_TIMEOUT_S = 90.0      # every node up; Python start-up of 60 daemons on 2 busy cores
FILE_NAME = "payload.bin"


def log(msg: str) -> None:
    print(f"testbed: {msg}", file=sys.stderr, flush=True)


def _sweep_dirs(base: Path) -> None:
    for d in base.glob(f"{netns.TAG_PREFIX}*"):
        if d.is_dir() and not netns.tag_alive(d.name) and (d / ".testbed").exists():
            shutil.rmtree(d, ignore_errors=True)


def _write_payload(path: Path, size: int, seed: int) -> str:
    """A file of `size` pseudo-random bytes (incompressible, reproducible); returns its sha256."""
    rnd = random.Random(seed)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = rnd.randbytes(min(8 << 20, left))
            f.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def _busy_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


class Testbed:
    def __init__(self, plan: Plan, policy: str = "heuristic:d2", timeout_s: float | None = None,
                 workdir: Path | None = None, keep_outputs: bool = False, node_log_level: str = "warning",
                 supernode_log_level: str | None = None):
        self.plan = plan
        self.policy = policy
        sc = plan.scenario
        spread = max((h.arrival_s for h in plan.hosts), default=0.0)
        expected = plan.client_server_s if plan.mode == "source" else plan.lower_bound_s
        self.timeout_s = timeout_s or 60.0 + spread + 4.0 * expected
        self.tag = netns.run_tag()
        self.base = workdir or Path(tempfile.gettempdir())
        self.dir = self.base / self.tag
        self.net = netns.Network(self.tag)
        self.nodes: list[NodeProcess] = []
        self.daemons: dict[int, NodeProcess] = {}
        self.supernodes: list[NodeProcess] = []
        self.keep_outputs = keep_outputs
        self.node_log_level = node_log_level
        self.supernode_log_level = supernode_log_level or node_log_level
        self.file_sha256 = ""
        self.outputs: dict[int, Path] = {}
        self.size = sc.file.size
        self.killed: set[int] = set()

    # ---- the whole run -----------------------------------------------------------------------
    def run(self) -> dict:
        previous = signal.getsignal(signal.SIGTERM)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            removed = netns.sweep_leftovers()
            _sweep_dirs(self.base)
            if removed:
                log(f"removed {len(removed)} leftovers of crashed runs: {' '.join(removed[:6])}"
                    f"{' ...' if len(removed) > 6 else ''}")
            wall0 = time.monotonic()
            self._build()
            self._start_nodes()
            return self._distribute(wall0)
        finally:
            self.close()
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, previous)

    def close(self) -> None:
        for node in reversed(self.nodes):
            try:
                node.stop()
            except Exception as e:       # keep going: the sweep below kills what is left
                log(f"stopping {node.name}: {e}")
        errors = self.net.teardown()
        for e in errors:
            log(f"clean-up: {e}")
        if not self.keep_outputs:
            shutil.rmtree(self.dir, ignore_errors=True)
        log(f"cleaned up {self.tag} ({len(self.net.namespaces)} namespaces)")

    # ---- building ----------------------------------------------------------------------------
    def _build(self) -> None:
        plan = self.plan
        (self.dir / "files").mkdir(parents=True)
        (self.dir / "logs").mkdir()
        (self.dir / ".testbed").touch()        # marks the folder as ours for the sweep
        self.file_sha256 = _write_payload(self.dir / "files" / FILE_NAME, self.size, plan.scenario.run.seed)
        t = time.monotonic()
        bridges = {idc: self.net.bridge(f"b{k}") for k, idc in enumerate(plan.idcs)}
        two_level = len(plan.idcs) > 1
        endpoints: list[Endpoint] = [plan.origin, *plan.supernodes, *plan.hosts]
        for ep in endpoints:
            ns = self.net.namespace(ep.name)
            self.net.attach(ns, ep.name, bridges[ep.idc], f"{ep.ip}/16",
                            upload_bps=ep.upload_bps, download_bps=ep.download_bps)
            if two_level:
                self.net.route(ns, plan.router_ip(ep.idc))
        if two_level:
            router = self.net.namespace("r")
            for k, idc in enumerate(plan.idcs):
                # an IDC's leg carries everything that enters or leaves it: shape it at the
                # largest link it has (exact with two IDCs); an IDC with an unlisted pair is open
                caps = [c for (a, b), c in plan.links.items() if a == idc]
                open_pair = len(caps) < len(plan.idcs) - 1
                cap = None if open_pair or not caps else max(caps)
                self.net.attach(router, f"r{k}", bridges[idc], f"{plan.router_ip(idc)}/16", inner=f"leg{k}",
                                upload_bps=cap, download_bps=cap)
            self.net.forwarding(router)
        log(f"built {len(endpoints)} namespaces on {len(bridges)} bridge(s) in {time.monotonic() - t:.1f} s")

    def _start_nodes(self) -> None:
        plan, logs = self.plan, self.dir / "logs"
        t = time.monotonic()
        origin = NodeProcess("origin", f"{self.tag}-o",
                             ["-m", "experiments.origin", str(self.dir / "files"),
                              "--listen", f"{plan.origin.ip}:{ORIGIN_PORT}"], logs)
        self.nodes.append(origin)
        self.origin = origin
        sc = plan.scenario
        if plan.mode == "p2p":
            for s in plan.supernodes:
                argv = ["-m", "experiments.cli", "supernode", "--listen", f"{s.ip}:{SUPERNODE_PORT}",
                        "--data", str(self.dir / s.name), "--policy", self.policy,
                        "--upload-limit", str(int(s.upload_bps)),
                        "--concurrent-pieces", str(sc.scheduler.concurrent_pieces), "--log-level", self.supernode_log_level,
                        "--min-upload-rate", str(int(slot_width(sc.scheduler, [h.download_bps for h in plan.hosts])))]
                if sc.file.piece_size:
                    argv += ["--piece-size", str(sc.file.piece_size)]
                if s.idc:
                    argv += ["--idc", s.idc]
                if s.location:
                    argv += ["--location", s.location]
                node = NodeProcess(s.name, f"{self.tag}-{s.name}", argv, logs)
                self.nodes.append(node)
                self.supernodes.append(node)
            # every daemon lists every supernode in the same order: the live runtime schedules a
            # task on one supernode and fails over to the next (the simulator splits pieces)
            sn_flags = [x for s in plan.supernodes for x in ("--supernode", f"{s.ip}:{SUPERNODE_PORT}")]
            for h in plan.hosts:
                argv = ["-m", "experiments.cli", "daemon", "--listen", f"127.0.0.1:{DAEMON_PORT}",
                        "--upload-listen", f"{h.ip}:{UPLOAD_PORT}", "--advertise", h.ip, *sn_flags,
                        "--data", str(self.dir / h.name), "--download-limit", str(int(h.download_bps)),
                        "--upload-limit", str(int(h.upload_bps)), "--log-level", self.node_log_level]
                if h.idc:
                    argv += ["--idc", h.idc]
                if h.location:
                    argv += ["--location", h.location]
                node = NodeProcess(h.name, f"{self.tag}-{h.name}", argv, logs)
                self.nodes.append(node)
                self.daemons[h.index] = node
        deadline = time.monotonic() + START_TIMEOUT_S
        for node in self.nodes:
            node.wait_ready(deadline)
        log(f"started {len(self.nodes)} processes (origin, {len(self.supernodes)} supernodes, "
            f"{len(self.daemons)} daemons) in {time.monotonic() - t:.1f} s")

    # ---- the distribution ----------------------------------------------------------------------
    def _distribute(self, wall0: float) -> dict:
        plan = self.plan
        url_path = f"/{FILE_NAME}"
        origin_addr = f"{plan.origin.ip}:{ORIGIN_PORT}"
        outcomes = {h.index: clients.Outcome(h.index) for h in plan.hosts}
        cpu0 = {n.name: n.cpu_s() for n in self.nodes}
        busy0 = _busy_ticks()
        t0 = time.monotonic() + 0.5           # every thread is waiting before the first arrival
        threads = []
        for h in plan.hosts:
            ns = f"{self.tag}-{h.name}"
            if plan.mode == "p2p":
                out = self.dir / h.name / "out.bin"
                self.outputs[h.index] = out
                threads.append(clients.start_at(t0 + h.arrival_s, clients.p2p_download, ns, DAEMON_PORT,
                                                f"http://{origin_addr}{url_path}", str(out), outcomes[h.index]))
            else:
                threads.append(clients.start_at(t0 + h.arrival_s, clients.source_download, ns, origin_addr,
                                                url_path, outcomes[h.index]))
        kills = self._schedule_kills(t0, outcomes)
        log(f"{plan.mode}: {len(plan.hosts)} hosts fetch {self.size / 2**20:.0f} MiB "
            f"(lower bound {plan.lower_bound_s:.1f} s, client-server {plan.client_server_s:.1f} s, "
            f"timeout {self.timeout_s:.0f} s)")
        deadline = t0 + self.timeout_s
        last_note = time.monotonic()
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            threads[0].join(0.2) if threads[0].is_alive() else time.sleep(0.2)
            if time.monotonic() - last_note >= 5:
                last_note = time.monotonic()
                done = sum(o.finished is not None for o in outcomes.values())
                log(f"{last_note - t0:5.0f} s: {done}/{len(outcomes)} finished")
        for k in kills:
            k.cancel()
        end = time.monotonic()
        busy1 = _busy_ticks()
        cpu = {n.name: n.cpu_s() - cpu0[n.name] for n in self.nodes}
        for o in outcomes.values():
            if o.finished is None and o.error is None:
                o.error = f"did not finish within the {self.timeout_s:.0f} s timeout"
        return self._summary(outcomes, t0, end, wall0, cpu, busy0, busy1)

    def _schedule_kills(self, t0: float, outcomes: dict[int, clients.Outcome]) -> list[threading.Timer]:
        """Churned hosts lose their daemon (SIGKILL) at their exit time unless they finished
        first, as in the simulator; a supernode with fail_at_s dies at that time."""
        timers = []

        def kill_host(index: int) -> None:
            if outcomes[index].finished is not None:
                return
            self.killed.add(index)
            self.daemons[index].kill()
            log(f"host h{index} killed (churn)")

        def fail(node: NodeProcess) -> None:
            node.kill()
            log(f"supernode {node.name} killed (fail_at_s)")

        for h in self.plan.hosts:
            if h.leave_at_s is not None and h.index in self.daemons:
                timers.append(threading.Timer(max(0.0, t0 + h.leave_at_s - time.monotonic()), kill_host, (h.index,)))
        for s, node in zip(self.plan.supernodes, self.supernodes):
            if s.fail_at_s is not None:
                timers.append(threading.Timer(max(0.0, t0 + s.fail_at_s - time.monotonic()), fail, (node,)))
        for t in timers:
            t.daemon = True
            t.start()
        return timers

    # ---- the summary ----------------------------------------------------------------------------
    def origin_stats(self) -> dict:
        """The origin's counters, asked from inside its namespace."""
        result: dict = {}

        def ask() -> None:
            import http.client
            import json
            netns.enter(f"{self.tag}-o")
            conn = http.client.HTTPConnection(self.plan.origin.ip, ORIGIN_PORT, timeout=10)
            conn.request("GET", "/_stats")
            result.update(json.loads(conn.getresponse().read()))
            conn.close()
        t = threading.Thread(target=ask)
        t.start()
        t.join(15)
        return result

    def _cross_idc_bytes(self) -> int:
        if len(self.plan.idcs) < 2:
            return 0
        return sum(self.net.tx_bytes(f"{self.tag}-r", f"leg{k}") for k in range(len(self.plan.idcs)))

    def _summary(self, outcomes, t0, end, wall0, cpu, busy0, busy1) -> dict:
        plan, sc = self.plan, self.plan.scenario
        wrong = self._verify(outcomes)       # a wrong file is a failed host, not a finished one
        times, failed, left = [], [], []
        for h in plan.hosts:
            o = outcomes[h.index]
            if h.index in wrong:
                failed.append({"host": h.index, "error": wrong[h.index]})
            elif o.finished is not None and o.error is None:
                times.append(o.finished - (t0 + h.arrival_s))
            elif h.index in self.killed:
                left.append(h.index)
            else:
                failed.append({"host": h.index, "error": o.error})
        ct = np.array(times)

        def stat(fn) -> float | None:
            return round(float(fn(ct)), 3) if len(ct) else None

        daemon_cpu = [cpu[n.name] for n in self.daemons.values()]
        run_s = end - t0
        cores = os.cpu_count() or 1
        piece = self._piece_bytes()
        summary = {
            "scenario": sc.name,
            "policy": self.policy if plan.mode == "p2p" else "source",
            "mode": plan.mode,
            "hosts": len(plan.hosts),
            "file_bytes": self.size,
            "piece_bytes": piece,
            "completion_s": {"mean": stat(np.mean), "p50": stat(lambda a: np.percentile(a, 50)),
                             "p95": stat(lambda a: np.percentile(a, 95)),
                             "p99": stat(lambda a: np.percentile(a, 99)), "max": stat(np.max)},
            "finished_hosts": len(ct),
            "source_egress_bytes": int(self.origin_stats().get("bytes_sent", -1)),
            "cross_idc_bytes": self._cross_idc_bytes(),
            "lower_bound_s": round(plan.lower_bound_s, 3),
            "client_server_s": round(plan.client_server_s, 3),
            "events": None,                   # a simulator measure; the testbed has none
            "wall_s": round(time.monotonic() - wall0, 3),
            "peak_rss_bytes": max((n.peak_rss_bytes() for n in self.nodes), default=0),
            "left_hosts": len(left),
            # what only a live run has
            "left": [f"h{i}" for i in left],
            "failed_hosts": failed,
            "completion_times_s": [round(x, 3) for x in times],
            "cpu": {"daemons_s": round(sum(daemon_cpu), 2),
                    "daemon_max_s": round(max(daemon_cpu, default=0.0), 2),
                    "supernodes_s": round(sum(cpu[n.name] for n in self.supernodes), 2),
                    "origin_s": round(cpu["origin"], 2),
                    "run_s": round(run_s, 2),
                    "cores": cores,
                    "daemons_share_of_machine": round(sum(daemon_cpu) / (run_s * cores), 3),
                    "machine_busy": round((busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1), 3)},
            "notes": plan.notes,
        }
        log(f"done: {len(ct)}/{len(plan.hosts)} finished, {len(left)} left, {len(failed)} failed; "
            f"p50 {summary['completion_s']['p50']} s, max {summary['completion_s']['max']} s; "
            f"daemons used {summary['cpu']['daemons_share_of_machine'] * 100:.0f}% of the machine "
            f"(machine busy {summary['cpu']['machine_busy'] * 100:.0f}%)")
        return summary

    def _verify(self, outcomes) -> dict[int, str]:
        """Digest of every finished host's output; {host: error} for the wrong ones."""
        bad: dict[int, str] = {}
        for index, o in outcomes.items():
            if o.finished is None or o.error is not None:
                continue
            if self.plan.mode == "source":
                got = o.sha256
            else:
                h = hashlib.sha256()
                try:
                    with open(self.outputs[index], "rb") as f:
                        while chunk := f.read(8 << 20):
                            h.update(chunk)
                except OSError as e:
                    bad[index] = f"output unreadable: {e}"
                    continue
                got = h.hexdigest()
            if got != self.file_sha256:
                bad[index] = f"wrong content (sha256 {got[:12]}..., expected {self.file_sha256[:12]}...)"
        return bad

    def _piece_bytes(self) -> int:
        from dfnet.core.task import piece_size_for
        return self.plan.scenario.file.piece_size or piece_size_for(self.size)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
