"""What is published for one input record: its messages (results, or one dead letter), built by
worker/pipeline.py and worker/dead_letters.py, sent and accounted for by worker/delivery.py."""

from __future__ import annotations

from dataclasses import dataclass, field

from sentistream.worker.contract import RawRecord, Rejection


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    dead_letter: bool = False
    stub: bool = False


@dataclass(slots=True)
class Handled:
    """One input record and the messages that account for it once acknowledged."""

    record: RawRecord
    messages: list[Outgoing]
    rejection: Rejection | None = None
    labels: list[str] = field(default_factory=list)
