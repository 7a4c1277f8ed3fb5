"""One session fixture for Kafka: a configured cluster when given, else a real local broker.

Set ``KAFKA_BOOTSTRAP_SERVERS`` (or ``SENTISTREAM_BOOTSTRAP_SERVERS``) to test against your own
cluster; otherwise the run starts Apache Kafka (KRaft) on a free loopback port in a temporary
directory, once, and stops it at the end. That broker enforces ACLs (none exist at first, so all
is allowed) for the tests that deny a topic to the worker (``tests/kafka_acl.py``); on a
configured cluster without an authorizer those tests are skipped.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sentistream.cli.local_kafka import KAFKA_VERSION, LocalCluster
from sentistream.worker.settings import Settings, default_home

logging.getLogger("kafka").setLevel(logging.ERROR)


def _configured_bootstrap() -> str | None:
    return os.environ.get("SENTISTREAM_BOOTSTRAP_SERVERS") or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")


def pytest_report_header(config: pytest.Config) -> list[str]:
    configured = _configured_bootstrap()
    if configured:
        return [f"kafka: configured cluster at {configured}"]
    return [f"kafka: local Apache Kafka {KAFKA_VERSION} (KRaft), started for this run"]


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = _configured_bootstrap()
    if configured:
        yield configured
        return
    # Jars are cached in the user's home (shared with `sentistream broker up`); data is not.
    cluster = LocalCluster(home=default_home(), data_dir=tmp_path_factory.mktemp("kafka"))
    state = cluster.up(nodes=1, port=0, timeout=120, acls=True)
    try:
        yield state.bootstrap
    finally:
        cluster.down(wipe=True)


@pytest.fixture(scope="session")
def acl_bootstrap(kafka_bootstrap: str) -> str:
    """The session's cluster, where tests may add ACLs; skips when it has no authorizer."""
    from tests.kafka_acl import acls_enforced

    if not acls_enforced(kafka_bootstrap):
        pytest.skip("the configured cluster does not enforce ACLs")
    return kafka_bootstrap


@pytest.fixture
def unique() -> str:
    """A fresh suffix for topic and group names, so tests never see each other's data."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def settings_for(kafka_bootstrap: str, unique: str, tmp_path: Path):
    """Settings with this test's own topics and group on the session's broker."""

    def make(**overrides) -> Settings:
        base = dict(
            bootstrap_servers=kafka_bootstrap,
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
def topics(settings_for, kafka_bootstrap: str) -> Iterator:
    """Like ``settings_for``, with the input, output and dead-letter topics created; they are
    deleted when the test ends."""
    from kafka import KafkaAdminClient

    from sentistream.worker import kafka_clients

    created: list[str] = []

    def make(**overrides) -> Settings:
        s = settings_for(**overrides)
        admin = kafka_clients.admin(s, s.bootstrap_servers)
        created.extend(kafka_clients.ensure_topics(admin, kafka_clients.topic_specs(s)))
        admin.close()
        return s

    yield make
    if created:
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            admin.delete_topics(created)
        finally:
            admin.close()
