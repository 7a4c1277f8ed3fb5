"""``sentistream produce`` and ``consume``: send lines to the input topic, follow the output."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable

from rich.console import Console

from sentistream.worker import kafka_clients
from sentistream.worker.settings import Settings


def produce_lines(settings: Settings, lines: Iterable[str], key_field: str | None = "id") -> int:
    """One message per non-empty line; a JSON line's ``id`` (or ``key_field``) becomes the key."""
    bootstrap = kafka_clients.resolve_bootstrap(settings)
    producer = kafka_clients.producer(settings, bootstrap)
    sent = 0
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            continue
        key = None
        if key_field and line.lstrip().startswith("{"):
            try:
                value = json.loads(line).get(key_field)
                key = str(value).encode() if value is not None else None
            except (json.JSONDecodeError, AttributeError):
                key = None  # the worker will dead-letter it with its reason
        producer.send(settings.input_topic, value=line.encode(), key=key)
        sent += 1
    producer.flush()
    producer.close()
    return sent


def consume_results(settings: Settings, follow: bool, as_json: bool, from_beginning: bool,
                    limit: int | None, console: Console) -> int:
    bootstrap = kafka_clients.resolve_bootstrap(settings)
    consumer = kafka_clients.consumer(settings, bootstrap, group_id=None,
                                      auto_offset_reset="earliest" if from_beginning else "latest")
    consumer.subscribe([settings.output_topic])
    shown, idle_since = 0, time.monotonic()
    try:
        while limit is None or shown < limit:
            room = None if limit is None else limit - shown
            polled = consumer.poll(timeout_ms=500, max_records=room)
            if not polled:
                if not follow and time.monotonic() - idle_since > 3:
                    break
                continue
            idle_since = time.monotonic()
            for records in polled.values():
                for r in records:
                    if as_json:
                        sys.stdout.write(r.value.decode() + "\n")
                    else:
                        res = json.loads(r.value)
                        score = res["scores"][res["label"]]
                        console.print(f"[dim]{res['id']}[/dim]  [bold]{res['label']:<13}[/bold] "
                                      f"{score:.2f}  {res['text']}", highlight=False)
                    shown += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return shown
