"""One object for everything the tests do to a Kafka cluster (after confluent-kafka-python's
``tests/integration/cluster_fixture.py``): its clients, the tests' topics, records written with
kafka-python, confluent-kafka or kcat, records read back, ACLs, committed offsets.

:func:`own_cluster` starts a local cluster of the run's own and yields one: ``tests/conftest.py``'s
session fixture ``kafka`` (unless a cluster is configured), and the modules that need brokers of
their own (``tests/test_faults.py``: 3 nodes; ``tests/test_cutoff.py``: on a bridge's address;
``tests/test_security.py``: TLS and SASL_SSL, started with ``sentistream broker up``).

ACLs: every client of the local broker is ``User:ANONYMOUS`` (PLAINTEXT, no authentication), and
a resource with no ACL is open to all (``allow.everyone.if.no.acl.found``).
:meth:`KafkaCluster.deny_writes` adds two ACLs to the topic: DENY WRITE, and ALLOW ALL so that
reading and describing it still work (once a resource has any ACL, what no ACL allows is denied;
DENY wins over ALLOW). :meth:`KafkaCluster.allow_writes` removes both.

Beware of kafka-python 3.0.12's idempotent producer (its default, and the worker's): one
``TopicAuthorizationFailedError`` from a produce request puts it in a fatal state in which every
later send fails, to any topic, even after the ACL is gone (``tests/test_kafka_acl.py`` pins it).
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import (
    ACL,
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    ResourcePattern,
    ResourcePatternFilter,
    ResourceType,
)

from sentistream.broker.local import ClusterState, LocalCluster
from sentistream.worker import kafka_clients
from sentistream.worker.settings import Settings, default_home

PRINCIPAL = "User:ANONYMOUS"


@dataclass
class ForeignRecord:
    """A record for :meth:`KafkaCluster.produce_foreign`."""

    value: bytes | None
    key: bytes | None = None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)  # a None value: a NULL header
    partition: int | None = None


class KafkaCluster:
    """A cluster at ``bootstrap``, and the topics made through it (:meth:`create_topics`) that
    are not deleted yet. ``local``: its nodes, when this run started it (:func:`own_cluster`);
    the clients made here then carry its TLS and SASL settings, if it has any."""

    def __init__(self, bootstrap: str, local: LocalCluster | None = None) -> None:
        self.bootstrap = bootstrap
        self.local = local
        self.security: dict[str, Any] = local.client_config() if local is not None else {}
        self.made: list[str] = []

    def __repr__(self) -> str:
        return f"KafkaCluster({self.bootstrap!r})"

    # -- clients ---------------------------------------------------------------------------
    def admin(self, **config: Any) -> KafkaAdminClient:
        return KafkaAdminClient(**{"bootstrap_servers": self.bootstrap.split(","), **self.security, **config})

    def producer(self, **config: Any) -> KafkaProducer:
        """kafka-python, acks=all, requests up to 4 MiB; ``config`` adds or overrides."""
        return KafkaProducer(**{"bootstrap_servers": self.bootstrap.split(","), "acks": "all",
                                "max_request_size": 4 * 1024 * 1024, **self.security, **config})

    def consumer(self, *topics: str, **config: Any) -> KafkaConsumer:
        """kafka-python, no group, from the earliest offset, no auto-commit, read_committed;
        ``config`` adds or overrides."""
        return KafkaConsumer(*topics, **{"bootstrap_servers": self.bootstrap.split(","), "group_id": None,
                                         "auto_offset_reset": "earliest", "enable_auto_commit": False,
                                         "isolation_level": "read_committed", **self.security, **config})

    # -- topics ----------------------------------------------------------------------------
    def create_topics(self, settings: Settings, specs: dict[str, dict[str, Any]] | None = None) -> list[str]:
        """Create the settings' input, output and dead-letter topics (or ``specs``, in
        ``kafka_clients.topic_specs``'s form) that do not exist yet; remember and return the names
        created."""
        admin = kafka_clients.admin(settings, self.bootstrap)
        try:
            created = kafka_clients.ensure_topics(admin, kafka_clients.topic_specs(settings) if specs is None else specs)
        finally:
            admin.close()
        self.made.extend(created)
        return created

    def delete_topics(self, names: Iterable[str] | None = None) -> None:
        """Delete ``names`` (default: every topic made here and not deleted yet) and forget them."""
        names = list(self.made if names is None else names)
        if not names:
            return
        admin = self.admin()
        try:
            admin.delete_topics(names)
        finally:
            admin.close()
        self.made = [t for t in self.made if t not in names]

    # -- writing ---------------------------------------------------------------------------
    def produce(self, topic: str, items: list[tuple[bytes | None, bytes]], headers=None) -> None:
        """``(key, value)`` records, each with ``headers``, through one kafka-python producer."""
        producer = self.producer()
        for key, value in items:
            producer.send(topic, key=key, value=value, headers=headers or [])
        producer.flush()
        producer.close()

    def produce_foreign(self, topic: str, records: Iterable[ForeignRecord], timeout: float = 30) -> None:
        """Write ``records`` with confluent-kafka (librdkafka), which can send NULL header values."""
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": self.bootstrap, "acks": "all", "enable.idempotence": True})
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

    def produce_kcat(self, topic: str, partition: int, value: bytes, headers: Iterable[str | bytes] = (),
                     key: bytes | None = None) -> None:
        """One record written by kcat (librdkafka), with ``key`` if given (a compacted topic takes no
        record without one). Each header is kcat's ``-H`` argument:
        ``"name=value"``; ``"name"`` (no ``=``) has a NULL value; bytes reach kcat untouched, so
        ``b"\\xff\\xfe=v"`` is a header whose key is not UTF-8 (kafka-python's consumer then raises
        CorruptRecordError in poll). kcat cannot write an empty value: it skips empty input."""
        if not value:
            raise ValueError("kcat skips empty input: use produce_foreign for an empty value")
        assert shutil.which("kcat"), "kcat is not installed: run `make tools` (deploy/tools.sh)"
        # kcat splits stdin at a delimiter (default newline), and a key from its value at another:
        # pick ones the record does not contain
        delimiter, key_delimiter = _absent_from(value + (key or b"")), _absent_from(value + (key or b""))
        cmd: list[str | bytes] = ["kcat", "-P", "-b", self.bootstrap, "-t", topic, "-p", str(partition),
                                  "-D", delimiter]
        if key is not None:
            cmd += ["-K", key_delimiter]
            value = key + key_delimiter.encode() + value
        for header in headers:
            cmd += ["-H", header]
        result = subprocess.run(cmd, input=value, capture_output=True, timeout=30, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"kcat failed ({result.returncode}): {result.stderr.decode(errors='replace')[-500:]}")

    # -- reading ---------------------------------------------------------------------------
    def collect(self, topics: list[str], want: int, timeout: float = 90, isolation: str = "read_committed",
                until: Callable[[list], bool] | None = None) -> list:
        """Records from ``topics`` once ``want`` of them arrived, or once ``until(records)`` holds:
        under at-least-once, ``want`` records may include duplicates while others are still due."""
        done = until or (lambda got: len(got) >= want)
        consumer = self.consumer(*topics, isolation_level=isolation)
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

    # -- consumer groups -------------------------------------------------------------------
    def committed(self, group: str, topic: str) -> dict[int, int]:
        """The group's committed offset of each partition of ``topic`` that has one."""
        admin = self.admin()
        try:
            return _committed(admin, group, topic)
        finally:
            admin.close()

    def wait_committed_to_end(self, group: str, topic: str, timeout: float = 60) -> dict[int, int]:
        """Wait until the group's committed offset of every partition reaches its end offset;
        return each partition's committed offset minus its end offset (0 everywhere: done)."""
        admin = self.admin()
        reader = self.consumer(isolation_level="read_uncommitted")
        try:
            tps = [TopicPartition(topic, p) for p in reader.partitions_for_topic(topic)]
            deadline = time.monotonic() + timeout
            while True:
                # end offsets as a read_committed reader sees them (transaction markers included)
                ends = {tp.partition: o for tp, o in reader.end_offsets(tps).items()}
                done = _committed(admin, group, topic)
                if all(done.get(p, 0) >= end for p, end in ends.items()) or time.monotonic() > deadline:
                    return {p: done.get(p, 0) - end for p, end in ends.items()}
                time.sleep(0.5)
        finally:
            reader.close()
            admin.close()

    # -- ACLs ------------------------------------------------------------------------------
    def deny_writes(self, topic: str, timeout: float = 10.0) -> None:
        """From now on no client may write to ``topic``; reading it still works."""
        admin = self.admin()
        try:
            acls = [ACL(PRINCIPAL, "*", ACLOperation.WRITE, ACLPermissionType.DENY, _pattern(topic)),
                    ACL(PRINCIPAL, "*", ACLOperation.ALL, ACLPermissionType.ALLOW, _pattern(topic))]
            result = admin.create_acls(acls)
            if result["failed"]:
                raise RuntimeError(f"could not create ACLs on {topic}: {result['failed']}")
            _wait_for_acls(admin, topic, len(acls), timeout)
        finally:
            admin.close()

    def allow_writes(self, topic: str, timeout: float = 10.0) -> None:
        """Undo :meth:`deny_writes`: no ACL on ``topic`` any more, so everyone may write again."""
        admin = self.admin()
        try:
            for _, _, error in admin.delete_acls([_topic_filter(topic)]):
                if error.errno:  # NoError has errno 0
                    raise RuntimeError(f"could not delete ACLs on {topic}: {error}")
            _wait_for_acls(admin, topic, 0, timeout)
        finally:
            admin.close()

    def acls_enforced(self) -> bool:
        """Whether the cluster has an authorizer (describing ACLs fails without one)."""
        from kafka.errors import SecurityDisabledError

        admin = self.admin()
        try:
            _acls_on(admin, "sentistream-probe")
        except SecurityDisabledError:
            return False
        finally:
            admin.close()
        return True


@contextmanager
def own_cluster(data_dir: Path | None = None, *, home: Path | None = None, nodes: int = 1, acls: bool = False,
                host: str = "127.0.0.1", timeout: float = 120,
                start: Callable[[LocalCluster], ClusterState] | None = None) -> Iterator[KafkaCluster]:
    """A local cluster of this run's own, in ``data_dir`` (default: ``home``'s ``broker``), as a
    :class:`KafkaCluster` whose ``local`` holds its nodes; stopped and its data wiped at the end,
    even when it never came up.

    It starts with :meth:`LocalCluster.up` on free ports (``nodes``, ``acls``, ``host`` and
    ``timeout`` as there), or, given ``start``, with ``start(local)`` instead: a test that starts it
    as a user does (``sentistream broker up``) returns its state from there. The jars are cached in
    ``home`` (default: the user's home, shared with ``sentistream broker up``); data is not.
    """
    local = LocalCluster(home=home or default_home(), data_dir=data_dir)
    try:
        state = start(local) if start else local.up(nodes=nodes, port=0, timeout=timeout, acls=acls, host=host)
        yield KafkaCluster(state.bootstrap, local)
    finally:
        local.down(wipe=True)


def _absent_from(data: bytes) -> str:
    while (delimiter := uuid.uuid4().hex).encode() in data:
        pass
    return delimiter


def _committed(admin: KafkaAdminClient, group: str, topic: str) -> dict[int, int]:
    return {tp.partition: m.offset for tp, m in admin.list_group_offsets(group).get(group, {}).items()
            if tp.topic == topic and m.offset is not None and m.offset >= 0}


def _pattern(topic: str) -> ResourcePattern:
    return ResourcePattern(ResourceType.TOPIC, topic, ACLResourcePatternType.LITERAL)


def _topic_filter(topic: str) -> ACLFilter:
    pattern = ResourcePatternFilter(ResourceType.TOPIC, topic, ACLResourcePatternType.LITERAL)
    return ACLFilter(PRINCIPAL, "*", ACLOperation.ANY, ACLPermissionType.ANY, pattern)


def _acls_on(admin: KafkaAdminClient, topic: str) -> int:
    acls, _ = admin.describe_acls(_topic_filter(topic))
    return len(acls)


def _wait_for_acls(admin: KafkaAdminClient, topic: str, count: int, timeout: float) -> None:
    """ACLs take effect once the brokers replay them from the metadata log: wait until they show."""
    deadline = time.monotonic() + timeout
    while _acls_on(admin, topic) != count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"ACLs on {topic} did not reach {count} in {timeout} s")
        time.sleep(0.1)
