from collections import namedtuple

import pytest

from sentistream.worker.batching import BusyMeter, Collector, CostModel, LatencyTarget, length_sorted_batches

Rec = namedtuple("Rec", "topic partition offset")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_collector_fires_on_size() -> None:
    c = Collector(size=3, max_wait=10, clock=FakeClock())
    c.add([1, 2])
    assert not c.ready()
    c.add([3])
    assert c.ready()
    assert c.take() == [1, 2, 3]
    assert len(c) == 0 and not c.ready()


def test_collector_fires_on_time_from_the_first_item() -> None:
    clock = FakeClock()
    c = Collector(size=100, max_wait=0.02, clock=clock)
    c.add(["a"])
    clock.now += 0.015
    c.add(["b"])  # a later item does not restart the clock
    assert not c.ready()
    clock.now += 0.006
    assert c.ready()
    assert c.take() == ["a", "b"]
    clock.now += 1
    c.add(["c"])  # the clock starts again with the next batch
    assert not c.ready()


def test_empty_collector_is_never_ready() -> None:
    clock = FakeClock()
    c = Collector(size=1, max_wait=0, clock=clock)
    c.add([])
    clock.now += 10
    assert not c.ready()


def test_length_sorted_batches_cap_size_and_length_spread() -> None:
    items = ["ccc", "a", "bb", "dddd", "e", "f", "gg"]
    assert length_sorted_batches(items, 2, len) == [["a", "e"], ["f", "bb"], ["gg", "ccc"], ["dddd"]]
    assert length_sorted_batches(items, 8, len) == [["a", "e", "f", "bb", "gg"], ["ccc", "dddd"]]
    assert length_sorted_batches(items, 8, len, tolerance=0) == [["a", "e", "f"], ["bb", "gg"], ["ccc"], ["dddd"]]
    assert length_sorted_batches([], 4, len) == []


def test_a_drained_input_closes_the_batch_at_once() -> None:
    c = Collector(size=32, max_wait=10, clock=FakeClock())
    assert not c.ready(drained=True)  # nothing held: nothing to close
    c.add([1, 2])
    assert not c.ready() and c.ready(drained=True)


def test_collector_weighs_items_and_takes_up_to_a_limit() -> None:
    c = Collector(size=10, max_wait=10, clock=FakeClock(), weight=len)
    c.add(["aaaa", "bbbbbb"])
    assert c.ready()  # 4 + 6 sentences
    assert c.take(limit=5) == ["aaaa"]
    assert c.take(limit=1) == ["bbbbbb"]  # always at least one, however heavy
    assert len(c) == 0 and not c.ready(drained=True)


def test_collector_drops_what_it_is_told() -> None:
    c = Collector(size=10, max_wait=10, clock=FakeClock())
    c.add([("p0", 1), ("p1", 2), ("p0", 3)])
    c.drop(lambda item: item[0] == "p0")
    assert c.take() == [("p1", 2)]


def _learned(fixed: float, per_token: float) -> CostModel:
    cost = CostModel()
    for tokens in (10, 20, 40, 80, 160):
        cost.observe_batch(tokens, fixed + per_token * tokens)
    return cost


def test_the_cost_model_learns_fixed_and_per_token_cost() -> None:
    fixed, per_token = _learned(0.002, 0.0005).fit()
    assert fixed == pytest.approx(0.002) and per_token == pytest.approx(0.0005)
    assert CostModel().seconds([], 32) == 0.0


def test_the_latency_target_takes_what_fits_and_no_limit_when_late_or_busy() -> None:
    cost = _learned(0.001, 0.001)  # 30 characters: 2 + 9 tokens, 11 ms; 1 ms per batch
    policy = LatencyTarget(0.100, batch_size=32, cost=cost, chars=lambda item: [30], headroom=0.25)
    items = list(range(40))
    assert policy.limit(items, oldest_age=0.0) == 6  # 6 × 11 + 1 = 67 ms ≤ 75 ms < 78 ms
    assert policy.limit(items, oldest_age=0.030) == 4  # 45 ms left
    assert policy.limit(items, oldest_age=0.070) is None  # nothing fits: late, so no limit (as without a target)
    assert policy.limit(items[:3], oldest_age=0.0) == 3
    assert policy.limit(items, oldest_age=0.0, busy=0.49) == 6
    assert policy.limit(items, oldest_age=0.0, busy=0.51) is None  # no slack for smaller cuts: as without a target


def test_the_busy_meter_gives_the_share_of_its_window_spent_working() -> None:
    now = [100.0]
    meter = BusyMeter(window=2.0, clock=lambda: now[0])
    assert meter.share() == 0.0
    meter.add(0.5)
    now[0] += 1.0
    meter.add(0.3)
    assert meter.share() == pytest.approx(0.4)
    now[0] += 1.5  # the first span ended 2.5 s ago: out of the window
    assert meter.share() == pytest.approx(0.15)
    meter.add(5.0)
    assert meter.share() == 1.0
