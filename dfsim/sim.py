"""One simulated distribution: a scenario's hosts, supernodes and origin on a flow network.

Owns the simulated bodies around the shared brain: the origin server, supernodes (seeds that
fetch each task from the origin once, cut pieces and offer each as soon as it exists) and
daemons (one per host). Every decision (which piece, from which parent, when to go back to
source) is made by `dfnet.core.Scheduler` with the selected `PieceSelector`; what a P2P limit
is, by the `RateController`. This module only moves simulated bytes and keeps the clock.

Rules kept here:
- Node ids: hosts 0..N-1, supernodes N..N+S-1, the origin -1 (the ids traces use).
- With several supernodes the origin sends the file once: supernode k fetches pieces
  k, k+S, k+2S, ... with range requests; a failed supernode's unfetched pieces pass to the
  survivors.
- `mode = "source"`: every host fetches the whole file from the origin in one stream.
- End game (`scheduler.end_game`, the core's rule 6): a part assignment takes the back half
  of what is left of the piece's running transfer; the piece counts when its
  last part ends, and a part that fails stops the piece's other parts (it is fetched again
  whole). A part is a row of its own in the trace, with its bytes.
- Business traffic and P2P share a NIC: with a P2P limit L and business demand b on a NIC of
  capacity c, P2P gets min(L, c) when both fit, else max(c - b, min(L, c) / 2) (two
  competing aggregates, the fair split when business asks for more than half).
- Everything random draws from generators seeded by the run's seed: same scenario and seed,
  same result.
"""
from __future__ import annotations

import gc
import math
import os
import resource as _resource
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from simpy.core import NORMAL
from simpy.events import Event

from dfnet.core.scheduler import Decision, Scheduler, SchedulerConfig
from dfnet.core.swarm import Swarm, bit_indices
from dfnet.core.task import Task
from models.interfaces import HostLoad, PieceSelector, RateController
from models.loader import resolve_upload_slots

from .environment import CountingEnvironment
from .network import Flow, Network, Resource
from .physics import IdcSide, client_server_s, p2p_lower_bound_s, piece_bound_s
from .scenario import Scenario
from .trace import TraceWriter

ORIGIN = -1
ASSIGN, WAIT = Decision.ASSIGN, Decision.WAIT
# The per-piece path reads the clock as `env._now`: our own `CountingEnvironment` keeps it
# there, and SimPy's `now` property costs a call per read, a few times per piece.
RATE_INTERVAL_S = 1.0


@dataclass(eq=False, slots=True)
class Node:
    """A host, a supernode or the origin, as the network sees it."""

    id: int
    idc: str
    location: str
    up: Resource
    down: Resource | None
    upload_bps: float
    download_bps: float
    is_seed: bool = False
    arrival: float = 0.0
    leave_at: float | None = None
    peer: int = -1                      # index in the task's swarm
    done_at: float | None = None
    left: bool = False
    business_bps: float = 0.0
    p2p_limit: tuple[float, float] = (math.inf, math.inf)    # (download, upload)
    starting: dict = field(default_factory=dict)             # transfers in their start-up overhead
    fetch: list[int] = field(default_factory=list)           # pieces still to get from the origin
    fetching: Flow | None = None
    retry_pending: bool = False

    # A node's flows are its NICs' flows (every path starts at the sender's uplink and crosses
    # the receiver's downlink): the network's ordered sets, in start order, read when a node
    # leaves or its rate is set. Separate sets here cost four dict writes per piece.
    @property
    def downloads(self) -> dict:
        """Flows in (pieces from parents, fetches from the origin), as an ordered set."""
        return self.down.flows if self.down is not None else {}

    @property
    def uploads(self) -> dict:
        """Flows out, as an ordered set."""
        return self.up.flows


class Transfer:
    """A piece (or part of one) on its way from `parent` to `child`. A plain class: one is
    built per piece, and a compiled dataclass runs its generated `__init__` interpreted."""

    __slots__ = ("child", "parent", "piece", "features", "candidates", "assigned", "flow", "parts")

    def __init__(self, child: Node, parent: Node, piece: int, features: np.ndarray | None, candidates: int,
                 assigned: float = 0.0):
        self.child = child
        self.parent = parent
        self.piece = piece
        self.features = features
        self.candidates = candidates
        self.assigned = assigned        # when the scheduler assigned it: its cost runs from here
        self.flow: Flow | None = None   # once bytes flow
        self.parts: list | None = None  # a piece sent in parts: every part's Transfer (shared)


def slot_width(spec, host_downloads: list[float]) -> float:
    """The scheduler's upload-slot width: the scenario's `min_upload_rate`, else the mean host
    download over `concurrent_pieces` (a parent whose slots are all busy has a full uplink and
    no child waits on a trickle). The testbed gives live supernodes the same width."""
    if spec.min_upload_bps:
        return spec.min_upload_bps
    return float(np.mean(host_downloads)) / spec.concurrent_pieces if host_downloads else 0.0


class Simulation:
    def __init__(self, scenario: Scenario, selector: PieceSelector, rate_controller: RateController,
                 seed: int | None = None, trace_path: str | os.PathLike | None = None, progress: bool = False):
        self.sc = scenario
        self.selector = selector
        self.rates = rate_controller
        self.seed = scenario.run.seed if seed is None else seed
        self.mode = scenario.run.mode
        self.env = CountingEnvironment()
        self.net = Network(self.env)
        self.rng = np.random.default_rng(self.seed)
        self.progress = progress
        self.cross_idc_bytes = 0.0
        self.finished = 0
        self.gone = 0
        self.pieces_done = 0
        f = scenario.file
        self.task = Task.for_url(f"http://origin.sim/{scenario.name}", f.size, f.piece_size)
        self._build_nodes()
        # the piece grid and settings the per-piece path reads, looked up once
        # (typed: `Task` and SimPy are not compiled; untyped values make generic object math)
        self._n_pieces: int = self.task.n_pieces
        self._piece_size: int = self.task.piece_size
        self._last_piece: int = self._n_pieces - 1
        self._last_size: int = self.task.piece_length(self._last_piece) if self._n_pieces else 0
        self._end_game = scenario.scheduler.end_game
        self._running: dict[tuple[int, int], Transfer] = {}    # (child, piece) -> its first part
        self._startup = bool(scenario.network.piece_overhead_s or scenario.network.ramp_bytes)
        self._on_piece = self._piece_done
        self.trace = None
        if trace_path:
            self.trace = TraceWriter(trace_path, {"scenario": scenario.name, "seed": str(self.seed),
                                                  "policy": selector.name, "mode": self.mode})

    # ---- building --------------------------------------------------------------------------
    def _build_nodes(self) -> None:
        sc, net, rng = self.sc, self.net, self.rng
        default_idc = sc.source.idc or (sc.idcs[0].name if sc.idcs else "")
        self.origin = Node(ORIGIN, default_idc, "", net.uplink("origin.up", sc.source.upload_bps),
                           None, sc.source.upload_bps, 0.0)
        self.links: dict[tuple[str, str], Resource] = {}
        for link in sc.links:
            a, b = link.between
            self.links[(a, b)] = net.uplink(f"link.{a}>{b}", link.capacity_bps)
            self.links[(b, a)] = net.uplink(f"link.{b}>{a}", link.capacity_bps)
        self.hosts: list[Node] = []
        self._backgrounds: list[tuple[Node, object]] = []
        spread = sc.run.arrival.spread_s if sc.run.arrival.kind == "uniform" else 0.0
        for group in sc.hosts:
            down, up = group.draw_nics(rng, group.count)
            arrivals = rng.uniform(0.0, spread, group.count) if spread > 0 else np.zeros(group.count)
            leaves = (rng.random(group.count) < group.churn.leave_fraction) if group.churn else \
                np.zeros(group.count, dtype=bool)
            leave_frac = rng.uniform(0.1, 0.9, group.count)
            for i in range(group.count):
                hid = len(self.hosts)
                node = Node(hid, group.idc or default_idc, group.location,
                            net.uplink(f"h{hid}.up", float(up[i])), net.downlink(f"h{hid}.down", float(down[i])),
                            float(up[i]), float(down[i]), arrival=float(arrivals[i]))
                if leaves[i]:
                    node.leave_at = float(leave_frac[i])       # scaled once the bound is known
                if group.background:
                    self._backgrounds.append((node, group.background))
                self.hosts.append(node)
        n = len(self.hosts)
        self.supernodes: list[Node] = []
        self._failures: list[tuple[Node, float]] = []
        if self.mode == "p2p":
            for sgroup in sc.supernodes:
                for _ in range(sgroup.count):
                    sid = n + len(self.supernodes)
                    node = Node(sid, sgroup.idc or default_idc, sgroup.location,
                                net.uplink(f"s{sid}.up", sgroup.upload_bps),
                                net.downlink(f"s{sid}.down", sgroup.download_bps),
                                sgroup.upload_bps, sgroup.download_bps, is_seed=True)
                    self.supernodes.append(node)
                    if sgroup.fail_at_s is not None:
                        self._failures.append((node, sgroup.fail_at_s))
        downs = np.array([h.download_bps for h in self.hosts])
        ups = np.array([h.upload_bps for h in self.hosts])
        size = sc.file.size
        self.client_server_s = client_server_s(size, n, sc.source.upload_bps, downs)
        staying = np.array([h.leave_at is None for h in self.hosts], dtype=bool)
        sides: dict[str, list] = {}          # idc -> [finishing hosts, upload, has origin]
        for node in [self.origin, *self.supernodes, *self.hosts]:
            side = sides.setdefault(node.idc, [0, 0.0, False])
            side[1] += node.upload_bps
            side[2] = side[2] or node is self.origin
            if 0 <= node.id < n and node.leave_at is None:      # a host that must finish
                side[0] += 1
        seeds_bps = sum(s.upload_bps for s in self.supernodes)
        self.lower_bound_s = p2p_lower_bound_s(size, sc.source.upload_bps, seeds_bps, downs[staying],
                                               ups, spread, {k: IdcSide(*v) for k, v in sides.items()},
                                               {k: r.capacity for k, r in self.links.items()})
        self.piece_bound_s = max(self.lower_bound_s, piece_bound_s(
            size, self.task.piece_size, sc.source.upload_bps + seeds_bps,
            int(staying.sum()), ups, spread))
        for h in self.hosts:
            if h.leave_at is not None:     # leave somewhere inside the download, not after it
                h.leave_at = h.arrival + h.leave_at * self.lower_bound_s

    # paths are typed as plain tuples: a node's `down` is None for the origin alone, which no
    # path ends at, and the network takes them as tuples of resources
    def _piece_path(self, parent: Node, child: Node) -> tuple:
        # the common case first: no inter-IDC link to look up
        return (parent.up, child.down) if parent.idc == child.idc or not self.links else \
            self._path(parent, child)[0]

    def _path(self, src: Node, dst: Node) -> tuple[tuple, bool]:
        cross = src.idc != dst.idc
        link = self.links.get((src.idc, dst.idc)) if cross else None
        return ((src.up, dst.down, link) if link else (src.up, dst.down)), cross

    # ---- running ---------------------------------------------------------------------------
    def run(self) -> dict:
        env = self.env
        wall0 = time.perf_counter()
        self._stop = env.event()
        self._bar = self._progress_bar()
        if self.mode == "p2p":
            self._start_p2p()
        else:
            for h in self.hosts:
                self._at(h.arrival, self._source_download, h)
        for h in self.hosts:
            if h.leave_at is not None:
                self._at(h.leave_at, self._leave, h)
        for node, bg in self._backgrounds:
            env.process(self._business(node, bg))
        if not getattr(self.rates, "constant", False):
            for h in self.hosts:
                env.process(self._rate_loop(h))
        limit = self.sc.run.max_sim_s or max(50.0 * self.lower_bound_s, 2.0 * self.client_server_s, 600.0)
        self._at(limit, lambda: self._stop.triggered or self._stop.succeed())
        if self.pending() == 0:
            self._stop.succeed()
        # The per-piece path makes no reference cycles (the end game breaks its own, see
        # `_piece_done`), so the cyclic garbage collector finds nothing while the clock runs,
        # yet its passes over each transfer's short-lived objects cost 11-13% of a Double 11
        # run: it is off until the run ends. `tests/test_sim.py` checks that a run's cyclic
        # garbage does not grow with its pieces.
        collecting = gc.isenabled()
        gc.disable()
        try:
            env.run(until=self._stop)
        finally:
            if collecting:
                gc.enable()
        if self._bar is not None:
            self._bar.close()
        if self.trace is not None:
            self.trace.close()
        return self.summary(time.perf_counter() - wall0)

    def pending(self) -> int:
        return len(self.hosts) - self.finished - self.gone

    def _at(self, t: float, fn, *args) -> None:
        # what `env.timeout(max(0.0, t - now))` schedules, built without Timeout's checks: a
        # waiting child's retry costs one of these, a third of a piece's worth of them
        env = self.env
        delay = t - env._now
        ev = Event(env)
        ev._ok = True
        ev._value = None
        ev.callbacks.append(lambda _e: fn(*args))
        env.schedule(ev, NORMAL, delay if delay > 0.0 else 0.0)

    def _host_finished(self, h: Node) -> None:
        h.done_at = self.env.now
        self.finished += 1
        if self._bar is not None and self.mode == "source":
            self._bar.update(1)
        self._check_stop()

    # ---- source mode ------------------------------------------------------------------------
    def _source_download(self, h: Node) -> None:
        if h.left:
            return
        path, _ = self._path(self.origin, h)
        h.fetching = self.net.start(path, self.sc.file.size, self._source_done, tag=h)

    def _source_done(self, flow: Flow) -> None:
        h = flow.tag
        h.fetching = None
        cross = h.idc != self.origin.idc
        if cross:
            self.cross_idc_bytes += flow.size
        if self.trace is not None:          # the whole file is one transfer: piece -1
            self.trace.add(flow.started, h.id, ORIGIN, -1, int(flow.size), self.env.now - flow.started,
                           cross, "ok", 0, None)
        self._host_finished(h)

    # ---- P2P mode ---------------------------------------------------------------------------
    def _start_p2p(self) -> None:
        sc = self.sc
        slots, seed_slots = resolve_upload_slots(self.selector)
        s = sc.scheduler
        # an upload slot is as wide as a typical child's per-piece download share, so a parent
        # with all slots busy has its uplink full and no child waits on a trickle
        slot_bps = slot_width(s, [h.download_bps for h in self.hosts])
        self.swarm = Swarm(self.task, s.upload_slots or slots, s.seed_upload_slots or seed_slots,
                           min_upload_bps=slot_bps, capacity=len(self.hosts) + len(self.supernodes) + 1)
        if s.link_slots:
            # a link has slots as an uplink does: as many transfers as it carries at a slot's width
            for link in sc.links:
                slots = max(1, math.ceil(link.capacity_bps / slot_bps - 1e-9)) if slot_bps > 0 else 1
                a, b = link.between
                self.swarm.limit_link(a, b, slots)
                self.swarm.limit_link(b, a, slots)
        self.sched = Scheduler(self.swarm, self.selector,
                               SchedulerConfig(concurrent_pieces=s.concurrent_pieces,
                                               parents_per_piece=max(1, -(-s.parent_sample // 8)),
                                               end_game=s.end_game),
                               seed=self.seed + 1, keep_features=self.trace is not None)
        self.by_peer: list[Node] = []
        n_seeds = len(self.supernodes)
        for k, sn in enumerate(self.supernodes):
            sn.peer = self._register(sn)
            sn.fetch = list(range(k, self.task.n_pieces, n_seeds))
        first = min((h.arrival for h in self.hosts), default=0.0)
        for sn in self.supernodes:             # the CDN fetches on the first request
            self._at(first, self._fetch_next, sn)
        for sn, t in self._failures:
            self._at(t, self._leave, sn)
        for h in self.hosts:
            self._at(h.arrival, self._arrive, h)

    def _register(self, node: Node) -> int:
        peer = self.swarm.add_peer(node.id, is_seed=node.is_seed, idc=node.idc, location=node.location,
                                   upload_bps=node.upload_bps, download_bps=node.download_bps)
        self.by_peer.append(node)
        return peer

    def _arrive(self, h: Node) -> None:
        if h.left:
            return
        h.peer = self._register(h)
        if self.task.n_pieces == 0:
            self._host_finished(h)
            return
        self._pump(h)

    def _pump(self, h: Node) -> None:
        """Ask the scheduler what `h` should do, and do it."""
        if h.left or h.done_at is not None:
            return
        now: float = self.env._now
        d = self.sched.request(h.peer, now)
        kind = d.kind
        if kind == ASSIGN:
            by_peer = self.by_peer
            for a in d.assignments:
                parent = by_peer[a.parent]
                t = Transfer(h, parent, a.piece, a.features, d.candidates, now)
                if a.part:
                    self._split(t)
                    continue
                if not self._startup:
                    self._send(t)
                    continue
                # the piece's slot is held, and no byte flows, for its round trips and ramp-up
                h.starting[t] = parent.starting[t] = None
                rate = min(h.download_bps, parent.upload_bps)
                net = self.sc.network
                self._at(now + net.piece_overhead_s + net.ramp_bytes / rate, self._started, t)
        elif kind == WAIT:
            if not h.retry_pending:
                h.retry_pending = True
                self._at(now + d.retry_after, self._retry, h)
        elif kind == Decision.BACK_TO_SOURCE:
            # fetch from the origin what no online peer holds; P2P carries on for the rest
            sw = self.swarm
            h.fetch = bit_indices(sw.full_bits & ~sw.have_bits[h.peer] & ~sw.avail_bits)
            self._fetch_next(h)

    def _split(self, t: Transfer) -> None:
        """Rule 6: the new parent takes the back half of what is left of the piece's running
        transfer (its only one: the scheduler lends a piece out once). With nothing left to
        give, the part ends empty at once."""
        first = self._running[(t.child.id, t.piece)]
        flow = first.flow
        assert flow is not None             # a running piece's first part has its flow
        cut = math.floor(self.net.left(flow) / 2)
        child, parent = t.child, t.parent
        if cut <= 0:
            # an empty part: its piece ends this instant
            now: float = self.env._now
            self._at(now, lambda: self._wake(self.sched.part_done(child.peer, t.piece, parent.peer, 0, now)))
            return
        first.parts = t.parts = [first, t]
        self.net.shrink(flow, cut)
        t.flow = self.net.start(self._piece_path(parent, child), cut, self._on_piece, t)

    def _started(self, t: Transfer) -> None:
        if t in t.child.starting:               # else an end left during the start-up
            del t.child.starting[t], t.parent.starting[t]
            self._send(t)

    def _send(self, t: Transfer) -> None:
        """The piece's bytes start to flow."""
        child, parent = t.child, t.parent
        size = self._piece_size if t.piece != self._last_piece else self._last_size
        flow = self.net.start(self._piece_path(parent, child), size, self._on_piece, t)
        if self._end_game:
            t.flow = flow
            self._running[(child.id, t.piece)] = t

    def _retry(self, h: Node) -> None:
        h.retry_pending = False
        self._pump(h)

    def _wake(self, peers: list[int]) -> None:
        for p in peers:
            self._pump(self.by_peer[p])

    def _piece_done(self, flow: Flow) -> None:
        t: Transfer = flow.tag
        child, parent = t.child, t.parent
        now: float = self.env._now
        cross = child.idc != parent.idc
        if cross:
            self.cross_idc_bytes += flow.size
        if self.trace is not None:
            self.trace.add(t.assigned, child.id, parent.id, t.piece, int(flow.size), now - t.assigned,
                           cross, "ok", t.candidates, t.features)
        if self._end_game:
            # Flow.tag -> Transfer -> Flow (and -> parts -> Transfer) are cycles: left in place,
            # every transfer would wait for the cyclic garbage collector, whose full passes
            # over millions of them cost a 1,000 x 5 GB run a third of its time
            t.flow = None
            parts = t.parts
            if parts is not None:
                t.parts = None
                parts.remove(t)
                if parts:                               # not the piece's last part
                    self._wake(self.sched.part_done(child.peer, t.piece, parent.peer, int(flow.size), now))
                    self._pump(child)
                    return
            del self._running[(child.id, t.piece)]
        wake = self.sched.piece_done(child.peer, t.piece, parent.peer, int(flow.size), now - t.assigned, now)
        self.pieces_done += 1
        if self._bar is not None and self.pieces_done % 1000 == 0:
            self._bar.update(1000)
        if wake:
            by_peer = self.by_peer
            for p in wake:              # the children who waited longest get the freed slot first
                self._pump(by_peer[p])
        if self.swarm.finished[child.peer] == self._n_pieces:
            self._host_finished(child)
        else:
            self._pump(child)

    def _count_piece(self) -> None:
        self.pieces_done += 1
        if self._bar is not None and self.pieces_done % 1000 == 0:
            self._bar.update(1000)

    # ---- the origin: supernodes (and peers sent back to source) fetch piece by piece ---------
    def _fetch_next(self, node: Node) -> None:
        if node.left or node.fetching is not None:
            return
        have = self.swarm.have_bits[node.peer]
        while node.fetch and have >> node.fetch[0] & 1:
            node.fetch.pop(0)
        if not node.fetch:
            self.swarm.producing.discard(node.peer)
            return
        self.swarm.producing.add(node.peer)
        piece = node.fetch.pop(0)
        path, _ = self._path(self.origin, node)
        node.fetching = self.net.start(path, self.task.piece_length(piece), self._fetched, tag=(node, piece))

    def _fetched(self, flow: Flow) -> None:
        node, piece = flow.tag
        node.fetching = None
        if node.idc != self.origin.idc:
            self.cross_idc_bytes += flow.size
        if self.trace is not None:
            self.trace.add(flow.started, node.id, ORIGIN, piece, int(flow.size), self.env.now - flow.started,
                           node.idc != self.origin.idc, "ok", 0, None)
        wake = self.sched.piece_added(node.peer, piece)
        self._fetch_next(node)
        self._wake(wake)
        if not node.is_seed:
            self._count_piece()
            if self.swarm.is_complete(node.peer):
                self._host_finished(node)
            else:
                self._pump(node)

    # ---- churn ------------------------------------------------------------------------------
    def _leave(self, node: Node) -> None:
        """A host leaves mid-download or a supernode fails: its transfers die with it."""
        if node.left or node.done_at is not None:
            return
        node.left = True
        if not node.is_seed:
            self.gone += 1
        if self.mode == "source" or node.peer < 0:
            for flow in list(node.downloads):
                self.net.abort(flow)
            self._check_stop()
            return
        self.swarm.remove_peer(node.peer)
        to_pump: list[Node] = []
        for flow in list(node.downloads):
            self._abort(flow)
        for flow in list(node.uploads):
            to_pump.append(flow.tag.child)
            self._abort(flow)
        for t in list(node.starting):           # no byte sent yet: the piece fails as an abort does
            del t.child.starting[t], t.parent.starting[t]
            if t.parent is node:
                to_pump.append(t.child)
            self._wake(self.sched.piece_failed(t.child.peer, t.piece, t.parent.peer))
        if node.is_seed:
            survivors = [s for s in self.supernodes if not s.left]
            # what it had not fetched yet, and what it alone held, goes to the survivors
            lost = bit_indices(self.swarm.have_bits[node.peer] & ~self.swarm.avail_bits)
            for i, piece in enumerate(node.fetch + lost if survivors else ()):
                survivors[i % len(survivors)].fetch.append(piece)
            node.fetch = []
            for s in survivors:
                self._fetch_next(s)
        for child in to_pump:
            self._pump(child)
        self._check_stop()

    def _abort(self, flow: Flow) -> None:
        delivered = self.net.abort(flow)
        tag = flow.tag
        if isinstance(tag, Transfer):
            if self._end_game:
                if tag.flow is None:
                    return                      # stopped already, with another part of its piece
                tag.flow = None                 # no cycle left behind (see `_piece_done`)
                parts = tag.parts
                if parts is not None:
                    tag.parts = None
                    parts.remove(tag)
                    for other in list(parts):   # a piece fails whole: its other parts stop
                        self._abort(other.flow)
                if not parts:
                    self._running.pop((tag.child.id, tag.piece), None)
            if tag.child.idc != tag.parent.idc:
                self.cross_idc_bytes += delivered
            self._wake(self.sched.piece_failed(tag.child.peer, tag.piece, tag.parent.peer))
            if self.trace is not None:
                self.trace.add(tag.assigned, tag.child.id, tag.parent.id, tag.piece, int(delivered),
                               self.env.now - tag.assigned, tag.child.idc != tag.parent.idc, "aborted",
                               tag.candidates, tag.features)
        else:                                   # an origin fetch
            node, piece = tag
            node.fetching = None
            if node.idc != self.origin.idc:
                self.cross_idc_bytes += delivered
            node.fetch.insert(0, piece)         # a failing seed hands it to the survivors

    def _check_stop(self) -> None:
        if self.pending() == 0 and not self._stop.triggered:
            self._stop.succeed()

    # ---- business traffic and rate control ----------------------------------------------------
    def _business(self, node: Node, bg):
        """An on/off business load on the host's NIC (both directions)."""
        rng = np.random.default_rng([self.seed, node.id, 7])
        on = rng.random() < bg.on_s / (bg.on_s + bg.off_s)
        while True:
            node.business_bps = bg.peak_bps if on else bg.base_bps
            self._apply_capacity(node)
            yield self.env.timeout(rng.exponential(bg.on_s if on else bg.off_s))
            on = not on

    def _apply_capacity(self, node: Node) -> None:
        for res, nic, limit in ((node.down, node.download_bps, node.p2p_limit[0]),
                                (node.up, node.upload_bps, node.p2p_limit[1])):
            allowed = min(limit, nic)
            if allowed + node.business_bps > nic:
                allowed = max(nic - node.business_bps, allowed / 2.0)
            if res is not None:
                self.net.set_capacity(res, allowed)

    def _rate_loop(self, node: Node):
        while not node.left and node.done_at is None:
            p2p_rx = sum(f.rate for f in node.downloads)
            p2p_tx = sum(f.rate for f in node.uploads)
            b = node.business_bps
            obs = HostLoad(node.download_bps, node.upload_bps, p2p_rx + b, p2p_tx + b, p2p_rx, p2p_tx,
                           RATE_INTERVAL_S)
            lim = self.rates.limit(obs, self.env.now)
            node.p2p_limit = (lim.download_bps, lim.upload_bps)
            self._apply_capacity(node)
            yield self.env.timeout(RATE_INTERVAL_S)

    # ---- results ---------------------------------------------------------------------------
    def _progress_bar(self):
        if not self.progress:
            return None
        from tqdm import tqdm
        total = len(self.hosts) * (self.task.n_pieces if self.mode == "p2p" else 1)
        return tqdm(total=total, unit="piece" if self.mode == "p2p" else "host", unit_scale=True,
                    file=sys.stderr, delay=2.0, mininterval=1.0 if sys.stderr.isatty() else 15.0,
                    desc=self.sc.name, leave=False)

    def completion_times(self) -> np.ndarray:
        return np.array([h.done_at - h.arrival for h in self.hosts if h.done_at is not None])

    def summary(self, wall_s: float) -> dict:
        ct = self.completion_times()

        def stat(fn) -> float | None:
            return round(float(fn(ct)), 3) if len(ct) else None

        return {
            "scenario": self.sc.name,
            "policy": self.selector.name,
            "mode": self.mode,
            "hosts": len(self.hosts),
            "file_bytes": self.sc.file.size,
            "piece_bytes": self.task.piece_size,
            "completion_s": {"mean": stat(np.mean), "p50": stat(lambda a: np.percentile(a, 50)),
                             "p95": stat(lambda a: np.percentile(a, 95)),
                             "p99": stat(lambda a: np.percentile(a, 99)), "max": stat(np.max)},
            "finished_hosts": self.finished,
            "source_egress_bytes": int(round(self.origin.up.bytes)),
            "cross_idc_bytes": int(round(self.cross_idc_bytes)),
            "lower_bound_s": round(self.lower_bound_s, 3),
            "piece_bound_s": round(self.piece_bound_s, 3),
            "client_server_s": round(self.client_server_s, 3),
            "events": self.env.events_scheduled + self.net.timer_updates,
            "wall_s": round(wall_s, 3),
            "peak_rss_bytes": _resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss * 1024,
            "left_hosts": self.gone,
            "sim_s": round(self.env.now, 3),
        }
