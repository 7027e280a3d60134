"""The scheduling loop: a child's request for work becomes (piece, parent) assignments.

Owns the decision, for one task, of what a peer should do next: fetch these pieces from
these parents, wait, go back to the source, or stop because it is done. The swarm holds the
state; a `PieceSelector` (any policy from `models`) scores the candidates.

Rules kept here, in order, for one request:
1. Candidate pieces: those the child lacks, nobody is sending it, and some online peer holds;
   the `piece_candidates / 2` rarest of them first.
2. Candidate parents. When more than `open_sample` peers are open: up to
   `parents_per_piece` open holders (online, with a free upload slot) of each of those
   rarest pieces, drawn at random with a bounded number of tries; then open parents
   themselves, each offering the rarest and a random one of the needed pieces it holds: a
   random sample of open peers and the seeds (few, and the parents of last resort when every
   peer holding a piece is busy, as in Dragonfly 1). When at most `open_sample` peers are
   open (a swarm whose uplinks are mostly busy, the common case in a flash crowd): every
   open peer offers its `piece_candidates / 2` rarest needed pieces and a random one, which
   contains whatever the holder search would find, for less. So rarest-first and random
   piece choices both find what they look for. A child woken because a parent freed a slot
   for it gets that parent's offers as its batch. Filtered before scoring: the child itself,
   its blocklist, and bad parents while anybody else can serve.
3. The selector scores the whole batch in one call (one that declares its score linear is
   summed here instead, from the cells it weighs); the best pairs are assigned greedily,
   one per piece, while the parent has free slots (and the IDC link between them, if the
   swarm gives it slots, has one free), up to the child's free download slots. A selector
   that declares `parent_only` (its score ignores the piece; ties fall at random) is not
   asked about a batch whose pairs all share one parent: the core orders them at
   random, which is what the selector would do. The rest of the ranking is kept for
   `batch_reuse_s`: the child's next free slots take the next pairs still valid (piece still
   needed, parent open), so a decision is paid once per few pieces, not once per piece. This
   is how Dragonfly 2 hands a child parents to use for a while, and the answer to Kraken's
   critique of per-piece coordination. A ranking none of whose remaining parents has a free
   slot is not kept: a slot they free goes to the waiting queue (rule 5), not to whoever
   holds an old ranking (a wake-up's batch names one parent, usually full once used).
4. No candidate: the child waits `retry_interval_s` if a parent exists or will exist (a busy
   parent, a seed still fetching). If nobody holds or produces a piece it needs for
   `retry_limit` tries in a row, it goes back to the source, while fewer than
   `back_source_limit` peers of the task have (Dragonfly 2's rule, counted only when no
   parent exists, not when parents are busy: a flash crowd must not send 200 peers to the
   origin).
5. Waiting children queue by progress (pieces held plus in flight): a freed slot wakes,
   among the `WAKE_SCAN` furthest behind, one the freed parent can serve, from the parent's
   IDC if there is one (the last host's finish time depends on the laggards; scarce
   inter-IDC links depend on locality). While others queue, a child that still has pieces
   in flight joins the queue instead of searching. A child whose request filled only some
   of its free download slots queues for the rest, so a slot freed anywhere can fill them;
   otherwise the spare slot idles until one of its own pieces ends, which at the end of a
   flash crowd leaves uplinks idle while laggards fetch one piece at a time (Fig. 8, 2 Gbps,
   1,000 hosts: 200 MB 14.37 -> 14.22 s, 50 MB 4.43 -> 4.20 s). This holds while the window
   (`concurrent_pieces`) is what fills a downlink, at most `SPARE_QUEUE_MAX_WINDOW` pieces
   (the simulator's and the testbed's windows: `fill_concurrency`, at most 4). The live
   daemons' default window of 16 is for batching, so a child nearly always has spare slots;
   queueing them made every wake-up a sync that carries one piece (the capacity benchmark:
   2.0 assignments per sync instead of 11, 9,400 assignments per supernode CPU second
   instead of 15,800).
6. End game (`end_game`, off by default): a freed slot that no waiting child can use for a
   piece of its own is lent to the furthest-behind waiting child that runs a piece this
   parent holds and has a download slot free: the parent sends part of that piece (an
   `Assignment` with `part` set; the I/O shell cuts off the back half of what is left of
   the piece's running transfer and asks the new parent for it). The piece counts when
   its last part ends (`part_done` for the others, then `piece_done`). A flash crowd's last
   pieces otherwise run at one parent's rate while freed uplinks idle: with 4 MiB pieces at a
   100 Mbit/s parent that is 0.34 s added to the last host's finish (Fig. 8, 2 Gbps, 1,000
   hosts, 200 MB: 14.22 -> 14.10 s). Dragonfly does not do this; BitTorrent's and Kraken's
   end games ask for the same blocks twice, which helps only when one parent is slower than
   the other. A part takes one of the child's download slots; a piece is lent out once (two
   parts at most), so an empty part (its piece ends that instant) cannot repeat; a failed
   part fails its piece.
   Only a shell that can fetch part of a piece may turn it on (the simulator does; the live
   daemons fetch whole pieces and run without it).

How many pieces a child runs at once is the I/O shell's setting (`concurrent_pieces`);
`fill_concurrency` is the rule we recommend for it: as many as fill a child's downlink at the
swarm's typical upload rate, so each piece moves at a parent's full rate. Dragonfly 1's fixed 4
split a 100 Mbit/s child four ways among parents as fast as it: every piece took four times
as long to finish and start being shared, and a flash crowd's start-up stretched accordingly
(Fig. 3 at 3,000 clients: 1.45x the bound with 4, 1.15x with 1).

Speed: a request's candidates are a handful of pairs, so the search runs in plain Python on
the swarm's bitset view (a numpy call costs about a microsecond however small its array);
numpy is used where it pays, for the feature matrix handed to the selector. The simulator
calls this a few times per piece transfer, so the hot paths avoid what costs there: decisions
without assignments are shared instances, the waiting queue is one FIFO bucket of children
per held count (joining it is an append; a wake-up reads it in place, deletes the entries it
takes and moves none of those it passes over), bitset updates and lowest-bit lookups avoid
negative ints (`x & ~bit` on a long bitset costs twice `x ^ bit`, `x & -x` 1.5x
`x ^ (x - 1)`).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from bisect import insort
from typing import Final

import numpy as np

from models.interfaces import COL, N_FEATURES, CandidateBatch, PeerView, PieceSelector

from .swarm import N_PARENT_COLS, PARENT_FIRST, PARENT_LAST, Swarm


def fill_concurrency(mean_download_bps: float, mean_upload_bps: float, cap: int = 4) -> int:
    """Pieces per child that fill its downlink from typical parents: ceil(down / up) in 1..cap."""
    if mean_download_bps <= 0 or mean_upload_bps <= 0:
        return cap
    return max(1, min(cap, math.ceil(mean_download_bps / mean_upload_bps - 1e-9)))


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    concurrent_pieces: int = 4      # pieces in flight per child (Dragonfly 1's limit)
    piece_candidates: int = 8
    parents_per_piece: int = 3
    holder_tries: int = 6           # random holders looked at per candidate piece
    open_sample: int = 8            # open peers sampled and asked what they offer
    retry_interval_s: float = 0.5   # Dragonfly 2: retry 5 times, 500 ms apart
    retry_limit: int = 5
    back_source_limit: int = 200
    batch_reuse_s: float = 1.0      # 0: score afresh for every free slot
    max_backoff_s: float = 8.0      # a waiting child's own retries back off up to this
    end_game: bool = False          # lend freed slots to parts of running pieces (rule 6)


class Assignment:
    """Fetch `piece` from `parent`. Read-only by convention.

    A plain class, like `Decision`: one is built per piece, and compiled (`dfnet.native`) a
    dataclass is still built through its generated `__init__`, which runs interpreted."""

    __slots__ = ("piece", "parent", "features", "part")

    def __init__(self, piece: int, parent: int, features: np.ndarray | None = None, part: bool = False):
        self.piece = piece
        self.parent = parent
        self.features = features    # the row the selector scored, for traces
        self.part = part            # part of a piece the child runs already (rule 6)

    def _key(self) -> tuple[int, int, bool]:
        return (self.piece, self.parent, self.part)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Assignment) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Assignment(piece={self.piece}, parent={self.parent}, part={self.part})"


class Decision:
    """What the child should do now. `kind` is one of the class constants.

    A plain class rather than a dataclass: compiled (`dfnet.native`), a dataclass would take
    the constants for fields."""

    ASSIGN: Final = "assign"
    WAIT: Final = "wait"
    BACK_TO_SOURCE: Final = "back-to-source"
    DONE: Final = "done"

    __slots__ = ("kind", "assignments", "retry_after", "candidates")

    def __init__(self, kind: str, assignments: list[Assignment] | None = None, retry_after: float = 0.0,
                 candidates: int = 0):
        self.kind = kind
        self.assignments: list[Assignment] = [] if assignments is None else assignments
        self.retry_after = retry_after
        self.candidates = candidates

    def __repr__(self) -> str:
        return (f"Decision(kind={self.kind!r}, assignments={self.assignments!r}, "
                f"retry_after={self.retry_after!r}, candidates={self.candidates!r})")


# decisions without assignments carry no per-request state: one shared instance of each
# (callers read decisions, never change them)
_DONE = Decision(Decision.DONE)
ASSIGN = Decision.ASSIGN
# the feature table's blocks: piece columns, then the parent's (gathered), then pair and child
# (typed: compiled, arithmetic on untyped constants is generic object math)
_PIECE_END: Final[int] = COL["piece_distance"] + 1
_PAIR_FIRST: Final[int] = COL["same_idc"]
assert _PIECE_END == PARENT_FIRST and _PAIR_FIRST == PARENT_LAST + 1 and N_FEATURES == _PAIR_FIRST + 4
WAKE_SCAN = 16      # waiting children looked at per freed slot
# a window of more pieces than this is a batching window, not what fills a downlink (rule 5)
SPARE_QUEUE_MAX_WINDOW = 8


class _Ranking:
    """A scored batch whose best pairs were not all used yet (a plain class: see `Assignment`)."""

    __slots__ = ("expires", "order", "pieces", "parents", "x")

    def __init__(self, expires: float, order: list[int], pieces: list[int], parents: list[int],
                 x: np.ndarray | None):
        self.expires = expires
        self.order = order          # rows of the batch, best first, not yet used
        self.pieces = pieces
        self.parents = parents
        self.x = x                  # the feature rows (None unless a trace keeps them)


def _clear_bit(bitsets: dict[int, int], key: int, bit: int) -> None:
    """Clear `bit` of `bitsets[key]`, dropping the entry once it is empty."""
    bits = bitsets.get(key, 0)
    if bits >> bit & 1:
        bits ^= 1 << bit
        if bits:
            bitsets[key] = bits
        else:
            del bitsets[key]


class Scheduler:
    """Turns requests into decisions for one task's swarm using one piece selector."""

    def __init__(self, swarm: Swarm, selector: PieceSelector, config: SchedulerConfig = SchedulerConfig(),
                 seed: int = 0, keep_features: bool = False):
        self.swarm = swarm
        self.selector = selector
        self.config = config
        self.keep_features = keep_features
        # settings the per-request path reads, looked up once (the config is frozen)
        self._concurrent = config.concurrent_pieces
        self._reuse_s = config.batch_reuse_s
        self._queue_spare = config.concurrent_pieces <= SPARE_QUEUE_MAX_WINDOW   # rule 5
        self._end_game = config.end_game
        # rule 6, per child: a parent freed to send part of one of its running pieces; the
        # running pieces lent out (bitset, until the piece ends); those whose second part is
        # still in flight (bitset: each holds one of the child's download slots)
        self._lend: dict[int, int] = {}
        self._lent: dict[int, int] = {}
        self._parts: dict[int, int] = {}
        rng = random.Random(seed)
        self._rand = rng.random
        # a selector whose score ignores the piece (see `models.interfaces.PieceSelector`) need
        # not be asked to order pairs that all share one parent: it would order them at random
        self._parent_only = bool(getattr(selector, "parent_only", False))
        # a selector that declares its score linear (`models.interfaces.LinearScore`) is summed
        # here from the cells it weighs: no feature matrix, no numpy call per decision
        linear = getattr(selector, "linear", None)
        self._linear = linear is not None
        w = tuple(linear.weights) if linear is not None else (0.0,) * N_FEATURES
        self._lin_parent: list[tuple[int, float]] = [
            (c - PARENT_FIRST, w[c]) for c in range(PARENT_FIRST, PARENT_LAST + 1) if w[c]]
        self._lin_piece: list[tuple[int, float]] = [(c, w[c]) for c in range(_PIECE_END) if w[c]]
        self._lin_idc: float = w[COL["same_idc"]]
        self._lin_loc: float = w[COL["location_match"]]
        self._lin_child: tuple[float, float] = (w[COL["child_finished"]], w[COL["child_download_bps"]])
        self._lin_constant: float = linear.constant if linear is not None else 0.0
        self._lin_tie: float = linear.tie_scale if linear is not None else 0.0
        self.decisions = 0
        self._rankings: dict[int, _Ranking] = {}
        self._hints: dict[int, int] = {}    # child -> a parent that just became free for it
        self._waits: dict[int, int] = {}    # child -> requests in a row that found nothing
        # children waiting for a parent, by (pieces held or in flight when they queued, arrival
        # in the queue), so a freed slot goes to the child furthest behind; the last host's
        # finish depends on it. Kept as one FIFO bucket per count (`_queue[held]`, children in
        # arrival order) and the non-empty counts ascending (`_levels`): joining is an append
        # (a new count, rare, is one insort into a short list), where one sorted list of
        # (held, arrival, child) keys cost a bisect and a memmove per wait
        self._queue: dict[int, list[int]] = {}
        self._levels: list[int] = []
        self._is_waiting: set[int] = set()      # exactly the children with an entry queued
        self._backoff = [Decision(Decision.WAIT, retry_after=min(config.retry_interval_s * 2 ** k,
                                                                 config.max_backoff_s)) for k in range(17)]
        self._retry = Decision(Decision.WAIT, retry_after=config.retry_interval_s)

    # ---- events from the I/O shell: each returns the waiting children to ask again now -----
    def piece_done(self, child: int, piece: int, parent: int, nbytes: int, cost_s: float,
                   now: float) -> list[int]:
        """A verified piece arrived: the parent has a free slot, the child one more piece."""
        sw = self.swarm
        sw.finish_transfer(child, piece, parent, nbytes, cost_s, now)
        if self._lent:
            _clear_bit(self._lent, child, piece)
        if not self._queue:
            return []
        woken = self._wake_for(parent)
        if sw.open_flags[child]:            # else it can serve nobody yet
            woken += self._wake_for(child, piece)
        return woken

    def piece_failed(self, child: int, piece: int, parent: int, *, corrupt: bool = False) -> list[int]:
        """A transfer ended without a good piece. A piece sent in parts fails as a whole: the
        shell stops every part and reports each (rule 6)."""
        self.swarm.fail_transfer(child, piece, parent, corrupt=corrupt)
        if self._parts:
            _clear_bit(self._parts, child, piece)
        if self._lent:
            _clear_bit(self._lent, child, piece)
        return self._wake_for(parent)

    def part_done(self, child: int, piece: int, parent: int, nbytes: int, now: float) -> list[int]:
        """One part of a piece sent in parts arrived, not its last (rule 6): the parent's slot
        is free; the piece counts with its last part's `piece_done`."""
        self.swarm.finish_part(child, piece, parent, nbytes, now)
        _clear_bit(self._parts, child, piece)
        return self._wake_for(parent)

    def piece_added(self, peer: int, piece: int) -> list[int]:
        """A seed or a back-to-source peer cut a new piece from the origin."""
        self.swarm.add_piece(peer, piece)
        sw = self.swarm
        return self._wake_for(peer, piece, n=int(sw.slots[peer] - sw.uploads[peer]))

    def _wake_for(self, parent: int, piece: int | None = None, n: int = 1) -> list[int]:
        """Waiting children that `parent` can serve now (with `piece`, if given).

        The children furthest behind come first (up to `WAKE_SCAN` are looked at). Each is
        handed `parent` as a hint its next request considers, so the freed slot is found
        without a search; children passed over keep their place.
        """
        queue = self._queue
        sw = self.swarm
        if not queue or not sw.open_flags[parent]:
            return []
        idc = sw.idc_list
        home = idc[parent]
        have, run, finished, online = sw.have_bits, sw.run_bits, sw.finished, sw.online_list
        # a child can use the parent when it neither holds nor runs all of `mask`
        mask = have[parent] if piece is None else 1 << piece
        n_pieces = sw.n_pieces
        # read the queue in place, the furthest behind first: children passed over are not
        # moved, and only the entries that leave it are deleted (near their buckets' fronts)
        gone: list[tuple[int, int]] = []    # (held, position) of entries leaving the queue
        useful: list[tuple[int, int]] = []  # (held, position) of children the parent can serve
        lend = None     # rule 6: the first child the parent could send part of a running piece
        lending = self._end_game and piece is None
        local = 0
        scanned = 0
        for held in self._levels:
            j = 0
            for child in queue[held]:
                if local >= n or scanned >= WAKE_SCAN:
                    break
                if not online[child] or finished[child] == n_pieces:
                    self._is_waiting.discard(child)
                    gone.append((held, j))
                elif child != parent and (have[child] | run[child]) & mask != mask:
                    scanned += 1
                    useful.append((held, j))
                    if idc[child] == home:
                        local += 1
                else:
                    scanned += 1
                    if lending and lend is None and child != parent and self._lendable(child, mask) \
                            and self._window_free(child) > 0:
                        lend = (held, j)
                j += 1
            else:
                continue
            break
        out: list[int] = []
        if useful:
            if local < len(useful):
                # children in the parent's IDC first: a freed slot should not pull traffic
                # across a scarce inter-IDC link while a neighbour waits; then the furthest
                # behind (scan order: the sort is stable)
                useful.sort(key=lambda e: idc[queue[e[0]][e[1]]] != home)
            hints = self._hints
            is_waiting = self._is_waiting
            for e in useful[:n]:
                child = queue[e[0]][e[1]]
                is_waiting.discard(child)
                hints[child] = parent
                out.append(child)
                gone.append(e)
        elif lend is not None:
            child = queue[lend[0]][lend[1]]
            self._is_waiting.discard(child)
            self._lend[child] = parent
            out.append(child)
            gone.append(lend)
        if gone:
            if len(gone) > 1:
                gone.sort(reverse=True)         # delete from the end: positions stay valid
            for held, j in gone:
                bucket = queue[held]
                del bucket[j]
                if not bucket:
                    del queue[held]
                    self._levels.remove(held)
        return out

    def _lendable(self, child: int, mask: int) -> int:
        """The child's running pieces within `mask` not lent out yet, as a bitset."""
        shared = self.swarm.run_bits[child] & mask
        return shared ^ (shared & self._lent.get(child, 0))    # no negative ints

    def _window_free(self, child: int) -> int:
        """The child's free download slots: its window less its pieces and second parts."""
        free = self._concurrent - len(self.swarm.running[child])
        return free - self._parts[child].bit_count() if self._parts and child in self._parts else free

    def _enqueue(self, child: int) -> None:
        """Queue the child for a wake-up, keyed by its pieces held and in flight."""
        is_waiting = self._is_waiting
        if child not in is_waiting:
            is_waiting.add(child)
            sw = self.swarm
            held = sw.finished[child] + len(sw.running[child])
            bucket = self._queue.get(held)
            if bucket is None:
                self._queue[held] = [child]
                insort(self._levels, held)
            else:
                bucket.append(child)

    def _partial(self, child: int, out: list[Assignment], candidates: int = 0) -> Decision:
        """Assignments that leave some of the child's download slots free: it queues for them
        when its window is one that fills a downlink (rule 5)."""
        if self._queue_spare:
            self._enqueue(child)
        return Decision(ASSIGN, out, 0.0, candidates)

    def _wait(self, child: int) -> Decision:
        """Queue the child for a wake-up; its own retry backs off, since wake-ups do the work."""
        self._enqueue(child)
        waits = self._waits
        k = waits.get(child, 0)
        waits[child] = k + 1
        return self._backoff[k if k < 16 else 16]

    def request(self, child: int, now: float) -> Decision:
        """The child has free download slots and asks what to fetch."""
        sw = self.swarm
        if sw.finished[child] == sw.n_pieces:
            return _DONE
        running = sw.running[child]
        want = self._window_free(child)
        if want <= 0:
            return self._retry
        if self._lend and child in self._lend:
            lent = self._lend_part(child, self._lend.pop(child))
            if lent is not None:
                return self._partial(child, [lent]) if want > 1 else Decision(ASSIGN, [lent])
        if running and self._queue and child not in self._hints and child not in self._is_waiting:
            # parents are scarce and others queue for them already: join the queue rather than
            # search; freed slots go to the queue in order, so the wait is fair and cheap
            return self._wait(child)
        out: list[Assignment] = []
        ranking = self._rankings.get(child)
        if ranking is not None:
            if ranking.expires >= now:
                self._take(child, ranking.order, ranking.pieces, ranking.parents, ranking.x, want, out)
                if len(out) == want:
                    return Decision(ASSIGN, out, 0.0, len(ranking.pieces))
            del self._rankings[child]
        if not sw.open_list:
            # every uplink in the swarm is busy: nothing to search for
            return self._partial(child, out) if out else self._no_candidates(child, bool(sw.avail_bits))
        pieces, parents, available = self._candidates(child, self._hints.pop(child, -1))
        if not pieces:
            return self._partial(child, out) if out else self._no_candidates(child, available)
        self._waits.pop(child, None)
        self.decisions += 1
        n = len(pieces)
        x = self._features(child, running, pieces, parents) if self.keep_features else None
        if n > 1 and self._parent_only and parents.count(parents[0]) == n:
            rand = self._rand
            if n == 2:      # the usual offer (rarest and random): the shuffle below, unrolled
                order = [1, 0] if rand() < 0.5 else [0, 1]
            else:
                order = list(range(n))
                for i in range(n - 1, 0, -1):          # Fisher-Yates
                    j = int(rand() * (i + 1))
                    order[i], order[j] = order[j], order[i]
        elif n > 1:
            if self._linear:
                score = self.linear_score(child, pieces, parents)
            else:
                if x is None:
                    x = self._features(child, running, pieces, parents)
                view = PeerView(child, sw.peers[child].idc, sw.peers[child].location,
                                sw.finished[child], sw.n_pieces, len(running))
                batch = CandidateBatch(np.array(pieces, dtype=np.int64), np.array(parents, dtype=np.int64), x)
                score = self.selector.score(view, batch, now).tolist()
            # best first, ties in batch order (a stable sort, as np.argsort(-score, "stable"))
            order = sorted(range(n), key=score.__getitem__, reverse=True)
        else:
            order = [0]
        self._take(child, order, pieces, parents, x, want, out, kept=False)
        if order and self._reuse_s > 0 and self._usable(order, parents):
            self._rankings[child] = _Ranking(now + self._reuse_s, order, pieces, parents, x)
        if not out:              # every pair lost its slot to an earlier pick of this batch
            return self._wait(child)
        if len(out) < want:
            return self._partial(child, out, n)
        return Decision(ASSIGN, out, 0.0, n)

    # ---- steps ---------------------------------------------------------------------------
    def _lend_part(self, child: int, parent: int) -> Assignment | None:
        """Rule 6: part of a piece the child runs, from a parent freed for it, if the parent
        is still open and holds one not lent out yet (the lowest)."""
        sw = self.swarm
        if not sw.open_flags[parent] or parent in sw.blocklist[child] \
                or (sw.links and not sw.link_open(parent, child)):
            return None
        shared = self._lendable(child, sw.have_bits[parent])
        if not shared:
            return None
        piece = (shared ^ (shared - 1)).bit_length() - 1           # the lowest
        self._lent[child] = self._lent.get(child, 0) | 1 << piece
        self._parts[child] = self._parts.get(child, 0) | 1 << piece
        sw.start_part(child, piece, parent)
        return Assignment(piece, parent, None, True)

    def _candidates(self, child: int, hint: int) -> tuple[list[int], list[int], bool]:
        """Candidate (piece, parent) pairs, and whether any needed piece has an online holder.

        Pure Python on the swarm's bitsets: a request's batch is a handful of pairs, where a
        numpy call's fixed cost would dominate."""
        sw = self.swarm
        avail = sw.avail_bits
        needed = avail ^ (avail & (sw.have_bits[child] | sw.run_bits[child]))   # no negative ints
        if not needed:
            return [], [], False
        pieces: list[int] = []
        parents: list[int] = []
        if hint >= 0 and sw.open_flags[hint]:
            # a wake-up: this parent freed a slot for this child; what it offers is the batch,
            # as a BitTorrent peer picks among what the peer that unchoked it holds
            self._offer(hint, needed, int(self._rand() * sw.n_pieces), pieces, parents)
            if parents:
                return pieces, parents, True
        self._search(child, needed, pieces, parents)
        if not parents:
            return [], [], True
        blocked = sw.blocklist[child]
        if blocked:
            keep = [i for i, p in enumerate(parents) if p not in blocked]
            pieces = [pieces[i] for i in keep]
            parents = [parents[i] for i in keep]
        if sw.n_bad and parents:
            bad = sw.bad
            keep = [i for i, p in enumerate(parents) if not bad[p]]
            if keep:
                pieces = [pieces[i] for i in keep]
                parents = [parents[i] for i in keep]
        return pieces, parents, True

    def _search(self, child: int, needed: int, pieces: list[int], parents: list[int]) -> None:
        """Candidate pairs found without a hint (rule 2), appended to `pieces` and `parents`.

        Kept apart from `_candidates`: its comprehensions make closures whose cells would
        cost the hinted request, the common one, on every call."""
        sw, cfg = self.swarm, self.config
        open_ = sw.open_flags
        rand = self._rand
        pool = sw.open_list
        m = len(pool)
        n_pieces = sw.n_pieces
        half = cfg.piece_candidates // 2
        if m <= cfg.open_sample:
            # few open peers: each offers its `half` rarest needed pieces and a random one.
            # Whatever the search below would find among the rarest pieces' open holders is
            # in these offers (a piece among the rarest needed is among the rarest its holder
            # offers), at a fraction of the cost
            for p in sorted(pool):
                if p != child:
                    self._offer(p, needed, int(rand() * n_pieces), pieces, parents, half)
        else:
            # the rarest needed pieces, each from a few of its open holders
            per, tries = cfg.parents_per_piece, cfg.holder_tries
            holders = sw.holders
            for piece in sw.rarest_few(needed, half):
                hl = holders[piece]
                n = len(hl)
                if n <= tries:
                    found = [h for h in hl if open_[h] and h != child][:per]
                else:
                    found = []
                    for _ in range(tries):
                        h = hl[int(rand() * n)]
                        if open_[h] and h != child and h not in found:
                            found.append(h)
                            if len(found) == per:
                                break
                parents.extend(found)
                pieces.extend([piece] * len(found))
            # open parents themselves: the seeds and a random sample of open peers, each with
            # the rarest and a random one of the needed pieces it holds
            drawn: set[int] = set()         # a loop: a comprehension is a function call
            for _ in range(cfg.open_sample):
                drawn.add(pool[int(rand() * m)])
            others = sorted(drawn)
            for s in sw.seeds:
                if open_[s] and s not in others:
                    others.append(s)
            for p in others:
                if p != child:
                    self._offer(p, needed, int(rand() * n_pieces), pieces, parents)

    def _offer(self, parent: int, needed: int, start: int, pieces: list[int], parents: list[int],
               rare: int = 1) -> None:
        """What `parent` offers: the `rare` rarest needed pieces it holds and a random one, the
        first at or after `start`, wrapping around."""
        sw = self.swarm
        offer = sw.have_bits[parent] & needed
        if not offer:
            return
        after = offer >> start
        # the lowest set bit's index as (x ^ (x - 1)).bit_length() - 1: `x & -x` builds a
        # negative long, which costs more
        drawn = start + (after ^ (after - 1)).bit_length() - 1 if after else (offer ^ (offer - 1)).bit_length() - 1
        if rare == 1:
            best = sw.rarest(offer)
            pieces.append(best)
            parents.append(parent)
            if drawn != best:
                pieces.append(drawn)
                parents.append(parent)
            return
        offered = sw.rarest_few(offer, rare)
        if drawn not in offered:
            offered.append(drawn)
        parents.extend([parent] * len(offered))
        pieces.extend(offered)

    def _features(self, child: int, running: set[int], pieces: list[int], parents: list[int]) -> np.ndarray:
        """The batch's feature matrix, one row per pair, columns as in `FEATURES`.

        The parent block is one gather from the swarm's table; the piece, pair and child
        columns are computed in Python into one flat list of floats, converted once and
        written as two blocks: a batch has a few rows, a numpy call per column would cost
        more than the arithmetic, and numpy converts a flat list of floats several times
        faster than rows of tuples."""
        sw = self.swarm
        n_pieces = sw.n_pieces
        n = len(pieces)
        x = np.empty((n, N_FEATURES))
        x[:, PARENT_FIRST:PARENT_LAST + 1] = sw.pfeat.take(parents, axis=0)
        cnt = sw.count_list
        online = max(sw.online_peers, 1)
        centre = sum(running) / len(running) if running else None
        idc, loc = sw.idc_list, sw.loc_list
        my_idc = idc[child]
        match = sw.location_row(child)
        child_finished = sw.finished[child] / n_pieces
        child_download = sw.peers[child].download_bps
        flat: list[float] = []      # per row: the 4 piece columns, then the 4 pair and child ones
        for p, q in zip(pieces, parents):
            c = cnt[p]
            flat += (c, c / online, p / n_pieces, 0.0 if centre is None else abs(p - centre) / n_pieces,
                     1.0 if idc[q] == my_idc else 0.0, match[loc[q]], child_finished, child_download)
        rows = np.array(flat, dtype=np.float64).reshape(n, _PIECE_END + N_FEATURES - _PAIR_FIRST)
        x[:, :_PIECE_END] = rows[:, :_PIECE_END]
        x[:, _PAIR_FIRST:] = rows[:, _PIECE_END:]
        return x

    def linear_score(self, child: int, pieces: list[int], parents: list[int]) -> list[float]:
        """A linear selector's scores for a batch, one per pair: the selector's weights on the
        batch's cells, read where they live (the parent's row of the swarm's table, the
        piece's count...), each parent's part summed once, plus the selector's random
        tie-break drawn from the core's generator."""
        sw = self.swarm
        cells = sw.pf_cells
        idc, loc = sw.idc_list, sw.loc_list
        my_idc = idc[child]
        match = sw.location_row(child)
        w_idc, w_loc = self._lin_idc, self._lin_loc
        w_done, w_down = self._lin_child
        base = self._lin_constant
        if w_done:
            base += w_done * sw.finished[child] / sw.n_pieces
        if w_down:
            base += w_down * sw.peers[child].download_bps
        per_parent: dict[int, float] = {}
        piece_terms = self._lin_piece
        running = sw.running[child]
        centre = sum(running) / len(running) if running else -1.0    # as in `_features`
        tie, rand = self._lin_tie, self._rand
        out: list[float] = []
        s: float
        for p, q in zip(pieces, parents):
            if q in per_parent:
                s = per_parent[q]
            else:
                s = base
                row = q * N_PARENT_COLS
                for off, w in self._lin_parent:
                    cell: float = cells[row + off]
                    s += w * cell
                if w_idc and idc[q] == my_idc:
                    s += w_idc
                if w_loc:
                    s += w_loc * match[loc[q]]
                per_parent[q] = s
            if piece_terms:
                s += self._piece_part(p, centre)
            out.append(s + tie * rand() if tie else s)
        return out

    def _piece_part(self, piece: int, centre: float) -> float:
        """The piece columns' share of a linear score (`_features` computes the same cells;
        `centre`: the mean of the child's running pieces, -1 when none runs)."""
        sw = self.swarm
        c = sw.count_list[piece]
        cells = (c, c / max(sw.online_peers, 1), piece / sw.n_pieces,
                 abs(piece - centre) / sw.n_pieces if centre >= 0.0 else 0.0)
        s = 0.0
        for col, w in self._lin_piece:
            s += w * cells[col]
        return s

    def _usable(self, order: list[int], parents: list[int]) -> bool:
        """Whether a parent of a ranking's unused pairs (`order`) has a free slot now. One
        whose parents are all busy is not kept: a slot they free goes to the waiting queue
        (rule 5), and a wake-up's one-parent batch, the common kind, is left with only a full
        parent."""
        open_ = self.swarm.open_flags
        for i in order:
            if open_[parents[i]]:
                return True
        return False

    def _take(self, child: int, order: list[int], pieces: list[int], parents: list[int],
              x: np.ndarray | None, want: int, out: list[Assignment], kept: bool = True) -> None:
        """Assign the best still-valid pairs of a ranking, one per piece, while slots last;
        the pairs looked at leave `order`.

        A kept ranking also skips pieces the child got and parents flagged bad since it was
        scored; a fresh one's pieces are needed ones (the child holds none of them) and its
        parents were filtered already (bad ones stay only when nobody else can serve)."""
        sw = self.swarm
        open_ = sw.open_flags
        running = sw.running[child]
        blocked = sw.blocklist[child]
        links = sw.links
        check_bad = kept and sw.n_bad       # starting a transfer flags nobody bad
        keep = self.keep_features
        have = sw.have_bits[child] if kept else 0
        # a fresh ranking with no blocklist, no bad parent and no link limits (the usual case)
        # needs only the first two checks below: one flag skips the other four per pair
        more = kept or blocked or check_bad or links
        used = 0
        for used, i in enumerate(order, 1):
            parent = parents[i]
            if not open_[parent]:
                continue        # cheapest and likeliest first: a kept ranking's parent is busy
            piece = pieces[i]
            if piece in running or more and (
                    (kept and have >> piece & 1) or (blocked and parent in blocked)
                    or (check_bad and sw.bad[parent]) or (links and not sw.link_open(parent, child))):
                continue
            sw.start_transfer(child, piece, parent)
            out.append(Assignment(piece, parent, x[i].copy() if keep and x is not None else None))
            if len(out) == want:
                break
        del order[:used]

    def _no_candidates(self, child: int, available: bool) -> Decision:
        """Nothing to assign: wait for a busy or future parent, or go back to the source."""
        sw, cfg = self.swarm, self.config
        if available or sw.running[child] or child in sw.back_sourced or (sw.producing - {child}):
            sw.no_parent_tries[child] = 0
            return self._wait(child)
        sw.no_parent_tries[child] += 1
        if sw.no_parent_tries[child] >= cfg.retry_limit and len(sw.back_sourced) < cfg.back_source_limit:
            sw.back_sourced.add(child)
            return Decision(Decision.BACK_TO_SOURCE)
        self._wait(child)
        return self._retry                  # no back-off here
