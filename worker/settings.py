"""All configuration in one typed, frozen object: env vars ``SENTISTREAM_*`` and CLI flags.

``KAFKA_BOOTSTRAP_SERVERS`` is accepted too, the name users of other Kafka tools already set.
When no bootstrap is configured, the local broker started by ``sentistream broker up`` is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sentistream.worker.swap_rule import SwapRule

DeliveryMode = Literal["at-least-once", "exactly-once"]
Rebalance = Literal["cooperative", "eager"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
RuntimeChoice = Literal["onnxruntime", "openvino", "auto"]  # worker/sessions.py RUNTIMES, or auto


def default_home() -> Path:
    return Path.home() / ".sentistream"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SENTISTREAM_", frozen=True, extra="forbid")

    # Where things live
    home: Path = Field(default_factory=default_home, description="jar cache, local broker data")

    # Kafka connection
    bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=AliasChoices("SENTISTREAM_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS",
                                      "bootstrap_servers"),
    )
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = Field(default=None, description="password of an encrypted ssl_keyfile "
                                           "(env only, never logged)")
    client_id: str = "sentistream"

    # Topics and group
    group_id: str = "sentistream"
    input_topic: str = "sentences"
    output_topic: str = "sentences.labeled"
    dlq_topic: str = "sentences.dlq"
    partitions: int = Field(default=4, ge=1, description="partitions for topics we create")

    # Model and batching
    bundle: Path | None = Field(default=None, description="model bundle dir; default: shipped")
    batch_size: int = Field(default=32, ge=1, le=4096)
    max_wait_ms: int = Field(default=20, ge=0, le=60_000)
    latency_target_ms: int | None = Field(default=None, ge=1, le=60_000, description="cut each piece of work so "
                                          "the oldest message's result is out within this (learned from measured "
                                          "inference cost); default off: up to 8 batches per piece")
    max_message_bytes: int = Field(default=64 * 1024, ge=16)
    max_tokens: int | None = Field(default=None, ge=4, description="cap below the bundle's")
    threads: int = Field(default=1, ge=1, le=256, description="inference threads per process (intra-op)")
    runtime: RuntimeChoice = Field(default="onnxruntime", description="what runs the bundle's model.onnx: a "
                                   "runtime its manifest records as having passed the int8 gate (openvino needs "
                                   "the openvino extra); auto: the fastest of those, measured when it loads (≤ 2 s)")
    split_sentences: bool = False
    max_sentences: int = Field(default=256, ge=1, description="a record that splits into more is dead-lettered "
                               "(too_many_sentences)")
    max_result_bytes: int = Field(default=1_000_000, ge=1024, description="a result larger than this (value, key "
                                  "and headers) is dead-lettered (result_too_large); keep it under the output "
                                  "topic's max.message.bytes")

    # Live model operations (README "Model operations")
    shadow_bundle: Path | None = Field(default=None, description="a candidate bundle that classifies every batch "
                                       "beside the serving one; only the serving one's results are published")
    swap_when: str | None = Field(default=None, description="promote the shadow by itself once, e.g. "
                                  "agreement>=0.97,after=10000 (sentences compared)")
    allow_label_change: bool = Field(default=False, description="let --swap-when promote a shadow whose labels "
                                     "differ from the serving bundle's")
    control_topic: str = Field(default="sentences.control", description="compacted topic of model commands "
                               "(sentistream model …) that every worker reads; the worker creates it if missing")
    bundle_roots: str | None = Field(default=None, description="folders (separated by ':') under which control "
                                     "commands may name bundles; default: the shipped models' folder and the "
                                     "folder holding --bundle and --shadow-bundle")

    # Delivery and flow control
    delivery: DeliveryMode = "at-least-once"
    max_in_flight_batches: int = Field(default=4, ge=1)
    commit_interval_ms: int = Field(default=100, ge=0, le=60_000, description="at-least-once: commit input "
                                    "offsets at most this often (and at once on revoke and stop); 0: after "
                                    "every piece of work")
    rebalance: Rebalance = Field(default="eager", description="eager: every member gives its partitions back "
                                 "and gets a new set (with kafka-python 3.0.12 the shorter pause, measured in "
                                 "docs/operations.md); cooperative: only moving partitions change hands, in two "
                                 "rounds (KIP-429). One group must use one kind")
    transactional_id: str | None = Field(
        default=None, description="exactly-once: stable id per process (default: derived)"
    )

    max_in_flight_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024, description="at-least-once: "
                                     "bytes of results and dead letters sent and not yet acknowledged, per process, "
                                     "before the worker stops fetching (records are bounded too, by "
                                     "max_in_flight_batches)")
    max_output_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, description="all the messages one input "
                                  "record may produce together (results of its sentences and its review, keys, "
                                  "headers and meta included); more is dead-lettered (result_too_large)")
    publish_block_ms: int = Field(default=1_000, ge=10, le=120_000, description="how long a send may wait for "
                                  "a topic's metadata or for buffer space; then the partition that published "
                                  "there is paused and retried, and the others flow on")
    max_record_attempts: int = Field(default=3, ge=2, le=100, description="a record that was in work each time its "
                                     "worker died (crash, OOM kill, stall kill) this many times (once in a batch, "
                                     "then alone) is dead-lettered (crashed_worker) by whichever worker holds its "
                                     "partition next")

    dlq_window: int = Field(default=1000, ge=0, description="dead-letter breaker: per partition, over this many "
                            "records; 0 turns the breaker off")
    dlq_max_ratio: float = Field(default=0.9, gt=0, le=1, description="dead-letter breaker: opens when this share "
                                 "of a full window is dead letters (a bad deploy), and pauses the partition")
    dlq_max_consecutive: int = Field(default=500, ge=0, description="dead-letter breaker: opens after this many "
                                     "dead letters in a row; 0: no such cap")

    publish_retry_max_s: float = Field(default=30.0, gt=0, description="longest back-off before retrying a "
                                       "partition whose results or dead letters could not be published")

    # Process and observability
    processes: int = Field(default=1, ge=1, le=256)
    stall_timeout_s: float = Field(default=60.0, gt=0, description="/healthz fails (and the supervisor restarts "
                                   "the process) when the run loop has not turned for this long")
    max_restarts: int = Field(default=5, ge=0, description="supervisor: more crashes of one worker slot "
                              "than this within restart_window_s and it gives up (exit 3)")
    restart_window_s: float = Field(default=300.0, gt=0)
    start_timeout_s: float = Field(default=180.0, gt=0, description="supervisor: a worker process whose loop has "
                                   "not turned this long after it started (a hang while loading or joining) is "
                                   "killed and restarted")
    metrics_port: int = Field(default=9400, ge=0, le=65535, description="0 turns it off")
    metrics_host: str = "0.0.0.0"
    log_level: str = "INFO"

    # Status records and the web console (README "Console")
    status_interval_s: float = Field(default=5.0, ge=0, description="every worker publishes a small status "
                                     "record this often to status_topic (sentistream console reads it); 0 turns it off")
    status_topic: str = Field(default="sentences.status", description="compacted topic of worker status records, "
                              "key <host>/<pid>; the worker creates it if missing")
    console_token: SecretStr | None = Field(default=None, description="sentistream console: the token its actions "
                                            "need, and any bind that is not local (env only, never logged)")

    @field_validator("swap_when")
    @classmethod
    def _check_swap_when(cls, value: str | None) -> str | None:
        if value is not None:
            SwapRule.parse(value)
        return value

    @model_validator(mode="after")
    def _check_security(self) -> Settings:
        sasl_complete = self.sasl_mechanism and self.sasl_username and self.sasl_password
        if self.security_protocol.startswith("SASL") and not sasl_complete:
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_mechanism, "
                "sasl_username and sasl_password"
            )
        return self

    def bundle_root_paths(self, shipped: Path) -> list[Path]:
        """Where control commands may point: ``bundle_roots``, or by default ``shipped`` (the
        shipped models' folder) and the folders holding ``bundle`` and ``shadow_bundle``."""
        if self.bundle_roots:
            return [Path(p) for p in self.bundle_roots.split(":") if p]
        roots = [shipped]
        roots += [Path(b).parent for b in (self.bundle, self.shadow_bundle) if b is not None]
        return roots

    def kafka_client_config(self, bootstrap: str) -> dict[str, Any]:
        """kafka-python keyword arguments shared by every client (secrets stay in here)."""
        cfg: dict[str, Any] = {
            "bootstrap_servers": bootstrap.split(","),
            "security_protocol": self.security_protocol,
            "client_id": self.client_id,
        }
        if self.security_protocol.startswith("SASL"):
            cfg["sasl_mechanism"] = self.sasl_mechanism
            cfg["sasl_plain_username"] = self.sasl_username
            cfg["sasl_plain_password"] = self.sasl_password.get_secret_value()  # type: ignore[union-attr]
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(self, key)
            if value is not None:
                cfg[key] = str(value)
        if self.ssl_password is not None:
            cfg["ssl_password"] = self.ssl_password.get_secret_value()
        return cfg

    def public_view(self) -> dict[str, Any]:
        """What may be logged: everything but secrets."""
        return self.model_dump(mode="json", exclude={"sasl_password", "ssl_password", "console_token"})
