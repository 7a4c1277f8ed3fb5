"""Deny and allow writes to one topic on a broker that enforces ACLs (the session broker does).

Every client of the local broker is ``User:ANONYMOUS`` (PLAINTEXT, no authentication), and a
resource with no ACL is open to all (``allow.everyone.if.no.acl.found``). :func:`deny_writes`
adds two ACLs to the topic: DENY WRITE, and ALLOW ALL so that reading and describing it still
work (once a resource has any ACL, what no ACL allows is denied; DENY wins over ALLOW).
:func:`allow_writes` removes both.

Beware of kafka-python 3.0.12's idempotent producer (its default, and the worker's): one
``TopicAuthorizationFailedError`` from a produce request puts it in a fatal state in which every
later send fails, to any topic, even after the ACL is gone (``tests/test_kafka_acl.py`` pins it).
"""

from __future__ import annotations

import time

from kafka import KafkaAdminClient
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

PRINCIPAL = "User:ANONYMOUS"


def _pattern(topic: str) -> ResourcePattern:
    return ResourcePattern(ResourceType.TOPIC, topic, ACLResourcePatternType.LITERAL)


def _topic_filter(topic: str) -> ACLFilter:
    pattern = ResourcePatternFilter(ResourceType.TOPIC, topic, ACLResourcePatternType.LITERAL)
    return ACLFilter(PRINCIPAL, "*", ACLOperation.ANY, ACLPermissionType.ANY, pattern)


def _acls_on(admin: KafkaAdminClient, topic: str) -> int:
    acls, _ = admin.describe_acls(_topic_filter(topic))
    return len(acls)


def _wait_for(admin: KafkaAdminClient, topic: str, count: int, timeout: float) -> None:
    """ACLs take effect once the brokers replay them from the metadata log: wait until they show."""
    deadline = time.monotonic() + timeout
    while _acls_on(admin, topic) != count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"ACLs on {topic} did not reach {count} in {timeout} s")
        time.sleep(0.1)


def deny_writes(bootstrap: str, topic: str, timeout: float = 10.0) -> None:
    """From now on no client may write to ``topic``; reading it still works."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","))
    try:
        acls = [ACL(PRINCIPAL, "*", ACLOperation.WRITE, ACLPermissionType.DENY, _pattern(topic)),
                ACL(PRINCIPAL, "*", ACLOperation.ALL, ACLPermissionType.ALLOW, _pattern(topic))]
        result = admin.create_acls(acls)
        if result["failed"]:
            raise RuntimeError(f"could not create ACLs on {topic}: {result['failed']}")
        _wait_for(admin, topic, len(acls), timeout)
    finally:
        admin.close()


def allow_writes(bootstrap: str, topic: str, timeout: float = 10.0) -> None:
    """Undo :func:`deny_writes`: no ACL on ``topic`` any more, so everyone may write again."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","))
    try:
        for _, _, error in admin.delete_acls([_topic_filter(topic)]):
            if error.errno:  # NoError has errno 0
                raise RuntimeError(f"could not delete ACLs on {topic}: {error}")
        _wait_for(admin, topic, 0, timeout)
    finally:
        admin.close()


def acls_enforced(bootstrap: str) -> bool:
    """Whether the cluster has an authorizer (describing ACLs fails without one)."""
    from kafka.errors import SecurityDisabledError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","))
    try:
        _acls_on(admin, "sentistream-probe")
    except SecurityDisabledError:
        return False
    finally:
        admin.close()
    return True
