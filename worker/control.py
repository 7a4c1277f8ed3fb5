"""The control topic (``sentences.control``, compacted): model commands that every worker of a
group reads, so that all replicas (processes and hosts) move together.

A command is a JSON record ``{"command": "shadow"|"promote"|"rollback", "bundle": PATH or
file:// URI, "sha256": sha256 of the bundle's manifest.json, ...}``. Its key says what it sets:
``shadow`` (the candidate) or ``serving`` (promote and rollback), so compaction keeps the latest
of each and a worker that starts later replays the state it must reach. The manifest holds the
sha256 of every other file, so its own hash pins the whole bundle: it is checked here before
anything is loaded, and the files against the manifest when the bundle loads.

No Kafka client is made here (worker/kafka_clients.py makes them); :class:`ControlReader` reads
an assigned, group-less consumer from the beginning of the topic.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from kafka import TopicPartition
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sentistream.worker.bundle import MANIFEST, sha256_file

log = logging.getLogger(__name__)

CommandName = Literal["shadow", "promote", "rollback"]
KEYS: dict[str, str] = {"shadow": "shadow", "promote": "serving", "rollback": "serving"}


class Command(BaseModel):
    """One model command on the control topic."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    command: CommandName
    bundle: str = Field(description="the bundle directory as every worker host sees it: a path or a file:// URI")
    sha256: str = Field(description="sha256 of the bundle's manifest.json (which holds every file's hash)")
    allow_label_change: bool = False
    issued_at: float = Field(default_factory=time.time)
    issued_by: str = ""

    @property
    def key(self) -> str:
        return KEYS[self.command]

    def encode(self) -> tuple[bytes, bytes]:
        return self.key.encode(), self.model_dump_json().encode()


class Refused(Exception):
    """A command that changes nothing; ``reason`` is a metric label, the message one line."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def bundle_path(location: str) -> Path:
    """A command's bundle location as a local path: a plain path or a ``file://`` URI."""
    parsed = urlparse(location)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path) if parsed.scheme else location)
    raise Refused("unknown_bundle", f"bundle {location}: only paths and file:// URIs are supported")


def manifest_digest(path: Path) -> str:
    """sha256 of the bundle's manifest.json: the bundle's identity in commands."""
    return sha256_file(Path(path) / MANIFEST)


def verified(command: Command) -> Path:
    """The command's bundle directory once its manifest's hash matches; Refused otherwise."""
    path = bundle_path(command.bundle)
    if not (path / MANIFEST).is_file():
        raise Refused("unknown_bundle", f"bundle {command.bundle}: no such bundle ({MANIFEST} not found)")
    actual = manifest_digest(path)
    if actual != command.sha256.lower():
        raise Refused("hash_mismatch", f"bundle {command.bundle}: {MANIFEST} has sha256 {actual[:12]}…, "
                      f"the command says {command.sha256[:12]}…")
    return path


def read_command(value: bytes | None) -> Command | Refused | None:
    """A record's command, why it is not one, or None for a tombstone."""
    if value is None:
        return None
    try:
        return Command.model_validate_json(value)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "command"
        return Refused("invalid_command", f"not a model command: {where}: {first['msg']}"[:300])


@dataclass(frozen=True, slots=True)
class Received:
    """A control record as read: where it was and what it said."""

    where: str  # topic[partition]@offset, for the logs
    command: Command | Refused


class ControlReader:
    """Reads every partition of the control topic from the beginning, with no group (each worker
    sees every command). ``consumer``: a kafka-python consumer made without a group."""

    def __init__(self, consumer: Any, topic: str) -> None:
        self.consumer = consumer
        self.topic = topic
        partitions = consumer.partitions_for_topic(topic) or {0}
        self.partitions = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(self.partitions)
        consumer.seek_to_beginning(*self.partitions)

    def backlog(self, timeout_s: float = 10.0) -> list[Received]:
        """Everything on the topic now (what a starting worker replays)."""
        ends = self.consumer.end_offsets(self.partitions)
        got: list[Received] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(self.consumer.position(tp) < end for tp, end in ends.items()):
            got += self.poll(timeout_ms=200)
        return got

    def poll(self, timeout_ms: int = 0) -> list[Received]:
        out: list[Received] = []
        for records in self.consumer.poll(timeout_ms=timeout_ms).values():
            for r in records:
                command = read_command(r.value)
                if command is not None:
                    out.append(Received(f"{r.topic}[{r.partition}]@{r.offset}", command))
        return out


def latest_state(received: list[Received]) -> list[Received]:
    """Of a replayed backlog, what to apply: the latest serving command, then the latest shadow
    command (refusals are left out: they changed nothing)."""
    latest: dict[str, Received] = {}
    for r in received:
        if isinstance(r.command, Command):
            latest[r.command.key] = r
    return [latest[k] for k in ("serving", "shadow") if k in latest]
