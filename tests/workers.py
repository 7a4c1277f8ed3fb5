"""Helpers for tests that run real worker processes against the real broker."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer

from sentistream.cli.flags import worker_command
from sentistream.cli.local_kafka import free_port
from sentistream.cli.scrape import scrape
from sentistream.worker.settings import Settings

REPO = Path(__file__).resolve().parents[1]


@dataclass
class WorkerProcess:
    settings: Settings
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    port: int = 0
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)  # more SENTISTREAM_* settings

    def start(self, log_dir: Path, name: str = "w") -> WorkerProcess:
        s = self.settings
        self.port = free_port()
        cmd = worker_command(s, *self.args, metrics_port=self.port)
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "SENTISTREAM_HOME": str(s.home), **self.env}
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self.log_path.open("wb"),
                                     stderr=subprocess.STDOUT)
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def wait_ready(self, timeout: float = 60, path: str = "/readyz") -> None:
        """Until ``path`` answers 200 (``/healthz``: the loop runs, ready or not)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"worker exited early:\n{self.log()}"
            try:
                if self.get(path)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"worker not ready in {timeout} s:\n{self.log()}")

    def metric(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples (with ``labels``) in one scrape."""
        return scrape(self.url("/metrics")).total(name, **labels)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path else ""


def produce(bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes]], headers=None) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=4 * 1024 * 1024)
    for key, value in items:
        producer.send(topic, key=key, value=value, headers=headers or [])
    producer.flush()
    producer.close()


def json_items(n: int, keys: int = 5, prefix: str = "m") -> list[tuple[bytes, bytes]]:
    texts = ["The acting is superb.", "A dull, lifeless film.", "It is a movie.",
             "Not bad at all, though the ending drags.", "An instant classic!"]
    return [(f"k{i % keys}".encode(), json.dumps({"id": f"{prefix}{i}", "text": texts[i % len(texts)]}).encode())
            for i in range(n)]


def collect(bootstrap: str, topics: list[str], want: int, timeout: float = 90,
            isolation: str = "read_committed", until: Callable[[list], bool] | None = None) -> list:
    """Records from ``topics`` once ``want`` of them arrived, or once ``until(records)`` holds:
    under at-least-once, ``want`` records may include duplicates while others are still due."""
    done = until or (lambda got: len(got) >= want)
    consumer = KafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, isolation_level=isolation, group_id=None)
    got: list = []
    deadline = time.monotonic() + timeout
    while not done(got) and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=300).values():
            got.extend(records)
    # a little longer, to see duplicates or strays that should not be there
    settle = time.monotonic() + 1.0
    while time.monotonic() < settle:
        for records in consumer.poll(timeout_ms=200).values():
            got.extend(records)
    consumer.close()
    return got


# -- foreign clients: records kafka-python cannot (or will not) write --------------------------
def kcat_produce(bootstrap: str, topic: str, partition: int, value: bytes,
                 headers: Iterable[str | bytes] = ()) -> None:
    """One record written by kcat (librdkafka). Each header is kcat's ``-H`` argument:
    ``"name=value"``; ``"name"`` (no ``=``) has a NULL value; bytes reach kcat untouched, so
    ``b"\\xff\\xfe=v"`` is a header whose key is not UTF-8 (kafka-python's consumer then raises
    CorruptRecordError in poll). kcat cannot write an empty value: it skips empty input."""
    if not value:
        raise ValueError("kcat skips empty input: use foreign_produce for an empty value")
    assert shutil.which("kcat"), "kcat is not installed: run `make tools` (deploy/tools.sh)"
    # kcat splits stdin at a delimiter (default newline): pick one the value does not contain
    delimiter = uuid.uuid4().hex
    while delimiter.encode() in value:
        delimiter = uuid.uuid4().hex
    cmd: list[str | bytes] = ["kcat", "-P", "-b", bootstrap, "-t", topic, "-p", str(partition), "-D", delimiter]
    for header in headers:
        cmd += ["-H", header]
    result = subprocess.run(cmd, input=value, capture_output=True, timeout=30, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"kcat failed ({result.returncode}): {result.stderr.decode(errors='replace')[-500:]}")


@dataclass
class ForeignRecord:
    value: bytes | None
    key: bytes | None = None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)  # a None value: a NULL header
    partition: int | None = None


def foreign_produce(bootstrap: str, topic: str, records: Iterable[ForeignRecord], timeout: float = 30) -> None:
    """Write ``records`` with confluent-kafka (librdkafka), which can send NULL header values."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    errors: list = []

    def delivered(err, _msg) -> None:
        if err is not None:
            errors.append(err)

    for r in records:
        extra = {} if r.partition is None else {"partition": r.partition}
        producer.produce(topic, value=r.value, key=r.key, headers=r.headers, on_delivery=delivered, **extra)
    left = producer.flush(timeout)
    if errors or left:
        raise RuntimeError(f"confluent-kafka: {len(errors)} record(s) failed ({errors[:3]}), {left} undelivered")
