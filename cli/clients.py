"""The settings a command runs with: the environment, overridden by the flags the user gave; for
commands that talk to Kafka, also where the cluster is. Shared by every command module."""

from __future__ import annotations

from typing import Any

from sentistream.worker.settings import Settings


def make_settings(**flags: Any) -> Settings:
    """Env vars, overridden by the flags the user gave (None means: not given)."""
    given = {k: v for k, v in flags.items() if v is not None}
    if "bootstrap" in given:
        given["bootstrap_servers"] = given.pop("bootstrap")
    return Settings(**given)


def client_settings(**flags: Any) -> Settings:
    """:func:`make_settings` for commands that talk to Kafka: with no cluster configured, the
    local broker that `sentistream broker up` started (if one runs) is the one. On a TLS or SASL
    cluster, a pre-flight turns an untrusted certificate or a wrong password into one plain line
    at once (kafka-python alone retries for 30 s, then says "Unable to bootstrap")."""
    from sentistream.broker.local import LocalCluster
    from sentistream.worker.kafka_clients import preflight

    settings = make_settings(**flags)
    if settings.bootstrap_servers is None:
        state = LocalCluster(settings.home).state()
        if state is not None:
            settings = settings.model_copy(update={"bootstrap_servers": state.bootstrap})
    if settings.bootstrap_servers:
        preflight(settings, settings.bootstrap_servers)
    return settings
