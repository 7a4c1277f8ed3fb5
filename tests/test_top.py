"""`sentistream top`'s arithmetic and screen, from two hand-made scrapes (no network)."""

from __future__ import annotations

from rich.console import Console

from sentistream.bench.scrape import Snapshot
from sentistream.cli.top import Reading, compare, metrics_url, render


def snap(consumed: float, fast: float, slow: float, lag: float) -> Snapshot:
    e2e = "sentistream_end_to_end_seconds_bucket"
    return Snapshot([
        ("sentistream_messages_consumed_total", {}, consumed),
        ("sentistream_worker_ready", {}, 2),
        ("sentistream_consumer_lag", {"topic": "t", "partition": "0"}, lag),
        ("sentistream_messages_classified_total", {"label": "Positive"}, consumed * 0.75),
        ("sentistream_messages_classified_total", {"label": "Negative"}, consumed * 0.25),
        ("sentistream_model_info", {"name": "m", "version": "1.2.3", "sha256": "x"}, 1),
        (e2e, {"le": "0.01"}, fast), (e2e, {"le": "0.1"}, fast + slow), (e2e, {"le": "+Inf"}, fast + slow),
    ])


def test_metrics_url_accepts_host_port_and_urls() -> None:
    assert metrics_url("w1:9400") == "http://w1:9400/metrics"
    assert metrics_url("http://w1:9400") == "http://w1:9400/metrics"
    assert metrics_url("https://w1/custom") == "https://w1/custom"


def test_rates_and_quantiles_come_from_the_difference_between_scrapes() -> None:
    before = Reading("u", 10.0, snap(consumed=100, fast=100, slow=0, lag=50))
    now = Reading("u", 12.0, snap(consumed=300, fast=100, slow=200, lag=5))
    row = compare(before, now)
    assert row.rate == 100.0  # 200 records in 2 s
    assert 0.01 < row.p50 < 0.1  # only the slow records arrived in between
    assert row.lag == 5 and row.workers == 2 and row.model == "m 1.2.3"


def test_screen_shows_rows_totals_mix_and_unreachable_endpoints() -> None:
    before = Reading("http://a/metrics", 0.0, snap(0, 0, 0, 0))
    rows = [compare(before, Reading("http://a/metrics", 1.0, snap(40, 40, 0, 7))),
            compare(None, Reading("http://b/metrics", 1.0, None, "cannot reach http://b/metrics: refused"))]
    console = Console(record=True, width=120)
    console.print(render(rows, 1.0))
    text = console.export_text()
    assert "40.0" in text and "m 1.2.3" in text and "down" in text
    assert "label mix: Positive 75%  Negative 25%" in text
    assert "cannot reach http://b/metrics: refused" in text


def test_a_worker_that_has_classified_nothing_yet_shows_no_mix() -> None:
    idle = snap(0, 0, 0, 0)  # its label counters exist, at 0
    console = Console(record=True, width=120)
    console.print(render([compare(Reading("u", 0.0, idle), Reading("u", 1.0, idle))], 1.0))
    assert "label mix: no sentences yet" in console.export_text()


def test_a_shadow_shows_its_agreement_summed_over_label_pairs_and_a_retired_model_is_left_out() -> None:
    pairs = [("sentistream_shadow_predictions_total", {"serving": "Positive", "shadow": "Positive"}, 70.0),
             ("sentistream_shadow_predictions_total", {"serving": "Neutral", "shadow": "Positive"}, 20.0),
             ("sentistream_shadow_predictions_total", {"serving": "Neutral", "shadow": "Neutral"}, 10.0),
             ("sentistream_shadow_info", {"name": "m", "version": "2.0.0", "sha256": "y"}, 1),
             ("sentistream_model_info", {"name": "m", "version": "0.9.0", "sha256": "z"}, 0)]
    now = Snapshot(snap(10, 10, 0, 0).samples + pairs)
    row = compare(Reading("u", 0.0, snap(0, 0, 0, 0)), Reading("u", 1.0, now))
    assert row.shadow == "m 2.0.0: 80.0% agree of 100" and row.model == "m 1.2.3"
    console = Console(record=True, width=160)
    console.print(render([row], 1.0))
    assert "80.0% agree of 100" in console.export_text()
