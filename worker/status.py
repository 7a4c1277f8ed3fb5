"""The worker's status record (its schema is in ``sentistream schema`` as "status"): a few hundred
bytes every ``status_interval_s`` on the compacted ``status_topic`` (key ``<host>/<pid>``), which
``sentistream console`` reads (cli/console_data.py); worker/status_publisher.py sends it.

Rates are per second since the previous record; latency percentiles come from the worker's own
end-to-end histogram, over the same span. Supervisor restarts are not in it: a restarted process
is a new key (a new pid) and the old one goes quiet.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

STATUS_VERSION = "1"


class ModelStatus(BaseModel):
    name: str
    version: str
    runtime: str | None = None


class ShadowStatus(ModelStatus):
    agreement: float = Field(description="share of compared sentences on which it agreed with the serving model")
    compared: int = Field(description="sentences classified by both since the shadow started")


class Rates(BaseModel):
    """Per second, since the previous record."""

    records_in: float = Field(description="input records taken into work")
    sentences_out: float = Field(description="sentences classified and published")
    dead_letters: float = Field(description="input records dead-lettered")


class WorkerStatus(BaseModel):
    """One worker process's state, as ``sentistream console`` shows it."""

    model_config = ConfigDict(extra="ignore")

    status_version: str = STATUS_VERSION
    worker: str = Field(description="<host>/<pid>, also the record's key")
    host: str
    pid: int
    at: float = Field(description="unix time the record was built")
    interval_s: float = Field(description="how often this worker publishes (a worker silent for 3 is gone)")
    started_at: float = Field(description="unix time this process started")
    group: str
    input_topic: str
    output_topic: str
    dlq_topic: str
    delivery: str
    batch_size: int
    runtime: str | None = None
    partitions: list[int] = Field(description="input partitions assigned to this worker")
    rates: Rates
    labels: dict[str, int] = Field(default_factory=dict, description="sentences per label since the previous record")
    p50_ms: float | None = Field(None, description="end-to-end latency median since the previous record")
    p99_ms: float | None = None
    ready: bool
    reason: str = Field(description="why not ready ('ready' when it is)")
    model: ModelStatus
    shadow: ShadowStatus | None = None
    publish_failures: int = Field(0, description="status records that could not be sent so far")
