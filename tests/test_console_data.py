"""The console's data (cli/console_data.py) and the worker's status record (worker/status.py),
without a broker: the schema, the aggregations, who may act."""

from __future__ import annotations

import json
import types

import pytest
from prometheus_client import CollectorRegistry

from sentistream.bench.status_cost import fake_worker
from sentistream.cli import console_data as data
from sentistream.cli.console import check_bind
from sentistream.worker.contract import json_schemas
from sentistream.worker.errors import UserError
from sentistream.worker.metrics import WorkerMetrics
from sentistream.worker.settings import Settings
from sentistream.worker.status import Rates, WorkerStatus
from sentistream.worker.status_publisher import TOMBSTONE_WAIT_S, StatusPublisher, quantile


def status(worker: str = "h/1", at: float = 100.0, interval: float = 5.0, partitions=(0,), rate: float = 10.0,
           p99: float | None = 20.0, labels=None) -> WorkerStatus:
    host, pid = worker.split("/")
    return WorkerStatus(worker=worker, host=host, pid=int(pid), at=at, interval_s=interval, started_at=0.0,
                        group="g", input_topic="in", output_topic="out", dlq_topic="dlq", delivery="at-least-once",
                        batch_size=32, partitions=list(partitions),
                        rates=Rates(records_in=rate, sentences_out=2 * rate, dead_letters=rate / 10),
                        labels=labels or {}, p50_ms=None if p99 is None else p99 / 2, p99_ms=p99, ready=True,
                        reason="ready", model={"name": "m", "version": "1"})


def test_the_status_record_is_in_the_published_schema() -> None:
    schema = json_schemas()["status"]
    assert {"worker", "rates", "partitions", "p99_ms", "model", "shadow", "ready", "reason"} <= set(schema["properties"])
    record = status()
    assert WorkerStatus.model_validate_json(record.model_dump_json()) == record


def test_a_worker_silent_for_three_intervals_is_gone() -> None:
    statuses = {"h/1": status("h/1", at=100.0), "h/2": status("h/2", at=90.0)}
    rows = {r["worker"]: r for r in data.fleet_rows(statuses, now=110.0)}
    assert not rows["h/1"]["gone"] and rows["h/1"]["ready"]
    assert rows["h/2"]["gone"] and rows["h/2"]["reason"] == "gone" and not rows["h/2"]["ready"]  # 20 s > 3 x 5 s
    assert not data.fleet_rows({"h/2": status("h/2", at=90.0)}, now=104.9)[0]["gone"]


def test_totals_sum_live_workers_only_and_take_the_slowest_latency() -> None:
    statuses = {"h/1": status("h/1", rate=10, p99=20, labels={"pos": 3}),
                "h/2": status("h/2", rate=5, p99=50, labels={"pos": 1, "neg": 2}),
                "h/3": status("h/3", at=0.0, rate=1000, p99=999)}
    t = data.totals(statuses, now=101.0)
    assert (t["workers"], t["gone"]) == (2, 1)
    assert t["in_per_s"] == 15 and t["out_per_s"] == 30 and t["dead_per_s"] == pytest.approx(1.5)
    assert t["p99_ms"] == 50 and t["p50_ms"] == 25
    assert t["labels"] == {"pos": 4, "neg": 2}


def test_lag_per_partition_with_its_owner() -> None:
    statuses = {"h/1": status("h/1", partitions=[0, 1]), "h/2": status("h/2", partitions=[2]),
                "h/3": status("h/3", at=0.0, partitions=[3])}
    rows = data.lag_rows({0: 10, 2: 50}, {0: 15, 1: 7, 2: 50, 3: 4}, {0: 0, 1: 0, 2: 0, 3: 0},
                         data.owners(statuses, 101.0))
    assert [(r["partition"], r["lag"], r["owner"]) for r in rows] == [(0, 5, "h/1"), (1, 7, "h/1"), (2, 0, "h/2"),
                                                                      (3, 4, None)]
    assert sum(r["lag"] for r in rows) == 16


def test_history_keeps_fifteen_minutes() -> None:
    h = data.History()
    for t in range(0, 2000, 100):
        h.add({"t": float(t)})
    assert h.points[0]["t"] == 1900 - 900 and h.points[-1]["t"] == 1900


def test_fold_keeps_the_latest_per_worker_and_forgets_on_a_tombstone() -> None:
    statuses: dict[str, WorkerStatus] = {}
    data.fold(statuses, b"h/1", status(at=1).model_dump_json().encode())
    data.fold(statuses, b"h/1", status(at=2).model_dump_json().encode())
    data.fold(statuses, b"h/2", b"{not json")
    assert list(statuses) == ["h/1"] and statuses["h/1"].at == 2
    data.fold(statuses, b"h/1", None)
    assert statuses == {}


def test_tokens() -> None:
    assert data.token_ok(None, None, {})  # no token configured: a local console
    assert not data.token_ok("s3cret", None, {})
    assert not data.token_ok("s3cret", "Bearer wrong", {})
    assert data.token_ok("s3cret", "Bearer s3cret", {})
    assert data.token_ok("s3cret", None, data.parse_cookies(f"a=b; {data.COOKIE}=s3cret"))
    assert data.is_local("127.0.0.1") and data.is_local("::1") and data.is_local("localhost")
    assert not data.is_local("0.0.0.0") and not data.is_local("10.1.2.3")
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "s3cret")
    with pytest.raises(UserError, match="not a local address"):
        check_bind("0.0.0.0", None)


def test_the_console_token_is_read_from_the_environment_only_and_never_logged(monkeypatch) -> None:
    from sentistream.bench.worker_process import flag_settings

    assert "console_token" not in flag_settings()
    monkeypatch.setenv("SENTISTREAM_CONSOLE_TOKEN", "s3cret")
    s = Settings()
    assert s.console_token.get_secret_value() == "s3cret"
    assert "s3cret" not in json.dumps(s.public_view()) and "s3cret" not in repr(s)


def test_quantile_of_cumulative_buckets() -> None:
    buckets = [(0.01, 50.0), (0.1, 99.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert quantile(buckets, 0.5) == 0.01 and quantile(buckets, 0.99) == 0.1 and quantile(buckets, 1.0) == 1.0
    assert quantile([(0.1, 0.0), (float("inf"), 0.0)], 0.5) is None


def test_the_publisher_sends_when_due_with_rates_since_the_last_record_and_never_raises() -> None:
    metrics = WorkerMetrics(CollectorRegistry())
    sent: list[tuple[str, bytes, bytes]] = []
    clock = [1000.0]
    pub = StatusPublisher(Settings(status_interval_s=5), lambda *a: sent.append(a), fake_worker(metrics),
                          clock=lambda: clock[0])
    pub.tick()
    metrics.consumed.inc(50)
    metrics.classified.labels("pos").inc(80)
    metrics.end_to_end_seconds.observe(0.02)
    clock[0] += 4
    pub.tick()  # not due yet
    clock[0] += 1
    pub.tick()
    assert len(sent) == 2
    topic, key, value = sent[1]
    record = WorkerStatus.model_validate_json(value)
    assert topic == "sentences.status" and key.decode() == record.worker
    assert record.rates.records_in == pytest.approx(10) and record.rates.sentences_out == pytest.approx(16)
    assert record.labels == {"pos": 80} and record.p99_ms is not None

    def refuse(*_):
        raise RuntimeError("broker away")

    pub.send = refuse
    clock[0] += 5
    pub.tick()
    clock[0] += 5
    pub.tick()  # after a failure (a send may have blocked): not again for a minute
    assert pub.failures == 1
    clock[0] += 60
    pub.tick()
    assert pub.failures == 2
    off = StatusPublisher(Settings(status_interval_s=0), refuse, fake_worker(metrics))
    off.tick()
    assert off.failures == 0


def test_a_clean_stop_sends_a_tombstone_bounded_and_never_raising() -> None:
    metrics = WorkerMetrics(CollectorRegistry())
    sent: list[tuple[str, bytes, bytes | None]] = []
    waits: list[float] = []
    pub = StatusPublisher(Settings(status_interval_s=5), lambda *a: sent.append(a), fake_worker(metrics),
                          flush=waits.append)
    pub.tick()
    pub.close()
    assert sent[-1] == ("sentences.status", pub.key.encode(), None) and waits == [TOMBSTONE_WAIT_S]
    statuses: dict[str, WorkerStatus] = {}
    for _, key, value in sent:
        data.fold(statuses, key, value)
    assert statuses == {}  # the console drops the row

    def timed_out(_: float) -> None:
        raise TimeoutError("flush")

    late = StatusPublisher(Settings(status_interval_s=5), lambda *a: None, fake_worker(metrics), flush=timed_out)
    late.tick()
    late.close()  # logged and counted, not raised
    assert late.failures == 1
    for settings, send in ((Settings(status_interval_s=0), lambda *a: sent.append(a)),  # status records off
                           (Settings(status_interval_s=5), lambda *a: 1 / 0)):  # the last send failed
        quiet = StatusPublisher(settings, send, fake_worker(metrics))
        quiet.tick()
        before = len(sent)
        quiet.close()
        assert len(sent) == before


def test_control_history_newest_first_with_its_time() -> None:
    record = types.SimpleNamespace
    rows = data.control_rows([record(where="c[0]@0", key=b"serving", value=b'{"issued_at": 5.0}'),
                              record(where="c[0]@1", key=b"audit:console:promote:x", value=b'{"at": 7.5}'),
                              record(where="c[0]@2", key=b"junk", value=b"\xff")])
    assert [(r["where"], r["at"]) for r in rows] == [("c[0]@2", None), ("c[0]@1", 7.5), ("c[0]@0", 5.0)]


def test_the_command_refuses_a_non_local_bind_without_a_token_in_one_line(monkeypatch, capsys) -> None:
    from sentistream.cli.app import main

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.delenv("SENTISTREAM_CONSOLE_TOKEN", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(["console", "--host", "0.0.0.0"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "sentistream: refused: --host 0.0.0.0 is not a local address; set SENTISTREAM_CONSOLE_TOKEN to serve it"]
