"""A record that kills its worker is found and dead-lettered by the group (``crashed_worker``).

Some faults no boundary (worker/faults.py) can catch: a segfault in native code, an OOM kill, a
hang that the supervisor or Kubernetes ends. The record that causes one comes back to whichever
worker holds its partition next, on any host, and would kill it too. So every member leaves a
note for the next owner of a partition, where every member reads it: in the metadata string of
the partition's committed offset.

The note (a ``Marker``, a few dozen bytes of JSON):

- ``{"end": E}``: records from the committed offset up to ``E`` (exclusive) may be in work. A
  worker commits it (synchronously) *before* it decodes a record at or past the last ``E`` it
  wrote, and every later commit repeats it; so ``E`` bounds whatever it was processing when it died.
- ``{"end": E, "at": O, "n": k}``: record ``O`` is being tried alone; ``k`` deaths are counted
  against it so far.
- ``"by": W`` beside ``end`` (no ``at``): worker ``W`` (one id per worker loop, never reused) wrote
  it over records it was reading as usual.
- anything else (an empty string): handed over cleanly, on revoke or stop.

A worker that is assigned a partition whose note is not clean was handed it by a worker that died
(or was expelled from the group). It goes *careful* on ``[committed, E)``: it takes those records
one at a time, and before each it commits ``{"at": O, "n": k}``; ``k`` is one more than the note's
when the note named ``O`` (its predecessor died on it), else 1: the death that left the note may
have been this record's, in a batch. A record with ``k >= max_record_attempts`` is dead-lettered
instead of processed. Past ``E`` the partition is processed as usual again. A culprit is thus
tried at most ``max_record_attempts`` times: once in a batch, then alone.

A worker that is handed back its own ``by`` note was expelled, not killed: it is alive, so nothing
in the window killed it, and it goes on as usual (after an outage a whole group is expelled and
gets its own partitions back). A careful window's notes carry no ``by``: its suspicion came from
another worker's death, and stays with the partition whoever holds it next.

Not kept: offsets committed without a note by tools of one's own; an unreadable note counts as
clean (only members of the group write it).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kafka import TopicPartition

from sentistream.worker.contract import RawRecord, Reason, Rejection

log = logging.getLogger(__name__)

# commit({tp: (offset, metadata)}, blocking): a blocking commit raises when it fails
Commit = Callable[[dict[TopicPartition, tuple[int, str]], bool], None]


@dataclass(frozen=True, slots=True)
class Marker:
    """The note in a committed offset's metadata. ``end`` None: clean."""

    end: int | None = None
    at: int | None = None
    deaths: int = 0
    by: str | None = None  # the worker that wrote it over records it read as usual

    def encode(self) -> str:
        if self.end is None:
            return ""
        note: dict[str, int | str] = {"end": self.end}
        if self.at is not None:
            note |= {"at": self.at, "n": self.deaths}
        if self.by is not None:
            note["by"] = self.by
        return json.dumps(note, separators=(",", ":"))

    @classmethod
    def decode(cls, metadata: str | None) -> Marker:
        """Never raises: what is not a note of ours is clean."""
        try:
            note = json.loads(metadata or "")
            end, at, deaths, by = note["end"], note.get("at"), note.get("n", 0), note.get("by")
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
            return CLEAN
        if not (_offset(end) and (at is None or _offset(at)) and _offset(deaths)):
            return CLEAN
        return cls(end, at, deaths, by if isinstance(by, str) else None)


CLEAN = Marker()


def _offset(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(slots=True)
class Careful:
    """A partition taken over from a worker that died: ``[start, end)`` goes one record at a time."""

    end: int
    suspect: int | None  # the record the note names, and the deaths counted against it
    deaths: int


class Quarantine:
    """Per assigned partition: how far this worker's notes reach, and what is careful.

    ``commit(offsets, blocking)`` commits ``{tp: (offset, metadata)}``; ``step``: how far
    beyond the furthest record read a note reaches (a synchronous commit every ``step`` records
    per partition); ``me``: this worker's id in its notes (a fresh one by default)."""

    def __init__(self, max_attempts: int, step: int, commit: Commit, me: str | None = None) -> None:
        self.max_attempts = max_attempts
        self.step = step
        self.commit = commit
        self.me = me or uuid.uuid4().hex[:12]
        self.base: dict[TopicPartition, int] = {}  # the offset last committed (or sent to be)
        self.covered: dict[TopicPartition, int] = {}  # the end of this worker's note
        self.careful: dict[TopicPartition, Careful] = {}

    # -- the group hands partitions over ----------------------------------------------------------
    def assigned(self, committed: dict[TopicPartition, tuple[int, str] | None]) -> None:
        """``committed``: each new partition's committed offset and metadata (None: none yet)."""
        for tp, got in committed.items():
            self.covered.pop(tp, None)
            self.careful.pop(tp, None)
            if got is None:
                self.base.pop(tp, None)
                continue
            offset, metadata = got
            self.base[tp] = offset
            marker = Marker.decode(metadata)
            if marker.by == self.me and marker.at is None:
                log.info("%s[%d]: handed back with this worker's own note (it was expelled, not killed): as usual",
                         tp.topic, tp.partition)
            elif marker.end is not None and marker.end > offset:
                self.careful[tp] = Careful(marker.end, marker.at, marker.deaths)
                log.warning("%s[%d]: its last owner stopped without handing it over; records %d..%d go one at a "
                            "time%s", tp.topic, tp.partition, offset, marker.end - 1,
                            f" (record {marker.at}: {marker.deaths} death(s) so far)" if marker.at is not None
                            else "")

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self.base.pop(tp, None)
            self.covered.pop(tp, None)
            self.careful.pop(tp, None)

    def handed_over(self, tps: Iterable[TopicPartition], blocking: bool = True) -> None:
        """These partitions leave cleanly (all their work is committed): clear the notes this
        worker wrote, so that the next owner goes at full speed. A careful partition keeps its
        note (its rest is still suspect)."""
        clean = {tp: (self.base[tp], "") for tp in tps
                 if tp in self.covered and tp in self.base and tp not in self.careful}
        if clean:
            self.commit(clean, blocking)
        self.forget(tps)

    # -- while working ------------------------------------------------------------------------------
    def is_careful(self, tp: TopicPartition) -> bool:
        return tp in self.careful

    def metadata(self, tp: TopicPartition) -> str:
        """The note every regular commit of ``tp`` carries."""
        careful = self.careful.get(tp)
        if careful is not None:
            return Marker(careful.end).encode()
        return Marker(self.covered.get(tp), by=self.me).encode()

    def sent(self, offsets: dict[TopicPartition, int]) -> None:
        """Regular commits of these offsets were sent (at-least-once) or committed (exactly-once)."""
        for tp, offset in offsets.items():
            self.base[tp] = max(self.base.get(tp, offset), offset)

    def cover(self, records: Iterable[RawRecord]) -> None:
        """Before records of partitions processed as usual are decoded: make sure a note reaches
        past each of them (one synchronous commit for all the partitions that need it)."""
        furthest: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            if tp not in self.careful:
                furthest[tp] = max(furthest.get(tp, r.offset), r.offset)
                self.base.setdefault(tp, r.offset)  # nothing committed yet: nothing before it is done
        due = {tp: o + self.step for tp, o in furthest.items() if o >= self.covered.get(tp, -1)}
        if not due:
            return
        self.commit({tp: (self.base[tp], Marker(end, by=self.me).encode()) for tp, end in due.items()}, True)
        self.covered.update(due)

    def attempt(self, record: RawRecord) -> Rejection | None:
        """Before a record of a careful partition is processed alone: its ``crashed_worker``
        rejection when it has had its tries, else None once the note naming it is committed
        (everything before it on its partition must be committed or acknowledged)."""
        tp = TopicPartition(record.topic, record.partition)
        careful = self.careful.get(tp)
        if careful is not None and record.offset >= careful.end:  # past the window: as usual from here
            del self.careful[tp]
            self.covered[tp] = careful.end
            careful = None
        if careful is None:
            self.cover([record])
            return None
        deaths = careful.deaths + 1 if careful.suspect == record.offset else 1
        if deaths >= self.max_attempts:
            return Rejection(record, Reason.CRASHED_WORKER,
                             f"its worker died {deaths} time(s) while it was in work (max_record_attempts "
                             f"{self.max_attempts}): tried once in a batch, then alone")
        self.commit({tp: (record.offset, Marker(careful.end, record.offset, deaths).encode())}, True)
        self.base[tp] = record.offset
        careful.suspect, careful.deaths = record.offset, deaths
        return None
