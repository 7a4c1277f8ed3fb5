"""`sentistream bench --soak`: the CI version (2 minutes against the session's broker) and the
soak's arithmetic. The 30-minute run and its figures: docs/soak.md."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sentistream.bench.soak import by_thirds, default_restart_every, percentile, slope_per_10min
from tests.cluster import KafkaCluster

REPO = Path(__file__).resolve().parents[1]


def test_slope_is_least_squares_per_ten_minutes() -> None:
    ts = [float(t) for t in range(0, 600, 5)]
    assert slope_per_10min(ts, [100 + t / 600 for t in ts]) == pytest.approx(1.0)
    assert slope_per_10min(ts, [100.0 for _ in ts]) == 0.0
    assert slope_per_10min([1.0], [5.0]) == 0.0


def test_percentiles_are_exact_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 0.5) == 50.0
    assert percentile([], 0.99) is None


def test_thirds_split_by_send_time() -> None:
    rows = [(0.5, 1.0), (1.5, 2.0), (2.5, 3.0), (3.0, 4.0)]
    assert [n for n, _, _ in by_thirds(rows, 0.0, 3.0)] == [1, 1, 2]


def test_restart_period_gives_each_third_the_same_number_of_restarts() -> None:
    for minutes in (2, 10, 30, 60):
        third = minutes * 60 / 3
        period = default_restart_every(minutes)
        assert third / period == pytest.approx(round(third / period))
    assert default_restart_every(30) == 200


@pytest.mark.parametrize(("args", "says"), [
    (["--rate", "5"], "go with --soak"),
    (["--soak", "0"], "greater than 0"),
    (["--soak", "1", "--restart-every", "3"], "at least 10 seconds"),
])
def test_bad_soak_arguments_are_one_line(args: list[str], says: str, capsys) -> None:
    from sentistream.cli.app import main

    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]


@pytest.mark.kafka
def test_two_minute_soak_loses_nothing_and_holds_its_memory(kafka: KafkaCluster, tmp_path: Path) -> None:
    """The CI soak: 40 msgs/s (no peak measurement), B restarted at 20, 60 and 100 s. It must lose
    nothing, restart B and hold the memory rule. Its latency rule (p99 flat over the run) is a
    benchmark's: on a shared 2-core runner a neighbour moves p99, so here a FAIL of that rule alone
    is reported, not asserted (bench --soak on a quiet machine enforces it: docs/performance.md)."""
    out = tmp_path / "soak"
    env = {**os.environ, "SENTISTREAM_BOOTSTRAP_SERVERS": kafka.bootstrap, "SENTISTREAM_HOME": str(tmp_path / "home")}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "sentistream.cli", "bench", "--soak", "2", "--rate", "40",
                             "--restart-every", "40", "--out", str(out)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    print(f"\n{result.stdout}\nwall {time.monotonic() - started:.0f} s")
    figures = (out / "soak.md").read_text()
    failed = re.search(r"\| verdict \| (?:PASS|FAIL: (.*)) \|", figures)
    assert failed is not None, figures
    rules = [rule for rule in (failed.group(1) or "").split("; ") if rule]
    assert [rule for rule in rules if not rule.startswith("p99 not flat")] == [], figures
    assert result.returncode == (1 if rules else 0), result.stdout[-3000:] + result.stderr[-3000:]
    assert "| lost | 0 |" in figures
    restarts = re.search(r"\| restarts of B \| (\d+) ", figures)
    assert restarts is not None and int(restarts.group(1)) >= 2, figures
    samples = (out / "soak.csv").read_text().strip().splitlines()
    assert len(samples) > 10, samples  # a header and one row per 5 s
