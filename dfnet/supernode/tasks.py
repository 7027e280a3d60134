"""One task as the supernode runs it: the core's swarm and scheduler, fed from the wire.

Owns, for one task version: the mapping between peer ids on the wire and swarm indexes, the
pieces in flight per child (so a result is applied once, and only for a transfer that was
assigned), the piece digests the seed cut, and the events that wake long-polling peers.

Rules kept here:
- Every decision comes from `dfnet.core.scheduler`; this class only translates.
- A result for a transfer that was not assigned (stale, duplicated, forged) is ignored.
- A parent that fails `PARENT_FAILURES` transfers in a row without a corrupt piece is taken
  offline (the daemon died or cannot be reached); a corrupt piece blocklists its parent for
  the reporting child at once (the core's rule), and a parent reported corrupt by
  `CORRUPT_REPORTERS` different children is isolated from the task (Dragonfly 1's rule).
- A peer that registers again (its daemon restarted) gets a fresh swarm index: the old one
  goes offline with its transfers, the new one starts from the pieces it proves it holds.
- The digest of a piece a back-to-source peer fetched is accepted only if the seed has none
  for that piece yet.
- An idle peer whose results woke waiting children decides after them (for at most
  `YIELD_S`), as in the simulator: a slot it freed goes to the child the core woke for it.
- At debug level, each piece reported done is logged ("piece held") with how long its slot
  was held from assignment to report, the child's measured cost, both ends' nominal rates and
  how many transfers each end had (the testbed's calibration reads these).
"""
from __future__ import annotations

import asyncio
import logging
import time
from json.encoder import encode_basestring_ascii

from dfnet.core.scheduler import Decision, Scheduler, SchedulerConfig
from dfnet.core.swarm import Swarm
from dfnet.core.task import Task
from dfnet.protocol import Assign, PeerInfo, ProtocolError, Refused, Sync, SyncReply
from dfnet.storage import TaskFiles
from models.interfaces import PieceSelector

PARENT_FAILURES = 3
CORRUPT_REPORTERS = 2
# a slot is worth serving only if it gets at least this much of an uplink: a rate-limited
# seed gets ceil(limit / this) slots, so peers serve each other instead of queueing on it
# (`dfly supernode --min-upload-rate`; the testbed passes the simulator's width)
MIN_UPLOAD_BPS = 4 << 20
# an idle peer whose results woke waiting children lets them decide first, for at most this
# long (they are usually held in a long poll here and decide within milliseconds)
YIELD_S = 0.1
log = logging.getLogger("dfnet.supernode")
SOURCE = "source"            # the parent id a peer names for pieces it fetched from the origin


class JsonStrings(dict):
    """A task's strings on the wire (peer ids, addresses, piece digests) -> their JSON form,
    each quoted once (`json`'s own quoting): the sync stream writes its replies with these,
    since quoting a 64-character digest cost more than the rest of an assignment's encoding.
    Bounded by the task's peers and pieces; it goes with the task."""

    def __missing__(self, s: str) -> str:
        quoted = self[s] = encode_basestring_ascii(s)
        return quoted


class SupernodeTask:
    def __init__(self, key: str, task: Task, files: TaskFiles, selector: PieceSelector,
                 config: SchedulerConfig, slots: tuple[int, int], token: str, seed_id: str,
                 seed_addr: str, seed: int = 0, seed_upload_bps: float = 0.0,
                 min_upload_bps: float = MIN_UPLOAD_BPS):
        self.key = key
        self.task = task
        self.files = files
        self.token = token
        self.swarm = Swarm(task, slots[0], slots[1], min_upload_bps=min_upload_bps)
        self.scheduler = Scheduler(self.swarm, selector, config, seed=seed)
        self.seed = self.swarm.add_peer(seed_id, is_seed=True, upload_bps=seed_upload_bps)
        # (child, piece) -> (assigned at, parent's uploads, child's pieces in flight); debug only
        self.assigned_at: dict[tuple[int, int], tuple[float, int, int]] | None = (
            {} if log.isEnabledFor(logging.DEBUG) else None)
        self.ids: list[str] = [seed_id]
        self.addrs: list[str] = [seed_addr]
        self.index: dict[str, int] = {seed_id: self.seed}
        self.inflight: dict[int, dict[int, int]] = {}
        self.events: dict[int, asyncio.Event] = {}
        self.fail_streak: dict[int, int] = {}
        self.corrupt_from: dict[int, set[int]] = {}     # parent -> children it sent bad pieces
        # idle reporter -> (children its results woke that have not decided yet, until when),
        # and the reverse, so a child's decision finds the reporters waiting on it directly
        self.yielding: dict[int, tuple[set[int], float]] = {}
        self._owed: dict[int, list[int]] = {}
        self._woken: list[int] | None = None
        self.digests: list[str | None] = list(files.digests)
        self.json_strings = JsonStrings()
        for piece in range(task.n_pieces):
            if files.have[piece]:
                self.swarm.add_piece(self.seed, piece)
        self.validator: str | None = files.meta.get("etag") or files.meta.get("last_modified")
        self.fetching = False
        self.error: str | None = None
        self.last_activity = time.monotonic()
        self.revalidated = time.monotonic()
        self.assigned = 0

    # ---- the seed ------------------------------------------------------------------------
    def start_fetch(self) -> None:
        self.fetching = True
        self.swarm.producing.add(self.seed)

    def end_fetch(self, error: str | None = None) -> None:
        self.fetching = False
        self.swarm.producing.discard(self.seed)
        if error and not self.files.complete:
            self.error = error
        self._wake(list(self.events))

    def piece_cut(self, piece: int, digest: str) -> None:
        self.digests[piece] = digest
        self._wake(self.scheduler.piece_added(self.seed, piece))

    # ---- peers ---------------------------------------------------------------------------
    def register(self, peer: PeerInfo) -> int:
        self.last_activity = time.monotonic()
        old = self.index.get(peer.id)
        if old is not None and old != self.seed:
            self._drop(old)
        i = self.swarm.add_peer(peer.id, idc=peer.idc, location=peer.location,
                                upload_bps=peer.upload_bps, download_bps=peer.download_bps)
        self.index[peer.id] = i
        self.ids.append(peer.id)
        self.addrs.append(peer.addr)
        self.inflight[i] = {}
        self.events[i] = asyncio.Event()
        return i

    def leave(self, peer_id: str) -> None:
        i = self.index.get(peer_id)
        if i is not None and i != self.seed:
            self._drop(i)

    def _drop(self, i: int) -> None:
        """Peer `i` is gone: its transfers fail, it stops being anybody's parent."""
        for piece, parent in self.inflight.pop(i, {}).items():
            if self.assigned_at is not None:
                self.assigned_at.pop((i, piece), None)
            self._wake(self.scheduler.piece_failed(i, piece, parent))
        self.swarm.remove_peer(i)
        self.yielding.pop(i, None)
        self._owed.pop(i, None)
        ev = self.events.pop(i, None)
        if ev is not None:
            ev.set()

    def child_of(self, peer_id: str) -> int:
        i = self.index.get(peer_id)
        if i is None or i not in self.inflight:
            # not a malformed message: a peer this process does not know (it restarted, or
            # the peer left); 409 tells its daemon to register again, as a dropped peer's hold
            raise Refused(409, f"peer {peer_id[:80]!r} is not registered for this task; register again")
        return i

    # ---- one sync: results in, decision out ------------------------------------------------
    def apply(self, msg: Sync, now: float) -> int:
        """Apply a peer's reported results; return its swarm index."""
        child = self.child_of(msg.peer)
        self.last_activity = time.monotonic()
        woken = self._woken = []
        try:
            self._apply(child, msg, now)
        finally:
            self._woken = None
        # The core gives a freed slot to the waiting child furthest behind (it wakes it with
        # the slot as a hint), and the simulator lets the woken children ask before the peer
        # that reported. Here the reporter's own decision comes first, in the same request,
        # so an idle reporter took the slot it had just freed on the seed, and the laggard
        # woken for it found it gone: in the testbed's flash crowd the first ten peers kept
        # the seed while thirty waited, and fewer peers held pieces to share. So an idle
        # reporter waits (held, as any idle sync) until those children have decided.
        if msg.idle and woken:
            woken = set(woken)
            woken.discard(child)
            if woken:
                self.yielding[child] = (woken, now + YIELD_S)
                for c in woken:
                    self._owed.setdefault(c, []).append(child)
        return child

    def _apply(self, child: int, msg: Sync, now: float) -> None:
        flight = self.inflight[child]
        index, streak, piece_done = self.index, self.fail_streak, self.scheduler.piece_done   # per result
        at = self.assigned_at
        for piece, parent_id, nbytes, cost in msg.done:
            parent = index.get(parent_id, -1)
            if flight.get(piece) != parent:
                continue
            del flight[piece]
            streak[parent] = 0
            if at is not None:
                self._log_held(child, piece, parent, nbytes, cost, len(flight) + 1, now)
            woken = piece_done(child, piece, parent, nbytes, cost, now)
            if woken:
                self._wake(woken)
        for piece, parent_id, corrupt in msg.failed:
            parent = self.index.get(parent_id, -1)
            if flight.get(piece) != parent:
                continue
            del flight[piece]
            if self.assigned_at is not None:
                self.assigned_at.pop((child, piece), None)
            self._wake(self.scheduler.piece_failed(child, piece, parent, corrupt=corrupt))
            if corrupt and parent != self.seed:
                victims = self.corrupt_from.setdefault(parent, set())
                victims.add(child)
                if len(victims) >= CORRUPT_REPORTERS:
                    log.warning("parent isolated: corrupt pieces", extra={"fields": {
                        "task": self.task.id[:16], "parent": self.ids[parent], "reporters": len(victims)}})
                    self._drop(parent)
            elif parent != self.seed:
                streak = self.fail_streak.get(parent, 0) + 1
                self.fail_streak[parent] = streak
                if streak >= PARENT_FAILURES:
                    self._drop(parent)
        for piece in msg.have:
            if piece < self.task.n_pieces and self.digests[piece] is not None and piece not in flight:
                self._wake(self.scheduler.piece_added(child, piece))
        for piece, digest in msg.source:
            if piece >= self.task.n_pieces:
                raise ProtocolError(f"sync: piece {piece} out of range")
            if self.digests[piece] is None:
                self.digests[piece] = digest
            if self.digests[piece] == digest:
                self._wake(self.scheduler.piece_added(child, piece))

    def decide(self, child: int, now: float) -> SyncReply:
        """The core's decision for `child`, on the wire."""
        if self.error:
            return SyncReply([], done=False)
        for reporter in self._owed.pop(child, ()):                    # this child's turn now
            entry = self.yielding.get(reporter)
            if entry is not None and child in entry[0]:
                entry[0].discard(child)
                if not entry[0]:
                    self._wake([reporter])
        if child in self.yielding:
            woken, until = self.yielding[child]
            if woken and now < until:
                return SyncReply([], retry_after=until - now)
            del self.yielding[child]
        d = self.scheduler.request(child, now)
        if d.kind == Decision.ASSIGN:
            out = []
            flight = self.inflight[child]
            ids, addrs, digests, at = self.ids, self.addrs, self.digests, self.assigned_at     # per assignment
            for a in d.assignments:
                piece, parent = a.piece, a.parent
                flight[piece] = parent
                if at is not None:
                    at[child, piece] = (now, int(self.swarm.uploads[parent]), len(flight))
                out.append(Assign(piece, ids[parent], addrs[parent], digests[piece]))
            self.assigned += len(out)
            return SyncReply(out)
        if d.kind == Decision.DONE:
            return SyncReply([], done=True)
        if d.kind == Decision.BACK_TO_SOURCE:
            return SyncReply([], back_to_source=True)
        return SyncReply([], retry_after=d.retry_after)

    def _log_held(self, child: int, piece: int, parent: int, nbytes: int, cost: float, flight: int,
                  now: float) -> None:
        at, uploads, inflight = self.assigned_at.pop((child, piece), (now, 0, 0))
        peers = self.swarm.peers
        log.debug("piece held", extra={"fields": {
            "piece": piece, "bytes": nbytes, "held_s": round(now - at, 6), "cost_s": cost,
            "child_down_bps": peers[child].download_bps, "parent_up_bps": peers[parent].upload_bps,
            "parent_uploads": [uploads, int(self.swarm.uploads[parent])], "child_inflight": [inflight, flight],
            "from_seed": parent == self.seed}})

    def event(self, child: int) -> asyncio.Event:
        return self.events[child]

    def _wake(self, children: list[int]) -> None:
        if self._woken is not None:
            self._woken.extend(children)
        for c in children:
            ev = self.events.get(c)
            if ev is not None:
                ev.set()

    @property
    def in_use(self) -> bool:
        return self.fetching or time.monotonic() - self.last_activity < 30.0
