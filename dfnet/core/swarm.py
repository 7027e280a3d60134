"""Per-task swarm state: who holds which piece, who uploads what, and how parents behaved.

Owns, for one task: the peers (normal peers and seeds) with their bitfields, the holder list
and online holder count of every piece, upload-slot accounting, pieces in flight per child,
per-parent history (serve successes and failures, piece costs, recent bytes sent), blocklists,
and bad-parent flags. It also keeps each parent's feature row for `models.interfaces.FEATURES`
up to date, so building a candidate batch is a gather, not a loop.

Rules kept here:
- Nothing here does I/O or reads a clock; every event carries `now`.
- A peer's index is its position in this swarm (0, 1, ...), stable for the task's life.
- Upload slots are taken when a transfer is assigned and given back when it ends, well or not.
  A peer has the policy's slot count, but never more than its uplink can feed at
  `min_upload_bps` each (rounded up): a 10 Gbps seed with 2,000 slots would hand out 5 Mbps trickles that
  keep children waiting on it while their neighbours' uplinks idle.
- `count[piece]` counts online holders only; a peer that leaves stops counting at once.
- Bad parent (Dragonfly 2): its last piece cost more than mean + 3 sigma of its history, or
  more than 20x the mean while the history is short. A bad parent is skipped while others
  can serve; the flag clears with its next normal piece.
- Link slots: a directed link between two IDCs may be given a number of slots
  (`limit_link`); a transfer from a parent in one IDC to a child in the other holds one for
  its life, taken and given back with the parent's upload slot. A scarce link then carries a
  few transfers at a useful rate instead of hundreds of trickles that hold parents' upload
  slots for minutes (Double 11: 10,000 hosts, two IDCs, one 10 Gbit/s link).
- Recent traffic is kept as exponentially decayed byte counters (tau 5 s for the current
  rate, 60 s for "bytes sent last minute"), updated when a piece ends, so no timers are needed.
- Two views of the same facts, for two kinds of reader. numpy arrays (`open`, `uploads`,
  `pfeat`...) serve gathers over many peers; Python ints used as bitsets (`have_bits`,
  `run_bits`, `avail_bits`), lists (`count_list`...) and the count levels (`levels[c]`: the
  pieces held by exactly c online peers; `filled`: the non-empty ones, ascending) serve the scheduler's per-request questions ("what
  does this parent offer this child, and which of it is rarest"), which on a 1,000-piece task
  cost a few tenths of a microsecond as integer operations against a few microseconds per
  numpy call. The per-piece path writes the arrays' cells through memoryviews of the same
  memory (`pf_cells`, flat, and `_up`: a third of numpy's item assignment, about a dozen times
  per piece).
  Every update writes both views, except where no hot path reads the array:
  `have`, `count` and `available` are built from the bitsets and lists when asked for
  (tests, a peer leaving), so a piece costs no write into a peers x pieces matrix.
"""
from __future__ import annotations

import math
from array import array
from math import exp
from bisect import bisect_left, insort
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from models.interfaces import COL, N_FEATURES

from .task import Task

LOCATION_LEVELS = 5
SHORT_HISTORY: Final = 30      # below this many samples the 20x-mean rule applies
TAU_RATE_S: Final = 5.0
TAU_MINUTE_S: Final = 60.0
LEVEL_BLOCK: Final = 32     # count levels per block of `Swarm.blocks`

# Parent columns of the feature table live contiguously: one gather fills them all. Typed
# ints: compiled (`dfnet.native`), arithmetic on untyped constants is generic object math
PARENT_FIRST: Final[int] = COL["parent_is_seed"]
PARENT_LAST: Final[int] = COL["parent_order"]
_P: dict[str, int] = {name: COL[name] - PARENT_FIRST for name in (
    "parent_is_seed", "parent_finished", "parent_completed", "parent_upload_success",
    "parent_free_slots", "parent_uploads", "parent_upload_bps", "parent_tx_bps",
    "parent_sent_last_min", "parent_mean_cost_s", "parent_order")}
N_PARENT_COLS: Final[int] = PARENT_LAST - PARENT_FIRST + 1
_FINISHED: Final[int] = _P["parent_finished"]
_COMPLETED: Final[int] = _P["parent_completed"]
_SUCCESS: Final[int] = _P["parent_upload_success"]
_UPLOADS: Final[int] = _P["parent_uploads"]
_FREE: Final[int] = _P["parent_free_slots"]
_TX: Final[int] = _P["parent_tx_bps"]
_SENT: Final[int] = _P["parent_sent_last_min"]
_MEAN_COST: Final[int] = _P["parent_mean_cost_s"]
assert N_PARENT_COLS == len(_P) and N_FEATURES > PARENT_LAST


@dataclass(slots=True)
class PeerInfo:
    """What the swarm remembers of a peer that never changes."""

    key: Any                  # the I/O shell's name for the peer (host id, address, ...)
    is_seed: bool
    idc: str
    location: str
    upload_bps: float
    download_bps: float


class _History:
    """A parent's record: pieces served, their cost (Welford's running mean and variance), and
    recent bytes sent, decayed. One object per peer with typed fields: compiled, the floats
    live in it unboxed, where a list of them made a new float object per update."""

    __slots__ = ("ok", "failed", "n", "mean", "m2", "bad", "sent_t", "sent_rate", "sent_minute")

    def __init__(self) -> None:
        self.ok = 0                 # pieces served
        self.failed = 0             # transfers that ended without a good piece
        self.n = 0                  # piece costs seen
        self.mean = 0.0
        self.m2 = 0.0
        self.bad = False
        self.sent_t = 0.0           # when the sent counters were last decayed
        self.sent_rate = 0.0        # bytes, decayed with TAU_RATE_S
        self.sent_minute = 0.0      # bytes, decayed with TAU_MINUTE_S


def bit_indices(bits: int) -> list[int]:
    """The set bits of a bitset (pieces), ascending."""
    out: list[int] = []
    while bits:
        # positive ints only: `bits & -bits` builds a negative long, which costs more
        rest = bits & (bits - 1)            # the lowest set bit cleared
        out.append((bits ^ rest).bit_length() - 1)
        bits = rest
    return out


class _Locations:
    """Distinct locations and how many leading '|' parts each pair shares, / 5.

    Scenarios and fleets have few distinct locations, so a small table answers every
    (parent, child) pair with one gather.
    """

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._parts: list[list[str]] = []
        self.match = np.zeros((0, 0))
        self.rows: list[list[float]] = []       # `match` as lists

    def id(self, location: str) -> int:
        i = self._ids.get(location)
        if i is not None:
            return i
        i = self._ids[location] = len(self._parts)
        parts = [p for p in location.split("|") if p][:LOCATION_LEVELS] if location else []
        self._parts.append(parts)
        n = len(self._parts)
        match = np.zeros((n, n))
        match[: n - 1, : n - 1] = self.match
        for j, other in enumerate(self._parts):
            common = 0
            for a, b in zip(parts, other):
                if a != b:
                    break
                common += 1
            match[i, j] = match[j, i] = common / LOCATION_LEVELS
        self.match = match
        self.rows = match.tolist()
        return i


class Swarm:
    """All state of one task's swarm. The scheduler reads it; events update it."""

    def __init__(self, task: Task, upload_slots: int, seed_upload_slots: int,
                 min_upload_bps: float = 0.0, capacity: int = 64):
        self.task = task
        # typed: `Task` is not compiled, and an untyped count makes every comparison with it
        # generic object math in the compiled build
        self._piece_size: int = task.piece_size
        self.min_upload_bps = min_upload_bps
        self.n_pieces: int = task.n_pieces
        self.full_bits: int = (1 << self.n_pieces) - 1   # every piece
        self.upload_slots = upload_slots
        self.seed_upload_slots = seed_upload_slots
        self.peers: list[PeerInfo] = []
        self.seeds: list[int] = []          # supernodes: few, always considered as parents
        self.open_list: list[int] = []      # open peers, in no order (swap-remove)
        self._open_pos: dict[int, int] = {}
        self.online_peers = 0
        # every peer that ever held each piece, in arrival order, for sampling holders at random.
        # Compact arrays: a list would box each entry, and Double 11 keeps 12.8 million of
        # them (half a GB of int objects, scattered among everything the run touches)
        self.holders: list[array[int]] = [array("i") for _ in range(self.n_pieces)]
        # the bitset view: bit p of an int is piece p
        self.have_bits: list[int] = []      # per peer: the pieces it holds
        self.run_bits: list[int] = []       # per peer: the pieces in flight to it
        self.avail_bits = 0                 # pieces some online peer holds
        self.count_list: list[int] = [0] * self.n_pieces     # `count` as a list
        self.idc_list: list[int] = []       # `idc` and `loc` as lists
        self.loc_list: list[int] = []
        self.online_list: list[bool] = []   # `online`, `uploads` and `slots` as lists
        self._uploads: list[int] = []
        self._slots: list[int] = []
        self.levels: list[int] = [0, 0]     # levels[c]: pieces with c online holders (c >= 1)
        # the non-empty levels, ascending: in a big swarm the counts spread over thousands of
        # levels, most of them empty, and a walk over all of them cost ~100 steps per question
        self.filled: list[int] = []
        # blocks[b]: the pieces whose count is in levels b * LEVEL_BLOCK .. (b + 1) * LEVEL_BLOCK - 1
        # (an OR of those levels), so a walk up the levels skips a block in one AND
        self.blocks: list[int] = [0]
        self._idc_codes: dict[str, int] = {}
        self.links: dict[tuple[int, int], list[int]] = {}   # (from idc, to idc) -> [slots, in use]
        self._locations = _Locations()
        # per-peer state kept as Python lists where the scheduler reads scalars in loops,
        # and as arrays where it gathers many at once
        self.running: list[set[int]] = []
        self.blocklist: list[set[int]] = []
        self.finished: list[int] = []
        self.no_parent_tries: list[int] = []
        self.back_sourced: set[int] = set()
        self.n_bad = 0                      # how many parents are flagged bad now
        self.producing: set[int] = set()    # peers fetching from the origin right now
        self._history: list[_History] = []
        self._alloc(capacity)

    # ---- storage -------------------------------------------------------------------------
    def _alloc(self, capacity: int) -> None:
        n = len(self.peers)

        def grow(old: np.ndarray | None, shape: tuple[int, ...], dtype, fill) -> np.ndarray:
            new = np.full(shape, fill, dtype=dtype)
            if old is not None:
                new[:n] = old[:n]
            return new

        self.pfeat = grow(getattr(self, "pfeat", None), (capacity, N_PARENT_COLS), np.float64, 0.0)
        # the per-piece path writes single cells through memoryviews of the same memory: a
        # memoryview item store costs about a third of numpy's __setitem__, and a piece makes
        # about a dozen of them. The view is flat (cell `peer * N_PARENT_COLS + column`): an
        # int index costs two thirds of a (row, column) tuple's. The scheduler reads single
        # cells through it too (a linear selector's sum)
        # (typed Any: a float64 view takes floats, which typeshed's memoryview does not know)
        self.pf_cells: Any = memoryview(self.pfeat.reshape(-1))
        self.online = grow(getattr(self, "online", None), (capacity,), np.bool_, False)
        # online and with a free upload slot: the filter every candidate parent passes. Kept
        # as bytes, for the scheduler's scalar loops (much faster to index than numpy), and
        # `open` is a numpy view of the same bytes: one write updates both
        flags = bytearray(capacity)
        flags[:n] = getattr(self, "open_flags", b"")[:n]
        self.open_flags = flags
        self.open = np.frombuffer(flags, dtype=np.bool_)
        self.uploads = grow(getattr(self, "uploads", None), (capacity,), np.int64, 0)
        self._up = memoryview(self.uploads)
        self.slots = grow(getattr(self, "slots", None), (capacity,), np.int64, 0)
        self.bad = grow(getattr(self, "bad", None), (capacity,), np.bool_, False)
        self.idc = grow(getattr(self, "idc", None), (capacity,), np.int64, -1)
        self.loc = grow(getattr(self, "loc", None), (capacity,), np.int64, 0)
        self.capacity = capacity

    def add_peer(self, key: object, *, is_seed: bool = False, idc: str = "", location: str = "",
                 upload_bps: float = 0.0, download_bps: float = 0.0) -> int:
        """Register a peer (or seed) with the task and return its index."""
        i = len(self.peers)
        if i == self.capacity:
            self._alloc(self.capacity * 2)
        self.peers.append(PeerInfo(key, is_seed, idc, location, upload_bps, download_bps))
        if is_seed:
            self.seeds.append(i)
        self.online[i] = True
        self.online_peers += 1
        slots = self.seed_upload_slots if is_seed else self.upload_slots
        if self.min_upload_bps > 0 and upload_bps > 0:
            slots = min(slots, max(1, math.ceil(upload_bps / self.min_upload_bps - 1e-9)))
        self.slots[i] = slots
        self._slots.append(slots)
        self._uploads.append(0)
        self.online_list.append(True)
        self._set_open(i, True)
        self.idc[i] = self.idc_code(idc)
        self.idc_list.append(int(self.idc[i]))
        self.loc[i] = self._locations.id(location)
        self.loc_list.append(int(self.loc[i]))
        row = self.pfeat[i]
        row[_P["parent_is_seed"]] = 1.0 if is_seed else 0.0
        row[_P["parent_upload_success"]] = 1.0
        row[_P["parent_free_slots"]] = 1.0
        row[_P["parent_upload_bps"]] = upload_bps
        row[_P["parent_order"]] = i
        self.running.append(set())
        self.have_bits.append(0)
        self.run_bits.append(0)
        self.levels.append(0)
        self.blocklist.append(set())
        self.finished.append(0)
        self.no_parent_tries.append(0)
        self._history.append(_History())
        return i

    # ---- numpy views built on demand (tests, and rare events such as a peer leaving) ------
    @property
    def have(self) -> np.ndarray:
        """`have[peer, piece]`: whether the peer holds the piece, one row per slot of capacity."""
        n = self.n_pieces
        out = np.zeros((self.capacity, n), dtype=np.bool_)
        nbytes = (n + 7) // 8
        for peer, bits in enumerate(self.have_bits):
            if bits:
                row = np.frombuffer(bits.to_bytes(nbytes, "little"), dtype=np.uint8)
                out[peer] = np.unpackbits(row, bitorder="little")[:n]
        return out

    @property
    def count(self) -> np.ndarray:
        """Online holders per piece."""
        return np.array(self.count_list, dtype=np.int64)

    @property
    def available(self) -> np.ndarray:
        """Pieces some online peer holds."""
        return self.count > 0

    def idc_code(self, idc: str) -> int:
        return self._idc_codes.setdefault(idc, len(self._idc_codes))

    def limit_link(self, src_idc: str, dst_idc: str, slots: int) -> None:
        """At most `slots` transfers at once from parents in `src_idc` to children in `dst_idc`."""
        if src_idc == dst_idc or slots < 1:
            raise ValueError("a link joins two different IDCs and has at least one slot")
        self.links[(self.idc_code(src_idc), self.idc_code(dst_idc))] = [slots, 0]

    def link_open(self, parent: int, child: int) -> bool:
        """Whether a transfer parent -> child may start as far as IDC links go."""
        a, b = self.idc_list[parent], self.idc_list[child]
        if a == b:
            return True
        link = self.links.get((a, b))
        return link is None or link[1] < link[0]

    def _hold_link(self, parent: int, child: int, delta: int) -> None:
        a, b = self.idc_list[parent], self.idc_list[child]
        if a != b:
            link = self.links.get((a, b))
            if link is not None:
                link[1] += delta

    # ---- pieces --------------------------------------------------------------------------
    def add_piece(self, peer: int, piece: int) -> None:
        """`peer` now holds `piece` (verified)."""
        bit = 1 << piece
        held = self.have_bits[peer]
        if held & bit:
            return
        self.have_bits[peer] = held | bit
        self.holders[piece].append(peer)
        if self.online_list[peer]:
            c = self.count_list[piece]
            self.count_list[piece] = c + 1
            # the piece moves from count level c to c + 1. In a big swarm most levels hold one
            # piece or none, so the usual move empties level c into an empty c + 1: the entry
            # for c in `filled` becomes c + 1 in place, where a delete and an insort moved the
            # list's tail twice
            levels = self.levels
            above = levels[c + 1]
            levels[c + 1] = above | bit
            up = c + 1
            if up % LEVEL_BLOCK == 0 or not c:     # into a new block (or the first)
                blocks = self.blocks
                b = up // LEVEL_BLOCK
                if b == len(blocks):
                    blocks.append(0)
                blocks[b] |= bit
                if c:
                    blocks[b - 1] ^= bit
            if c:
                left = levels[c] ^ bit
                levels[c] = left
                if not left:
                    filled = self.filled
                    i = bisect_left(filled, c)
                    if above:
                        del filled[i]
                    else:
                        filled[i] = c + 1
                elif not above:
                    insort(self.filled, c + 1)
            else:
                self.avail_bits |= bit
                if not above:
                    insort(self.filled, 1)
        done = self.finished[peer] + 1
        self.finished[peer] = done
        row = peer * N_PARENT_COLS
        self.pf_cells[row + _FINISHED] = done / self.n_pieces
        if done == self.n_pieces:
            self.pf_cells[row + _COMPLETED] = 1.0

    def is_complete(self, peer: int) -> bool:
        return self.finished[peer] == self.n_pieces

    def rarest(self, pieces: int) -> int:
        """The rarest of `pieces` (a non-empty bitset of available pieces); lowest index on ties.

        Few pieces: compare their counts. Many: walk the count levels up from the lowest, a
        block of `LEVEL_BLOCK` levels per step until one holds one of them (a parent's offer is
        mostly common pieces: on Double 11 at 4 MiB pieces, a walk level by level took
        hundreds of steps, a fifth of the run), then the block's non-empty levels.
        """
        if pieces.bit_count() <= 8:
            cnt = self.count_list
            best = -1
            best_c = 1 << 62
            while pieces:
                rest = pieces & (pieces - 1)    # as in `bit_indices`
                p = (pieces ^ rest).bit_length() - 1
                if cnt[p] < best_c:
                    best, best_c = p, cnt[p]
                pieces = rest
            return best
        levels, filled, blocks = self.levels, self.filled, self.blocks
        # from the lowest count held: late in a flash crowd every piece has thousands of
        # holders, and the blocks below are empty
        for b in range(filled[0] // LEVEL_BLOCK, len(blocks)):
            if blocks[b] & pieces:
                # the lowest non-empty level of this block that holds one of them
                for i in range(bisect_left(filled, b * LEVEL_BLOCK), len(filled)):
                    x = levels[filled[i]] & pieces
                    if x:
                        return (x ^ (x - 1)).bit_length() - 1
        raise ValueError("none of the pieces is available")

    def rarest_few(self, pieces: int, k: int) -> list[int]:
        """Up to `k` of the rarest of `pieces` (available pieces), rarest first, then by index."""
        out: list[int] = []
        if pieces.bit_count() <= k:
            while pieces:
                rest = pieces & (pieces - 1)
                out.append((pieces ^ rest).bit_length() - 1)
                pieces = rest
            cnt = self.count_list
            out.sort(key=cnt.__getitem__)
            return out
        levels = self.levels
        for c in self.filled:
            x = levels[c] & pieces
            while x:
                rest = x & (x - 1)
                out.append((x ^ rest).bit_length() - 1)
                if len(out) == k:
                    return out
                x = rest
        return out

    # ---- transfers -----------------------------------------------------------------------
    def start_transfer(self, child: int, piece: int, parent: int) -> None:
        self.running[child].add(piece)
        self.run_bits[child] |= 1 << piece
        # one upload more on `parent` (`_set_uploads`, written out: once per piece)
        n = self._uploads[parent] + 1
        self._uploads[parent] = n
        self._up[parent] = n
        slots = self._slots[parent]
        row = parent * N_PARENT_COLS
        pf = self.pf_cells
        pf[row + _UPLOADS] = n
        if n < slots:
            pf[row + _FREE] = 1.0 - n / slots
        else:
            if self.open_flags[parent]:
                self._set_open(parent, False)
            pf[row + _FREE] = 0.0
        if self.links:
            self._hold_link(parent, child, 1)

    def finish_transfer(self, child: int, piece: int, parent: int, nbytes: int, cost_s: float,
                        now: float) -> None:
        """A verified piece arrived at `child` from `parent` after `cost_s` seconds.

        The supernode and the simulator call this once per piece, so the parent's upload count
        and cost record (Welford's mean and variance) are updated here, written out, rather
        than through a call each.
        """
        running = self.running[child]
        if piece in running:            # `run_bits` has the piece's bit exactly then
            running.remove(piece)
            self.run_bits[child] ^= 1 << piece
        # one upload fewer on `parent` (`_set_uploads`, written out)
        uploads = self._uploads
        n = uploads[parent] - 1
        uploads[parent] = n
        self._up[parent] = n
        slots = self._slots[parent]
        row = parent * N_PARENT_COLS
        pf = self.pf_cells
        pf[row + _UPLOADS] = n
        if n < slots:
            if not self.open_flags[parent] and self.online_list[parent]:
                self._set_open(parent, True)
            pf[row + _FREE] = 1.0 - n / slots
        else:
            pf[row + _FREE] = 0.0
        if self.links:
            self._hold_link(parent, child, -1)
        h = self._history[parent]
        h.ok += 1
        pf[row + _SUCCESS] = h.ok / (h.ok + h.failed)
        self._add_sent(h, row, nbytes, now)
        # the parent's piece cost, scaled to a full piece; bad if it is an outlier of its history
        cost = cost_s * self._piece_size / max(nbytes, 1)
        k, mean = h.n, h.mean
        if k >= 2:
            if k < SHORT_HISTORY:
                bad = cost > 20.0 * mean
            else:
                bad = cost > mean + 3.0 * math.sqrt(h.m2 / (k - 1))
        else:
            bad = False
        if bad != h.bad:
            h.bad = bad
            self.n_bad += 1 if bad else -1
            self.bad[parent] = bad
        k += 1
        delta = cost - mean
        mean += delta / k
        h.n, h.mean = k, mean
        h.m2 += delta * (cost - mean)
        pf[row + _MEAN_COST] = mean
        self.no_parent_tries[child] = 0
        self.add_piece(child, piece)

    def start_part(self, child: int, piece: int, parent: int) -> None:
        """`parent` sends part of a piece `child` already runs (the end game): a slot on
        `parent`, nothing new for the child."""
        self._set_uploads(parent, 1)
        if self.links:
            self._hold_link(parent, child, 1)

    def finish_part(self, child: int, piece: int, parent: int, nbytes: int, now: float) -> None:
        """A part of a piece arrived; the piece counts when its last part does
        (`finish_transfer`). The part's bytes count as sent; its cost is not a piece's."""
        self._set_uploads(parent, -1)
        if self.links:
            self._hold_link(parent, child, -1)
        self._add_sent(self._history[parent], parent * N_PARENT_COLS, nbytes, now)

    def _add_sent(self, h: _History, row: int, nbytes: int, now: float) -> None:
        """Recent bytes sent, decayed: the parent's current rate and its last minute's bytes
        (`row`: the parent's first cell in `pf_cells`)."""
        dt = now - h.sent_t
        if dt > 0.0:
            h.sent_t = now
            h.sent_rate *= exp(-dt / TAU_RATE_S)
            h.sent_minute *= exp(-dt / TAU_MINUTE_S)
        h.sent_rate += nbytes
        h.sent_minute += nbytes
        self.pf_cells[row + _TX] = h.sent_rate / TAU_RATE_S
        self.pf_cells[row + _SENT] = h.sent_minute

    def fail_transfer(self, child: int, piece: int, parent: int, *, corrupt: bool = False) -> None:
        """A transfer ended without a good piece; a corrupt piece blocklists its parent."""
        self._stop_running(child, piece)
        self._set_uploads(parent, -1)
        if self.links:
            self._hold_link(parent, child, -1)
        h = self._history[parent]
        h.failed += 1
        self.pf_cells[parent * N_PARENT_COLS + _SUCCESS] = h.ok / (h.ok + h.failed)
        if corrupt or not self.online_list[parent]:
            self.blocklist[child].add(parent)

    def _stop_running(self, child: int, piece: int) -> None:
        running = self.running[child]
        if piece in running:            # `run_bits` has the piece's bit exactly then
            running.remove(piece)
            self.run_bits[child] ^= 1 << piece     # cheaper than & ~bit on a long bitset

    def _set_uploads(self, parent: int, delta: int) -> None:
        """One upload more (+1) or fewer (-1) on `parent`."""
        uploads = self._uploads
        n = uploads[parent] + delta
        uploads[parent] = n
        self._up[parent] = n
        slots = self._slots[parent]
        # only an online peer is ever open, so an open one needs no online check
        if n < slots:
            if not self.open_flags[parent] and self.online_list[parent]:
                self._set_open(parent, True)
            free = 1.0 - n / slots
        else:
            if self.open_flags[parent]:
                self._set_open(parent, False)
            free = 0.0
        row = parent * N_PARENT_COLS
        self.pf_cells[row + _UPLOADS] = n
        self.pf_cells[row + _FREE] = free

    def _set_open(self, peer: int, is_open: bool) -> None:
        if self.open_flags[peer] == is_open:
            return
        self.open_flags[peer] = is_open        # `open` is a view of these bytes
        if is_open:
            self._open_pos[peer] = len(self.open_list)
            self.open_list.append(peer)
        else:
            pos = self._open_pos.pop(peer)
            last = self.open_list.pop()
            if last != peer:
                self.open_list[pos] = last
                self._open_pos[last] = pos

    # ---- membership ----------------------------------------------------------------------
    def remove_peer(self, peer: int) -> None:
        """The peer left or died: it stops counting as a holder at once."""
        if not self.online[peer]:
            return
        self.online[peer] = False
        self.online_list[peer] = False
        self._set_open(peer, False)
        self.online_peers -= 1
        cnt = self.count_list
        for piece in bit_indices(self.have_bits[peer]):
            cnt[piece] -= 1
        self.producing.discard(peer)
        self._rebuild_levels()

    def _rebuild_levels(self) -> None:
        """Counts went down (rare: a peer left); rebuild the bitset view from `count_list`."""
        cnt = self.count_list
        levels = [0] * len(self.levels)
        avail = 0
        for p, c in enumerate(cnt):
            if c:
                levels[c] |= 1 << p
                avail |= 1 << p
        self.levels = levels
        self.avail_bits = avail
        self.filled = [c for c in range(1, len(levels)) if levels[c]]
        blocks = [0] * (len(levels) // LEVEL_BLOCK + 1)
        for c in self.filled:
            blocks[c // LEVEL_BLOCK] |= levels[c]
        self.blocks = blocks

    def location_row(self, child: int) -> list[float]:
        """Location match of every known location against the child's, by location id."""
        return self._locations.rows[self.loc_list[child]]

    def location_match(self, parents: np.ndarray, child: int) -> np.ndarray:
        """Matched leading location parts / 5, for each parent against the child."""
        return self._locations.match[self.loc[parents], self.loc[child]]
