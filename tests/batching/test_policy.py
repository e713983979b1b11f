"""The window policy, driven by a fake clock: no sleeping."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streamproc.batching import MicroBatcher, WindowPolicy
from streamproc.types import ReleaseReason


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_size_release_cuts_exact_batches_in_order():
    b = MicroBatcher(WindowPolicy(max_size=4, max_wait_ms=10), clock=FakeClock())
    out = b.add(list(range(10)))
    assert [r.items for r in out] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert all(r.reason is ReleaseReason.SIZE for r in out)
    assert len(b) == 2


def test_time_release_after_max_wait_and_not_before():
    clock = FakeClock()
    b = MicroBatcher(WindowPolicy(max_size=100, max_wait_ms=5), clock=clock)
    b.add(["a"])
    clock.now = 4.999
    assert b.release_due() == []
    assert 0 < b.timeout_s() <= 0.005
    clock.now = 5.0
    (r,) = b.release_due()
    assert (r.items, r.reason, r.wait_ms) == (["a"], ReleaseReason.TIME, 5.0)
    assert b.timeout_s(idle_s=0.25) == 0.25  # nothing pending: the idle wait


def test_event_age_deadline_beats_max_wait():
    clock = FakeClock()
    clock.now = 1_000.0
    b = MicroBatcher(WindowPolicy(max_size=100, max_wait_ms=50, max_event_age_ms=20), clock=clock)
    b.add(["old"], oldest_event_ms=990.0)  # already 10 ms old when it arrives
    assert b.policy.deadline_ms() == 1_010.0
    clock.now = 1_010.0
    (r,) = b.release_due()
    assert r.reason is ReleaseReason.DEADLINE


def test_rebalance_and_shutdown_release_everything_in_max_size_pieces():
    b = MicroBatcher(WindowPolicy(max_size=3, max_wait_ms=5), clock=FakeClock())
    b.add([1, 2])
    b.add([3])  # completes a SIZE batch
    b.add([4, 5])
    out = b.release_all(ReleaseReason.SHUTDOWN)
    assert [(r.items, r.reason) for r in out] == [([4, 5], ReleaseReason.SHUTDOWN)]
    assert len(b) == 0 and b.policy.deadline_ms() is None


def test_wait_is_measured_from_the_oldest_remaining_item_after_a_size_cut():
    clock = FakeClock()
    b = MicroBatcher(WindowPolicy(max_size=2, max_wait_ms=5), clock=clock)
    b.add(["a"])
    clock.now = 3.0
    b.add(["b", "c"])  # a+b released; c arrived at 3, due at 8
    clock.now = 7.9
    assert b.release_due() == []
    clock.now = 8.0
    (r,) = b.release_due()
    assert r.items == ["c"] and r.wait_ms == 5.0


def test_items_that_arrived_while_the_driver_was_busy_wait_from_their_arrival():
    clock = FakeClock()
    b = MicroBatcher(WindowPolicy(max_size=100, max_wait_ms=5), clock=clock)
    clock.now = 12.0  # the driver looked at 10, then processed a batch until 12
    b.add(["a", "b"], arrived_ms=10.0)
    assert b.policy.deadline_ms() == 15.0  # not 17: the 2 ms of processing count
    clock.now = 15.0
    (r,) = b.release_due()
    assert (r.items, r.reason, r.wait_ms) == (["a", "b"], ReleaseReason.TIME, 5.0)


def test_a_batch_that_waited_max_wait_already_is_due_at_once():
    clock = FakeClock()
    b = MicroBatcher(WindowPolicy(max_size=100, max_wait_ms=5), clock=clock)
    clock.now = 30.0  # a 20 ms batch: what came meanwhile is overdue
    assert b.add(["x"], arrived_ms=10.0) == []
    (r,) = b.release_due()
    assert r.items == ["x"] and r.wait_ms == 20.0


def test_an_arrival_is_capped_at_now_and_kept_in_order():
    clock = FakeClock()
    b = MicroBatcher(WindowPolicy(max_size=100, max_wait_ms=5), clock=clock)
    clock.now = 10.0
    b.add(["a"], arrived_ms=50.0)  # a future arrival counts as now
    assert b.policy.deadline_ms() == 15.0
    clock.now = 11.0
    b.add(["b"], arrived_ms=2.0)  # not before the pending "a": the window stays a's
    assert b.policy.deadline_ms() == 15.0
    clock.now = 14.9
    assert b.release_due() == []
    clock.now = 15.0
    assert [r.items for r in b.release_due()] == [["a", "b"]]


@given(st.lists(st.integers(min_value=0, max_value=20), max_size=30), st.integers(1, 16))
def test_no_item_lost_or_reordered(chunks, max_size):
    clock = FakeClock()
    b = MicroBatcher(WindowPolicy(max_size=max_size, max_wait_ms=1), clock=clock)
    out: list[int] = []
    n = 0
    for k in chunks:
        clock.now += 0.6
        for r in b.add(list(range(n, n + k))):
            assert len(r.items) == max_size
            out.extend(r.items)
        n += k
        for r in b.release_due():
            assert 0 < len(r.items) <= max_size
            out.extend(r.items)
    for r in b.release_all(ReleaseReason.SHUTDOWN):
        out.extend(r.items)
    assert out == list(range(n))


steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 40)),
        st.tuples(st.just("tick"), st.floats(0.0, 8.0)),
        st.tuples(st.just("due"), st.just(0)),
        st.tuples(st.just("all"), st.just(0)),
    ),
    max_size=60,
)


@given(steps=steps, max_size=st.integers(1, 16))
def test_items_come_out_once_in_order_in_batches_up_to_max_size(steps, max_size):
    clock = FakeClock()
    b = MicroBatcher(WindowPolicy(max_size=max_size, max_wait_ms=5), clock=clock)
    fed: list[int] = []
    out: list[int] = []
    arrived: dict[int, float] = {}
    for kind, arg in steps:
        released = []
        if kind == "add":
            items = list(range(len(fed), len(fed) + int(arg)))
            fed += items
            arrived.update(dict.fromkeys(items, clock.now))
            released = b.add(items)
        elif kind == "tick":
            clock.now += float(arg)
        elif kind == "due":
            released = b.release_due()
        else:
            released = b.release_all(ReleaseReason.SHUTDOWN)
        for r in released:
            assert 1 <= len(r.items) <= max_size
            assert r.wait_ms == clock.now - arrived[r.items[0]]  # from its oldest item
            out += r.items
        assert len(b) == len(fed) - len(out)
    out += [x for r in b.release_all(ReleaseReason.SHUTDOWN) for x in r.items]
    assert out == fed and len(b) == 0
