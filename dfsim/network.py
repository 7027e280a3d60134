"""The flow-level network: NICs, uplinks and inter-IDC links shared by transfers.

Owns every transfer's rate and completion time. A transfer (`Flow`) crosses a few resources
(the sender's uplink, the receiver's downlink, maybe an inter-IDC link); each resource has a
capacity in bytes/s.

Rules kept here:
- Events happen only when a flow starts, ends, is aborted, or a capacity changes. Nothing is
  simulated per packet or per byte.
- A path is (sender's uplink, receiver's downlink, any inter-IDC links). The fast model, in
  two steps: every sender-side resource (uplink, link) with n flows offers each
  `capacity / n`, the flow's cap; then each receiver's downlink is water-filled among its
  flows up to their caps (a child whose parents are slow gives the fast parent the rest).
  Each step keeps its resources within capacity, so the allocation is always feasible; it is
  not the exact max-min allocation (`dfsim.maxmin`), and `tests/test_network_accuracy.py`
  bounds how far the completion times it gives are from the exact ones.
- Sender-side shares are sticky: a resource keeps the share it set for `n_set` flows while
  its flows number between `n_set * (1 - SHARE_SLACK)` and `n_set`. More flows than `n_set`
  reset it at once (no resource is ever oversubscribed), fewer than the slack reset it too;
  a resource with `BIG_FAN` flows or more resets with `SHARE_SLACK / 2` headroom. A seed or an
  inter-IDC link carrying hundreds of flows, whose count wobbles or grows as pieces end and
  start, then re-times its flows once per few percent of change instead of at every flow; it
  may leave up to about 3% of its capacity unused meanwhile. Below `BIG_FAN` flows one flow
  is more than the slack, so small fans are exact.
- Changes made at one instant are coalesced: resources touched are marked dirty and one
  flush at the end of the instant recomputes only the flows whose share really changed. A
  piece that ends and the next one that starts on the same link in the same instant costs no
  rate update for the link's other flows. A downlink whose last fill gave every flow its cap
  is not filled again when one of its flows ends: the others' caps change only through their
  senders (which mark it for a refill), and fewer flows still fit.
- Completion times live in the network's own calendar (a heap of distinct times, a bucket of
  (flow, version) entries per time, in the order they were set, which is the order they run
  in), each entry with the flow's version; an entry whose version is stale (the flow was
  re-timed or ended) is skipped. Equal pieces started together end at the same float time,
  so one heap operation serves several completions. A
  `CountingEnvironment` steps that heap itself; any other SimPy environment gets one
  timeout per earliest completion.
"""
from __future__ import annotations

from typing import Any, Callable

from heapq import heapify, heappop, heappush
from operator import attrgetter

import simpy
from simpy.core import NORMAL

from .environment import CountingEnvironment

INF = float("inf")
SHARE_SLACK = 0.02
BIG_FAN = 50


_by_cap = attrgetter("cap")


class Resource:
    """Something flows share: a NIC direction, an uplink, an inter-IDC link."""

    __slots__ = ("name", "capacity", "flows", "share", "bytes", "n_set", "receiver", "full", "stale")

    def __init__(self, name: str, capacity: float, receiver: bool = False):
        self.name = name
        self.receiver = receiver  # a downlink: water-filled, not equally shared
        self.capacity = capacity
        self.flows: dict[Flow, None] = {}    # an ordered set: runs must be deterministic
        self.share = capacity
        self.n_set = 1.0          # the flow count `share` was set for
        self.bytes = 0.0          # bytes delivered through this resource by finished flows
        # a downlink: whether its last fill was cut by its capacity (a flow got less than its
        # cap), and whether the next flush must fill it again (see `Network._flush`)
        self.full = False
        self.stale = False


class Flow:
    """One transfer of `size` bytes across `path`."""

    __slots__ = ("path", "size", "remaining", "rate", "t", "version", "on_done", "started", "tag", "cap")

    def __init__(self, path: tuple[Resource, ...], size: float, on_done: Callable[["Flow"], None],
                 now: float, tag: Any):
        self.path = path
        self.size = size
        self.remaining = float(size)
        self.rate = 0.0
        self.t = now
        self.version = 0
        self.on_done = on_done
        self.started = now
        self.tag = tag
        self.cap = 0.0            # the smallest sender-side share along the path


class Network:
    def __init__(self, env: simpy.Environment):
        self.env = env
        self._dirty: dict[Resource, None] = {}
        self._new: list[Flow] = []
        self._flush_pending = False
        self._waking = False        # inside `_wake`: it flushes before returning
        self.active = 0
        # completion times live in our own calendar: a heap of distinct due times, and per
        # time a bucket [flow, version, flow, version, ...] in the order they were set.
        # Pieces of one size started together at one rate end at the same float time, so a
        # bucket holds several completions for one heap push and pop
        self._times: list[float] = []
        self._due: dict[float, list] = {}
        self._entries = 0           # (flow, version) pairs in the buckets, stale ones included
        self._compact_at = 4096
        self._wake_at = INF
        self.timer_updates = 0
        # an environment that steps the network itself needs no SimPy timeouts from us
        self._driven = isinstance(env, CountingEnvironment)
        if self._driven:
            env.drive(self)

    # ---- building --------------------------------------------------------------------------
    def uplink(self, name: str, capacity: float) -> Resource:
        """A sender-side resource: an uplink or an inter-IDC link."""
        return Resource(name, capacity)

    def downlink(self, name: str, capacity: float) -> Resource:
        """A receiver's downlink, the second element of every path."""
        return Resource(name, capacity, receiver=True)

    # ---- flows -----------------------------------------------------------------------------
    def start(self, path: tuple[Resource, ...], size: float, on_done: Callable[[Flow], None],
              tag: Any = None) -> Flow:
        """Start a transfer now; `on_done(flow)` is called when its last byte arrives."""
        # `_now` rather than SimPy's `now` property: a call saved on every piece
        f = Flow(path, size, on_done, self.env._now, tag)
        dirty = self._dirty
        for r in path:
            r.flows[f] = None
            dirty[r] = None
        path[1].stale = True
        self._new.append(f)
        self.active += 1
        if not self._flush_pending:
            self._want_flush()
        return f

    def abort(self, f: Flow) -> float:
        """Stop a transfer now; returns the bytes it had delivered (all, if it had ended)."""
        if f not in f.path[0].flows:
            return f.size - f.remaining
        self._settle(f, self.env.now)
        f.version = -1
        f.rate = 0.0
        done = f.size - f.remaining
        for r in f.path:
            r.bytes += done
        self._detach(f)
        return done

    def shrink(self, f: Flow, nbytes: float) -> None:
        """Take `nbytes` off the end of a running flow (the end game hands them to another
        parent); it keeps its rate and ends earlier."""
        now: float = self.env._now
        self._settle(f, now)
        nbytes = min(nbytes, f.remaining)
        f.size -= nbytes
        f.remaining -= nbytes
        if f.rate:              # else its first rate, at the next flush, times it
            self._retime(f, f.rate, now)

    def set_capacity(self, r: Resource, capacity: float) -> None:
        if capacity != r.capacity:
            r.capacity = capacity
            r.stale = True
            self._dirty[r] = None
            self._want_flush()

    def left(self, f: Flow) -> float:
        """Bytes a running flow has still to deliver."""
        return f.remaining - f.rate * (self.env._now - f.t)

    def delivered(self, f: Flow) -> float:
        """Bytes a running flow has delivered so far."""
        return f.size - self.left(f)

    # ---- internals -------------------------------------------------------------------------
    def _detach(self, f: Flow) -> None:
        for r in f.path:
            del r.flows[f]
            self._dirty[r] = None
        f.path[1].stale = True
        self.active -= 1
        self._want_flush()

    def _want_flush(self) -> None:
        if not self._flush_pending:
            self._flush_pending = True
            if self._waking:
                return
            ev = simpy.Event(self.env)
            ev.callbacks.append(self._flush)
            ev._ok = True
            ev._value = None
            self.env.schedule(ev, NORMAL, 0)

    @staticmethod
    def _settle(f: Flow, now: float) -> None:
        if f.rate:
            f.remaining -= f.rate * (now - f.t)
            if f.remaining < 0.0:
                f.remaining = 0.0
        f.t = now

    def _flush(self, _event) -> None:
        self._flush_pending = False
        now: float = self.env._now
        receivers: dict[Resource, None] = {}
        for r in self._dirty:
            if r.receiver:
                receivers[r] = None
                continue
            n = len(r.flows)
            if n > r.n_set or n < r.n_set * (1.0 - SHARE_SLACK):
                r.n_set = n * (1.0 + SHARE_SLACK / 2) if n >= BIG_FAN else max(n, 1)
            share = r.capacity / r.n_set
            if share != r.share:
                r.share = share
                for f in r.flows:
                    # a flow held below its cap by its receiver's water level, whose cap stays
                    # above its rate, keeps its rate: its receiver needs no refill
                    if f.rate < f.cap and f.rate < share:
                        continue
                    down = f.path[1]
                    down.stale = True
                    receivers[down] = None
        self._dirty.clear()
        for f in self._new:
            receivers[f.path[1]] = None
        self._new.clear()
        for down in receivers:
            # a downlink marked dirty only because a flow ended, whose last fill gave every
            # flow its cap, would be filled to the same rates: its flows' caps change only
            # through their senders (which mark it stale), and fewer flows still fit
            if down.stale:
                self._fill(down, now)
        self._arm()

    def _fill(self, down: Resource, now: float) -> None:
        """Water-fill a receiver's downlink among its flows, each up to its sender-side cap."""
        down.stale = False
        flows = down.flows
        total = 0.0
        for f in flows:
            p = f.path
            # a path is (uplink, downlink) or (uplink, downlink, inter-IDC link)
            f.cap = cap = p[0].share if len(p) == 2 else min(p[0].share, p[2].share)
            total += cap
        if total <= down.capacity:
            # the downlink has room for every cap (the common case: senders are the limit)
            down.full = False
            for f in flows:
                if f.cap != f.rate or f.version == 0:
                    self._retime(f, f.cap, now)
            return
        down.full = True
        left = down.capacity
        k = len(flows)
        for i, f in enumerate(sorted(flows, key=_by_cap)):
            fair = left / (k - i)
            rate = f.cap if f.cap < fair else fair
            left -= rate
            if rate != f.rate or f.version == 0:
                self._retime(f, rate, now)

    def _retime(self, f: Flow, rate: float, now: float) -> None:
        """Give a flow a new rate from now on, and its completion time to the heap."""
        if f.rate:
            f.remaining -= f.rate * (now - f.t)
            if f.remaining < 0.0:
                f.remaining = 0.0
        f.t = now
        f.rate = rate
        f.version += 1
        if rate > 0.0:
            t = now + f.remaining / rate
            bucket = self._due.get(t)
            if bucket is None:
                self._due[t] = [f, f.version]
                heappush(self._times, t)
            else:
                bucket.append(f)
                bucket.append(f.version)
            self.timer_updates += 1
            self._entries += 1
            if self._entries > self._compact_at:
                self._compact()

    def _compact(self) -> None:
        """Drop stale entries: re-timed flows leave one behind each, and a calendar grown to
        millions of them makes every push and pop slower."""
        due: dict[float, list] = {}
        for t, bucket in self._due.items():
            live = []
            for i in range(0, len(bucket), 2):
                f: Flow = bucket[i]
                if f.version == bucket[i + 1]:
                    live += bucket[i:i + 2]
            if live:
                due[t] = live
        self._due = due
        self._times = list(due)
        heapify(self._times)
        self._entries = sum(len(b) for b in due.values()) // 2
        self._compact_at = 2 * self._entries + 4096

    def next_completion(self) -> float:
        """When the earliest pending completion is due (INF if none)."""
        times, due = self._times, self._due
        while times:
            t = times[0]
            bucket = due[t]
            for i in range(0, len(bucket), 2):
                f: Flow = bucket[i]
                if f.version == bucket[i + 1]:
                    return t
            heappop(times)                       # all stale: the flows were re-timed or ended
            del due[t]
            self._entries -= len(bucket) // 2
        return INF

    def _arm(self) -> None:
        """Make sure SimPy wakes us for the earliest pending completion."""
        if self._driven:
            return                               # the environment looks at our heap itself
        t = self.next_completion()
        if t < self._wake_at:
            self._wake_at = t
            ev = simpy.Timeout(self.env, max(0.0, t - self.env.now))
            ev.callbacks.append(self._wake)

    def _wake(self, _event) -> None:
        now: float = self.env._now
        due = now + 1e-9 * max(1.0, now)         # rounding in now + delay
        if self._wake_at <= due:
            self._wake_at = INF                  # this is the wake-up `_arm` asked for
        times, calendar = self._times, self._due
        # what the completions change (ended flows, the flows their callbacks start) is
        # flushed here, once, rather than by a separate SimPy event
        self._waking = True
        dirty = self._dirty
        while times and times[0] <= due:
            # callbacks start flows, and re-time one only by `shrink` (the end game); either
            # way a new entry goes to a bucket of its own (this one has left the calendar),
            # run by this loop if it is due
            bucket = calendar.pop(heappop(times))
            self._entries -= len(bucket) // 2
            for i in range(0, len(bucket), 2):
                # typed: compiled, a bucket's untyped items would make every attribute
                # below a generic lookup
                f: Flow = bucket[i]
                if f.version != bucket[i + 1]:
                    continue                     # stale: the flow was re-timed or ended
                f.version = -1
                f.remaining = 0.0
                f.rate = 0.0
                size = f.size
                for r in f.path:
                    r.bytes += size
                    del r.flows[f]
                    dirty[r] = None
                down = f.path[1]
                if down.full:           # the others may take what it leaves
                    down.stale = True
                self.active -= 1
                self._flush_pending = True
                f.on_done(f)
        self._waking = False
        if self._flush_pending:
            self._flush(None)
        else:
            self._arm()
