"""Watching a live worker on the real broker: every Grafana panel's query answered by a real
Prometheus, every recording rule evaluated, and `sentistream top` driven in tmux."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from sentistream.broker.local import free_port
from sentistream.worker.bundle import default_bundle_path
from tests.cluster import KafkaCluster
from tests.test_deploy import DEPLOY, tool
from tests.workers import REPO, WorkerProcess, json_items

pytestmark = pytest.mark.kafka

BAD = [(b"bad", b"\xff\xfe"), (b"bad", b"{nope"), (b"bad", b'{"text": ""}')]


@pytest.fixture
def live_worker(topics, tmp_path: Path) -> Iterator[WorkerProcess]:
    w = WorkerProcess(topics()).start(tmp_path)
    try:
        w.wait_ready()
        yield w
    finally:
        assert w.stop() == 0, w.log()


@pytest.fixture
def shadowed_worker(topics, tmp_path: Path) -> Iterator[WorkerProcess]:
    """A live worker with a shadow bundle (the shipped one again), so the shadow panels have data."""
    w = WorkerProcess(topics(), ["--shadow-bundle", str(default_bundle_path())]).start(tmp_path)
    try:
        w.wait_ready()
        yield w
    finally:
        assert w.stop() == 0, w.log()


def send_wave(kafka: KafkaCluster, w: WorkerProcess, prefix: str, n: int = 60) -> None:
    """n sentences and three bad records; returns when the worker has consumed them all."""
    s = w.settings
    before = w.metric("sentistream_messages_consumed_total")
    kafka.produce(s.input_topic, json_items(n, prefix=prefix) + BAD)
    deadline = time.monotonic() + 60
    while w.metric("sentistream_messages_consumed_total") < before + n + len(BAD):
        assert time.monotonic() < deadline, f"worker did not consume wave {prefix}:\n{w.log()}"
        time.sleep(0.2)


@contextlib.contextmanager
def prometheus(targets: list[str], tmp_path: Path) -> Iterator[str]:
    """A real Prometheus (Debian's) scraping ``targets`` every second, with deploy's rules loaded."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DEPLOY / "prometheus" / "rules.yml")],
        "scrape_configs": [{"job_name": "sentistream", "static_configs": [{"targets": targets}]}],
    }))
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen([tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            with contextlib.suppress(OSError):
                urllib.request.urlopen(url + "/-/ready", timeout=1)
                break
            assert time.monotonic() < deadline, "Prometheus did not become ready in 30 s"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(20)


def query(url: str, expr: str) -> list[float]:
    """Values of an instant query; NaN ones (e.g. a quantile of nothing) left out."""
    with urllib.request.urlopen(f"{url}/api/v1/query?query={urllib.parse.quote(expr)}", timeout=5) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return [v for v in (float(s["value"][1]) for s in body["data"]["result"]) if not math.isnan(v)]


def eventually(url: str, expr: str, timeout: float = 15) -> list[float]:
    deadline = time.monotonic() + timeout
    while not (values := query(url, expr)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return values


def test_every_dashboard_panel_and_recording_rule_has_data(kafka: KafkaCluster, shadowed_worker: WorkerProcess,
                                                            tmp_path: Path) -> None:
    live_worker = shadowed_worker
    with prometheus([f"127.0.0.1:{live_worker.port}"], tmp_path) as prom:
        assert eventually(prom, 'up{job="sentistream"} == 1'), "Prometheus never scraped the worker"
        # two waves, scrapes between them: every counter series exists before it increases
        send_wave(kafka, live_worker, "a")
        time.sleep(3)
        send_wave(kafka, live_worker, "b")
        time.sleep(3)

        dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "sentistream.json").read_text())
        targets = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]
        assert len(targets) >= 12
        empty = [f"{title}: {expr}" for title, expr in targets
                 if not eventually(prom, expr.replace("$__rate_interval", "1m"), timeout=5)]
        assert not empty, "panels without data:\n" + "\n".join(empty)

        rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
        records = [r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r]
        missing = [name for name in records if not eventually(prom, name)]
        assert not missing, f"recording rules without data: {missing}"
        # and the figures are the ones the worker reports
        assert query(prom, 'sum(sentistream_messages_consumed_total{job="sentistream"})') == [126.0]
        assert sorted(query(prom, "sum by (reason) (sentistream_messages_dead_lettered_total) > 0")) == [2.0, 2.0, 2.0]
        assert query(prom, "max(sentistream:dead_letter_ratio:rate5m)")[0] == pytest.approx(6 / 126, rel=0.2)


def _tmux(socket: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("tmux"), "-L", socket, *args], capture_output=True, text=True, timeout=10)


def test_top_shows_a_live_worker_and_an_unreachable_one_and_quits_on_q(kafka: KafkaCluster, live_worker: WorkerProcess,
                                                                       tmp_path: Path) -> None:
    socket, dead = f"sentistream-{uuid.uuid4().hex[:8]}", free_port()
    rc_file = tmp_path / "rc"
    err_file = tmp_path / "top.err"
    command = (f"{sys.executable} -m sentistream.cli top --interval 0.5 127.0.0.1:{live_worker.port} 127.0.0.1:{dead} "
               f"2> {err_file}; echo $? > {rc_file}")
    env = {**os.environ, "TERM": "xterm-256color"}
    subprocess.run([tool("tmux"), "-L", socket, "new-session", "-d", "-s", "top", "-x", "160", "-y", "40",
                    "-c", str(REPO), "bash", "-c", command], env=env, check=True, timeout=10)
    try:
        frames: list[str] = []
        busy_rates: list[float] = []
        deadline = time.monotonic() + 30
        s = live_worker.settings
        sent = 0
        while time.monotonic() < deadline:
            # keep the worker busy while top polls: one burst could be done before top's first scrape
            kafka.produce(s.input_topic, json_items(100, prefix=f"t{sent}-"))
            sent += 100
            frame = _tmux(socket, "capture-pane", "-p", "-t", "top").stdout
            frames.append(frame)
            row = next((line for line in frame.splitlines() if f":{live_worker.port}/metrics" in line), "")
            cells = [c.strip() for c in row.split("│")]
            if len(cells) > 3 and cells[3].replace(",", "").replace(".", "").isdigit():
                busy_rates.append(float(cells[3].replace(",", "")))
            if busy_rates and max(busy_rates) > 0 and "no sentences yet" not in frame:
                break
            time.sleep(0.3)
        last = frames[-1]
        assert not rc_file.exists(), f"top exited by itself: {err_file.read_text()[-3000:]}"
        assert f"cannot reach http://127.0.0.1:{dead}/metrics" in last, last
        assert "sst5-minilm" in last, last
        assert re.search(r"label mix: (Very negative|Negative|Neutral|Positive|Very positive) [1-9]\d*%", last), last
        assert busy_rates and max(busy_rates) > 0, "msg/s never moved:\n" + last
        _tmux(socket, "send-keys", "-t", "top", "q")
        deadline = time.monotonic() + 10
        while not rc_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert rc_file.exists() and rc_file.read_text().strip() == "0", "top did not quit on q"
    finally:
        _tmux(socket, "kill-server")
