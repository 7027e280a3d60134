"""The SimPy environment a simulation runs in: SimPy's own, counting its events and stepping
the network's completion calendar itself.

Kept apart from `dfsim.network`: it subclasses SimPy's `Environment`, and a module compiled by
`dfnet.native` cannot hold a class that extends an interpreted one.
"""
from __future__ import annotations

from heapq import heappop, heappush
from typing import TYPE_CHECKING

import simpy
from simpy.core import NORMAL, EmptySchedule, StopSimulation

if TYPE_CHECKING:
    from .network import Network

INF = float("inf")


class CountingEnvironment(simpy.Environment):
    """A SimPy environment that counts the events it schedules (the summary's `events`), and
    that drives a `Network`'s completions itself.

    Flow completions are most of a run's events. Rather than a SimPy timeout per completion
    time, `step` compares the network's earliest completion with SimPy's next event and runs
    whichever is first (SimPy's on a tie), so completions cost no SimPy event at all.
    """

    def __init__(self, initial_time: float = 0):
        super().__init__(initial_time)
        self.events_scheduled = 0
        self._net: Network | None = None

    # `schedule` and `step` are SimPy's own, written out here (simpy 4.1): a run steps a few
    # times per piece, and the calls up to the base class cost as much as the work
    def schedule(self, event, priority=NORMAL, delay=0):
        self.events_scheduled += 1
        heappush(self._queue, (self._now + delay, priority, next(self._eid), event))

    def drive(self, net: "Network") -> None:
        self._net = net

    def step(self) -> None:
        net = self._net
        queue = self._queue
        if net is not None and net._times:
            t = net.next_completion()
            if t < (queue[0][0] if queue else INF):
                self._now = t
                net._wake(None)
                return
        try:
            self._now, _, _, event = heappop(queue)
        except IndexError:
            raise EmptySchedule from None
        callbacks, event.callbacks = event.callbacks, None
        try:
            for callback in callbacks:
                callback(event)
        except StopSimulation:
            # as SimPy: the rest of the callbacks run when the simulation resumes
            event.callbacks = callbacks[callbacks.index(callback) + 1:]
            self.schedule(event, -1)
            raise
        if not event._ok and not hasattr(event, "_defused"):
            exc = type(event._value)(*event._value.args)
            exc.__cause__ = event._value
            raise exc
