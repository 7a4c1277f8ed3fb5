"""One session fixture for Kafka, ``kafka``: a :class:`tests.cluster.KafkaCluster` on a configured
cluster when given, else on a real local broker.

Set ``KAFKA_BOOTSTRAP_SERVERS`` (or ``SENTISTREAM_BOOTSTRAP_SERVERS``) to test against your own
cluster; otherwise the run starts Apache Kafka (KRaft) on a free loopback port in a temporary
directory, once, and stops it at the end. That broker enforces ACLs (none exist at first, so all
is allowed) for the tests that deny a topic to the worker (``KafkaCluster.deny_writes``); on a
configured cluster without an authorizer the tests that take ``acl_kafka`` are skipped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sentistream.broker.local import KAFKA_VERSION
from sentistream.worker.settings import Settings
from tests.cluster import KafkaCluster, own_cluster

logging.getLogger("kafka").setLevel(logging.ERROR)


def _configured_bootstrap() -> str | None:
    return os.environ.get("SENTISTREAM_BOOTSTRAP_SERVERS") or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")


def pytest_report_header(config: pytest.Config) -> list[str]:
    configured = _configured_bootstrap()
    if configured:
        return [f"kafka: configured cluster at {configured}"]
    return [f"kafka: local Apache Kafka {KAFKA_VERSION} (KRaft), started for this run"]


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """The session's cluster; the topics made through it and not deleted yet are deleted at the end."""
    configured = _configured_bootstrap()
    clusters = contextlib.nullcontext(KafkaCluster(configured)) if configured else \
        own_cluster(tmp_path_factory.mktemp("kafka"), acls=True)
    with clusters as cluster:
        try:
            yield cluster
        finally:
            cluster.delete_topics()


@pytest.fixture(scope="session")
def acl_kafka(kafka: KafkaCluster) -> KafkaCluster:
    """The session's cluster, where tests may add ACLs; skips when it has no authorizer."""
    if not kafka.acls_enforced():
        pytest.skip("the configured cluster does not enforce ACLs")
    return kafka


@pytest.fixture
def unique() -> str:
    """A fresh suffix for topic and group names, so tests never see each other's data."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def settings_for(kafka: KafkaCluster, unique: str, tmp_path: Path):
    """Settings with this test's own topics and group on the session's cluster."""

    def make(**overrides) -> Settings:
        base = dict(
            bootstrap_servers=kafka.bootstrap,
            group_id=f"g-{unique}",
            input_topic=f"in-{unique}",
            output_topic=f"out-{unique}",
            dlq_topic=f"dlq-{unique}",
            partitions=4,
            metrics_port=0,
            home=tmp_path / "home",
        )
        base.update(overrides)
        return Settings(**base)

    return make


@pytest.fixture
def topics(settings_for, kafka: KafkaCluster) -> Iterator:
    """Like ``settings_for``, with the input, output and dead-letter topics created; they are
    deleted when the test ends."""
    created: list[str] = []

    def make(**overrides) -> Settings:
        s = settings_for(**overrides)
        created.extend(kafka.create_topics(s))
        return s

    yield make
    kafka.delete_topics(created)


@pytest.fixture(autouse=True)
def _signal_handlers_are_left_as_found() -> Iterator[None]:
    """A test that runs a command in-process must not leave its signal handlers behind: a child
    forked later inherits them (a SIGTERM handler left by ``dlq replay`` once kept a supervisor
    test's child from dying on SIGTERM)."""
    import signal

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    after = {sig: signal.getsignal(sig) for sig in before}
    assert after == before, f"signal handlers changed by this test: {before} -> {after}"
