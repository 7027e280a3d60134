"""The supernode's sync rules around the core, in process: who decides first after a result.

The core hands a freed upload slot to the waiting child furthest behind (it wakes that child
with the slot as a hint). In one sync the supernode applies a peer's results and then decides
for that peer; an idle reporter must not take the slot it has just freed from the child the
core woke for it (the simulator lets woken children ask first; live, the reporter used to win,
and in a flash crowd the first peers kept the seed while the others waited).
"""
from __future__ import annotations

from dfnet.protocol import PeerInfo, parse_sync
from dfnet.supernode.tasks import MIN_UPLOAD_BPS, YIELD_S
from dfnet.throttle import set_rate
from tests.test_supernode_cache import MiB, _cached, _supernode


def test_an_idle_reporter_lets_the_child_woken_for_its_slot_decide_first(tmp_path):
    tid = _cached(tmp_path, "a", 4 * MiB, 0)
    sn = _supernode(tmp_path, high=1 << 40, low=1 << 39)
    set_rate(sn.upload_bucket, MIN_UPLOAD_BPS)       # the seed gets one upload slot
    t = sn._task_for(tid)
    seed = t.ids[t.seed]
    a = t.register(PeerInfo("a", "127.0.0.1:1001"))
    b = t.register(PeerInfo("b", "127.0.0.1:1002"))
    first = t.decide(a, 0.0)
    assert [x.parent for x in first.assign] == [seed]
    assert not t.decide(b, 0.0).assign                # the seed's one slot is a's
    piece = first.assign[0].piece
    t.apply(parse_sync({"peer": "a", "done": [[piece, seed, MiB, 0.5]], "idle": True}), 1.0)
    held = t.decide(a, 1.0)
    assert not held.assign and 0 < held.retry_after <= YIELD_S + 1e-9
    assert t.event(a).is_set() is False
    got = t.decide(b, 1.01)                           # the woken child takes the freed slot
    assert [x.parent for x in got.assign] == [seed]
    assert t.event(a).is_set()                        # and the reporter is told to ask again
    again = t.decide(a, 1.02)
    assert "a" not in {t.ids[c] for c in t.yielding}
    assert all(x.parent != seed for x in again.assign)


def test_a_reporter_waits_no_longer_than_its_yield(tmp_path):
    tid = _cached(tmp_path, "b", 4 * MiB, 0)
    sn = _supernode(tmp_path, high=1 << 40, low=1 << 39)
    set_rate(sn.upload_bucket, MIN_UPLOAD_BPS)
    t = sn._task_for(tid)
    seed = t.ids[t.seed]
    a = t.register(PeerInfo("a", "127.0.0.1:1001"))
    b = t.register(PeerInfo("b", "127.0.0.1:1002"))
    piece = t.decide(a, 0.0).assign[0].piece
    t.decide(b, 0.0)
    t.apply(parse_sync({"peer": "a", "done": [[piece, seed, MiB, 0.5]], "idle": True}), 1.0)
    assert not t.decide(a, 1.0).assign
    # b never asks (gone quiet): after YIELD_S the reporter decides for itself
    late = t.decide(a, 1.0 + YIELD_S + 0.01)
    assert [x.parent for x in late.assign] == [seed]
