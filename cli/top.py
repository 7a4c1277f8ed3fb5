"""``sentistream top``: a live terminal view over one or more workers' ``/metrics``.

Each refresh scrapes every endpoint, and figures come from the difference between two scrapes:
messages/s, end-to-end p50/p99 over the interval, dead letters, lag, the label mix, and a shadow
bundle's agreement with the serving one (from the label-pair counters, so it sums over processes). An
endpoint that does not answer gets a row that says so; the others keep updating.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import select
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from sentistream.bench.scrape import Snapshot, quantile, scrape

E2E = "sentistream_end_to_end_seconds"


def metrics_url(target: str) -> str:
    """``host:port``, ``http://host:port`` or a full URL → the ``/metrics`` URL."""
    url = target if "://" in target else f"http://{target}"
    scheme, rest = url.split("://", 1)
    return url if "/" in rest else f"{scheme}://{rest}/metrics"


@dataclass(frozen=True)
class Reading:
    """One endpoint at one moment: a snapshot, or why there is none."""

    url: str
    at: float
    snapshot: Snapshot | None
    error: str | None = None


def read(url: str) -> Reading:
    try:
        return Reading(url, time.monotonic(), scrape(url, timeout=1.0))
    except (OSError, ValueError, http.client.HTTPException) as exc:  # refused, timed out, cut short, garbled
        reason = getattr(exc, "reason", None) or exc
        reason = getattr(reason, "strerror", None) or str(reason)
        return Reading(url, time.monotonic(), None, f"cannot reach {url}: {reason}")


@dataclass(frozen=True)
class Row:
    """What one endpoint did between two readings."""

    url: str
    error: str | None = None
    workers: float = 0
    rate: float = 0.0
    p50: float | None = None
    p99: float | None = None
    lag: float = 0
    dead: float = 0
    labels: dict[str, float] | None = None
    model: str = ""
    shadow: str = ""


def compare(before: Reading | None, now: Reading) -> Row:
    if now.snapshot is None:
        return Row(now.url, error=now.error)
    s = now.snapshot
    prior = before.snapshot if before is not None and before.snapshot is not None else None
    elapsed = now.at - before.at if prior is not None else 0.0
    consumed = s.total("sentistream_messages_consumed_total")
    rate = (consumed - prior.total("sentistream_messages_consumed_total")) / elapsed if prior and elapsed > 0 else 0.0
    window = prior.buckets(E2E) if prior else None
    models = sorted({f"{lab.get('name')} {lab.get('version')}" for n, lab, v in s.samples
                     if n == "sentistream_model_info" and v})
    return Row(
        url=now.url,
        workers=s.total("sentistream_worker_ready"),
        rate=max(rate, 0.0),
        p50=quantile(s.buckets(E2E), 0.50, window),
        p99=quantile(s.buckets(E2E), 0.99, window),
        lag=s.total("sentistream_consumer_lag"),
        dead=s.total("sentistream_messages_dead_lettered_total"),
        labels=s.by_label("sentistream_messages_classified_total", "label"),
        model=", ".join(models),
        shadow=shadow_summary(s),
    )


def shadow_summary(s: Snapshot) -> str:
    """``name version: agreement% of N``, for the shadow running now (none: empty)."""
    shadows = sorted({f"{lab.get('name')} {lab.get('version')}" for n, lab, v in s.samples
                      if n == "sentistream_shadow_info" and v})
    if not shadows:
        return ""
    pairs = [(lab.get("serving"), lab.get("shadow"), v) for n, lab, v in s.samples
             if n == "sentistream_shadow_predictions_total"]
    seen = sum(v for _, _, v in pairs)
    agreed = sum(v for a, b, v in pairs if a == b)
    return f"{', '.join(shadows)}: " + (f"{agreed / seen:.1%} agree of {seen:,.0f}" if seen else "nothing compared yet")


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.0f} ms"


def render(rows: list[Row], interval: float) -> Group:
    """The whole screen: one row per endpoint, a total, and the label mix."""
    table = Table(title="sentistream top", caption=f"every {interval:g} s · q or Ctrl-C quits", expand=True)
    shadowed = any(r.shadow for r in rows)  # the shadow column only while one runs
    columns = [("endpoint", "left"), ("ready", "right"), ("msg/s", "right"), ("p50", "right"), ("p99", "right"),
               ("lag", "right"), ("DLQ", "right"), ("model", "left")] + ([("shadow", "left")] if shadowed else [])
    for name, justify in columns:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    extra = [""] if shadowed else []
    for r in rows:
        if r.error:
            table.add_row(r.url, Text("down", style="bold red"), *[""] * (len(columns) - 2))
        else:
            table.add_row(r.url, f"{r.workers:.0f}", f"{r.rate:,.1f}", _ms(r.p50), _ms(r.p99),
                          f"{r.lag:,.0f}", f"{r.dead:,.0f}", r.model, *([r.shadow] if shadowed else []))
    live = [r for r in rows if not r.error]
    table.add_section()
    table.add_row("total", f"{sum(r.workers for r in live):.0f}", f"{sum(r.rate for r in live):,.1f}", "", "",
                  f"{sum(r.lag for r in live):,.0f}", f"{sum(r.dead for r in live):,.0f}", "", *extra,
                  style="bold")
    mix: dict[str, float] = {}
    for r in live:
        for label, n in (r.labels or {}).items():
            mix[label] = mix.get(label, 0.0) + n
    total = sum(mix.values())
    shares = "  ".join(f"{label} {n / total:.0%}" for label, n in sorted(mix.items(), key=lambda kv: -kv[1]) if n)
    problems = [Text(r.error, style="red") for r in rows if r.error]
    return Group(table, Text(f"label mix: {shares or 'no sentences yet'}"), *problems)


@contextlib.contextmanager
def _keys() -> Iterator[Callable[[float], str | None]]:
    """A ``wait(seconds) -> key or None`` that reads single keys without Enter, when stdin is a TTY."""
    if not sys.stdin.isatty():
        yield lambda seconds: time.sleep(seconds)  # type: ignore[func-returns-value]
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        def wait(seconds: float) -> str | None:
            ready, _, _ = select.select([fd], [], [], seconds)
            return os.read(fd, 1).decode(errors="replace") if ready else None

        yield wait
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run(targets: list[str], interval: float, once: bool, console: Console) -> None:
    urls = [metrics_url(t) for t in targets]
    before = {u: read(u) for u in urls}
    if once:
        time.sleep(interval)
        console.print(render([compare(before[u], read(u)) for u in urls], interval))
        return
    first = render([compare(None, r) for r in before.values()], interval)
    with _keys() as wait, Live(first, console=console, auto_refresh=False) as live, \
            contextlib.suppress(KeyboardInterrupt):
        while wait(interval) not in ("q", "Q"):
            now = {u: read(u) for u in urls}
            live.update(render([compare(before[u], now[u]) for u in urls], interval), refresh=True)
            before = now
