"""The quarantine protocol (worker/quarantine.py) without Kafka: workers that die on one record,
one after the other, leave notes in the committed offsets' metadata until the record is
dead-lettered; nothing else is, and a clean handover costs the next owner nothing."""

from __future__ import annotations

from collections import namedtuple

import pytest
from kafka import TopicPartition

from sentistream.worker.quarantine import CLEAN, Marker, Quarantine

Rec = namedtuple("Rec", "topic partition offset timestamp key value headers")
TP = TopicPartition("in", 0)


class Group:
    """The committed offsets (with metadata) that every member of a group reads."""

    def __init__(self) -> None:
        self.committed: dict[TopicPartition, tuple[int, str]] = {}
        self.commits = 0

    def commit(self, offsets: dict[TopicPartition, tuple[int, str]], blocking: bool = True) -> None:
        self.committed.update(offsets)
        self.commits += 1

    def member(self, attempts: int = 3, step: int = 10) -> Quarantine:
        q = Quarantine(attempts, step, self.commit)
        q.assigned({TP: self.committed.get(TP)})
        return q


def rec(offset: int) -> Rec:
    return Rec("in", 0, offset, 0, None, b"x", [])


def work(group: Group, q: Quarantine, offsets: range, poison: int | None) -> list[int]:
    """One worker's life on the partition: what it dead-letters; stops (dies) at the poison."""
    crashed = []
    if not q.is_careful(TP):
        q.cover([rec(o) for o in offsets])
    for o in offsets:
        if q.is_careful(TP):
            rejection = q.attempt(rec(o))
            if rejection is not None:
                crashed.append(o)
                q.sent({TP: o + 1})
                group.commit({TP: (o + 1, q.metadata(TP))})
                continue
        if o == poison:
            return crashed  # SIGKILL: nothing more is committed
        q.sent({TP: o + 1})
        group.commit({TP: (o + 1, q.metadata(TP))})
    return crashed


@pytest.mark.parametrize("attempts", [2, 3, 5])
def test_a_record_that_kills_every_worker_is_dead_lettered_after_max_attempts_deaths(attempts) -> None:
    group, deaths, crashed = Group(), 0, []
    while not crashed:
        q = group.member(attempts)
        start = group.committed.get(TP, (0, ""))[0]
        crashed = work(group, q, range(start, 30), poison=17)
        deaths += not crashed
        assert deaths <= attempts, "the culprit was tried more often than max_record_attempts"
    assert crashed == [17] and deaths == attempts
    assert group.committed[TP][0] == 30  # everything else went through


def test_the_first_death_in_a_batch_leaves_the_whole_window_careful_and_only_the_culprit_is_lost() -> None:
    group = Group()
    earlier = group.member()
    work(group, earlier, range(0, 5), poison=None)
    earlier.handed_over({TP})
    first = group.member(step=10)
    assert not first.is_careful(TP)
    work(group, first, range(5, 12), poison=8)  # dies on 8 in a batch; its note reached 21
    offset, note = group.committed[TP]
    assert offset == 8 and Marker.decode(note).end == 21
    second = group.member()
    assert second.is_careful(TP)
    assert second.attempt(rec(8)) is None  # tried alone (2nd try), its note names it
    assert Marker.decode(group.committed[TP][1]) == Marker(21, 8, 1)


def test_a_clean_handover_costs_the_next_owner_nothing() -> None:
    group = Group()
    q = group.member()
    work(group, q, range(0, 40), poison=None)
    assert Marker.decode(group.committed[TP][1]).end is not None  # a working member's note
    q.handed_over({TP})
    assert group.committed[TP] == (40, "")
    assert not group.member().is_careful(TP)


def test_a_careful_partition_handed_over_keeps_its_suspicion() -> None:
    group = Group()
    work(group, group.member(), range(0, 10), poison=5)
    q = group.member()
    assert q.is_careful(TP)
    q.handed_over({TP})  # revoked before it got through the window
    assert group.member().is_careful(TP)


def test_a_worker_expelled_and_handed_back_its_own_note_goes_on_as_usual_and_no_other_does() -> None:
    group = Group()
    q = group.member(step=10)
    work(group, q, range(0, 12), poison=None)  # then an outage: expelled, nothing handed over
    q.forget({TP})  # on_lost
    offset, note = group.committed[TP]
    assert Marker.decode(note).end > offset  # the window is still open in the note
    q.assigned({TP: group.committed[TP]})
    assert not q.is_careful(TP)  # alive: nothing in its own window killed it
    assert group.member().is_careful(TP)  # any other worker cannot know that


def test_a_careful_window_stays_careful_even_for_the_worker_that_carried_it() -> None:
    group = Group()
    work(group, group.member(), range(0, 10), poison=5)  # a death in a batch
    q = group.member()
    assert q.is_careful(TP) and q.attempt(rec(5)) is None
    q.forget({TP})  # expelled while trying 5 alone
    q.assigned({TP: group.committed[TP]})
    assert q.is_careful(TP)
    assert Marker.decode(group.committed[TP][1]).by is None  # the suspicion is not its own


def test_notes_are_committed_only_every_step_records() -> None:
    group = Group()
    q = group.member(step=100)
    for start in range(0, 500, 50):
        q.cover([rec(o) for o in range(start, start + 50)])
    assert group.commits == 5  # one synchronous note per 100 records


@pytest.mark.parametrize("metadata", ["", "x", "{}", '{"end": -1}', '{"end": true}', '{"end": "5"}', "[" * 5000,
                                      '{"end": 9, "at": "x"}', None, '{"end": 9, "n": -2}', '{"by": "w"}'])
def test_a_note_that_is_not_ours_reads_as_clean(metadata) -> None:
    assert Marker.decode(metadata) == CLEAN


def test_notes_round_trip() -> None:
    for marker in (Marker(10), Marker(10, 4, 2), Marker(10, by="a1b2"), CLEAN):
        assert Marker.decode(marker.encode()) == marker
    assert Marker.decode('{"end": 9, "by": 7}') == Marker(9)  # a "by" that is not a string names no one
