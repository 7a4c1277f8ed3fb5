from collections import namedtuple

from worker.batching import Collector, length_sorted_batches, next_offsets

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


def test_next_offsets_takes_the_highest_per_partition() -> None:
    records = [Rec("t", 0, 5), Rec("t", 1, 9), Rec("t", 0, 7), Rec("u", 0, 1)]
    assert next_offsets(records) == {("t", 0): 8, ("t", 1): 10, ("u", 0): 2}


def test_a_drained_input_closes_the_batch_at_once() -> None:
    c = Collector(size=32, max_wait=10, clock=FakeClock())
    assert not c.ready(drained=True)  # nothing held: nothing to close
    c.add([1, 2])
    assert not c.ready() and c.ready(drained=True)
