"""Dead letters: the one message published for a record that cannot be classified (or whose
results cannot be published), on the dead-letter topic. worker/pipeline.py dead-letters what it
rejects; worker/delivery.py what the broker or client refuses to take.

A dead letter carries the record's own key, value and headers plus ours (docs/contract.md). A
*stub* carries only ours: for a record whose full dead letter is over the topic's limit or was
refused, or cannot even be built.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from sentistream.worker.contract import (
    BATCH_OVERHEAD,
    BROKER_DEFAULT_MAX_MESSAGE_BYTES,
    HEADER_PREFIX,
    ModelRef,
    Origin,
    Rejection,
    dead_letter_headers,
    encoded_size,
)
from sentistream.worker.faults import contained
from sentistream.worker.outgoing import Handled, Outgoing


class DeadLetters:
    """Builds the dead letters of one worker: to ``topic``, naming ``group``, this host and
    process, and the model serving when each is built (``model()``)."""

    def __init__(self, topic: str, group: str, model: Callable[[], ModelRef]) -> None:
        self.topic = topic
        self.group = group
        self.model = model
        self.worker = f"{socket.gethostname()}/{os.getpid()}"
        self.limit = BROKER_DEFAULT_MAX_MESSAGE_BYTES - BATCH_OVERHEAD

    def fit(self, max_message_bytes: int) -> None:
        """Size full dead letters to what the topic accepts (its ``max.message.bytes``)."""
        self.limit = max_message_bytes - BATCH_OVERHEAD

    def build(self, rejection: Rejection, stub: bool = False) -> Handled:
        """The dead letter for ``rejection``: the full one, or a stub when asked for, when the full
        one is over the limit, or when building it raises."""
        full = None if stub else contained(lambda: self._full(rejection), lambda _exc: None)
        own = [*dead_letter_headers(rejection, self._origin(), carried=False),
               (f"{HEADER_PREFIX}dlq-stub", b"original key, value and headers left out")]
        message = full or Outgoing(self.topic, None, b"", own, dead_letter=True, stub=True)
        return Handled(rejection.record, [message], rejection)

    def _origin(self) -> Origin:
        return Origin(self.group, self.worker, self.model())

    def _full(self, rejection: Rejection) -> Outgoing | None:
        """The record's key, value and headers plus ours; None when that is over the limit."""
        r = rejection.record
        headers = dead_letter_headers(rejection, self._origin())
        # Kafka clients refuse a record with neither key nor value: a null value then goes as empty.
        value = r.value if r.value is not None or r.key is not None else b""
        if encoded_size(r.key, value, headers) > self.limit:
            return None
        return Outgoing(self.topic, r.key, value, headers, dead_letter=True)
