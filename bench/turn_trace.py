"""Where a slow message's time went: the worker's loop traced turn by turn, joined with each
message's exact latency (issue #27 point 2, docs/performance.md "Tails at half the peak").

``python -m sentistream.bench.turn_trace --rate 216 --seconds 20`` offers a steady load to one
worker (1 process, 1 thread) running in a process of its own whose loop is wrapped with timers:
every turn, poll, control look, tokenizer call, inference call, delivery, commit and status tick
is recorded with its wall time and the main thread's CPU time (a step whose wall time is far
above its CPU time was waiting: for the GIL, a lock, or a core the scheduler gave to someone
else), plus the collector's runs. Each message's latency (record timestamp → broker append of
its result, as in ``bench --latency``) is then cut into four segments:

- ``fetch``: sent → returned by the worker's ``poll()``;
- ``held``: → the start of the inference call that classified it;
- ``compute``: that call (tokenizer + model + building results);
- ``publish``: its end → the broker's append of the result.

The report gives each segment's quantiles over all messages and over the slowest 1 %, and the
longest steps of the loop. Nothing here changes the worker: the wrappers are installed in the
traced process only.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from sentistream.worker.settings import Settings

Event = tuple[str, float, float, float, float, Any]  # label, wall start, wall end, cpu start, cpu end, extra


class Tracer:
    """Collects timed events of the process's main thread (and the collector's, from a callback)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def wrap(self, owner: Any, name: str, label: str | None = None, extra=None) -> None:
        """Replace ``owner.name`` by a timed version; ``extra(args, result)`` adds data to the event."""
        original = getattr(owner, name)
        events = self.events

        @functools.wraps(original)
        def timed(*args, **kwargs):
            w0, c0 = time.time(), time.thread_time()
            result = None
            try:
                result = original(*args, **kwargs)
                return result
            finally:
                events.append((label or name, w0, time.time(), c0, time.thread_time(),
                               extra(args, result) if extra else None))

        setattr(owner, name, timed)

    def watch_gc(self) -> None:
        started: dict[int, tuple[float, float]] = {}

        def callback(phase: str, info: dict) -> None:
            if phase == "start":
                started[info["generation"]] = (time.time(), time.thread_time())
            elif info["generation"] in started:
                w0, c0 = started.pop(info["generation"])
                self.events.append((f"gc{info['generation']}", w0, time.time(), c0, time.thread_time(), None))

        gc.callbacks.append(callback)


def _where(records) -> list[tuple[int, int]]:
    return [(r.partition, r.offset) for r in records if hasattr(r, "offset")]


def traced_worker(trace_path: Path, settings: Settings, constants: dict[str, Any] | None = None) -> int:
    """The body of the traced process: one worker, its loop wrapped, the trace written at its end;
    ``constants``: worker/loop.py's module constants changed first (an A/B of a loop policy)."""
    from sentistream.worker import intake, loop, pipeline, status_publisher
    from sentistream.worker.delivery import AtLeastOnce
    from sentistream.worker.logs import setup_logging
    from sentistream.worker.loop import Worker
    from sentistream.worker.supervisor import run_worker_process

    for name, value in (constants or {}).items():
        if not hasattr(loop, name):
            raise SystemExit(f"worker/loop.py has no constant {name}")
        setattr(loop, name, value)
    tracer = Tracer()
    tracer.wrap(Worker, "turn")
    tracer.wrap(Worker, "_model_ops", "control")
    tracer.wrap(intake, "poll", extra=lambda args, result: {"timeout_ms": args[2], "records": _where(result or [])})
    tracer.wrap(Worker, "_decode", "decode")
    tracer.wrap(pipeline.Pipeline, "handle", extra=lambda args, result: _where(d.record for d in args[1]))
    tracer.wrap(pipeline.Pipeline, "_tokenize", "tokenize", extra=lambda args, result: len(args[1]))
    tracer.wrap(pipeline.Pipeline, "_predict", "predict",
                extra=lambda args, result: [len(args[1]), max((len(e.ids) for e in args[1]), default=0)])
    tracer.wrap(Worker, "_deliver", "deliver")
    tracer.wrap(Worker, "_wait_for_room", "wait_for_room")
    tracer.wrap(AtLeastOnce, "advance")
    tracer.wrap(AtLeastOnce, "_commit", "commit")
    tracer.wrap(Worker, "_report_lag", "lag")
    tracer.wrap(Worker, "_check_broker", "check_broker")
    tracer.wrap(status_publisher.StatusPublisher, "tick", "status")
    tracer.watch_gc()
    setup_logging(settings.log_level, "worker")
    try:
        return run_worker_process(settings, serve_http=True)
    finally:
        trace_path.write_text(json.dumps(tracer.events))


# -- the measurement --------------------------------------------------------------------------------
def measure(settings: Settings, bootstrap: str, rate: float, seconds: float, texts: list[str],
            out_dir: Path, extra: dict[str, Any] | None = None, constants: dict[str, Any] | None = None) -> dict[str, Any]:
    """Offer ``rate`` msgs/s for ``seconds`` to a traced worker; the joined trace."""
    from sentistream.bench.latency import PARTITIONS, offer_and_collect, stop
    from sentistream.bench.run import Topics
    from sentistream.bench.scrape import wait_ready
    from sentistream.broker.local import free_port

    topics = Topics(settings, bootstrap, PARTITIONS, output_configs={"message.timestamp.type": "LogAppendTime"})
    port = free_port()
    s = topics.settings.model_copy(update={"metrics_port": port, "processes": 1, "threads": 1, "log_level": "ERROR",
                                           **(extra or {})})
    trace_path = out_dir / f"trace-{int(time.time())}.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "sentistream.bench.turn_trace", "worker", str(trace_path),
                             s.model_dump_json(), json.dumps(constants or {})])
    try:
        wait_ready(f"http://127.0.0.1:{port}/metrics", proc=proc)
        sent, arrived = offer_and_collect(s, rate, seconds, texts)
        where = _input_positions(s, len(sent))
    finally:
        stop(proc)
        topics.drop()
    events = json.loads(trace_path.read_text())
    trace_path.write_text(json.dumps({"rate": rate, "sent": sent, "arrived": arrived, "events": events,
                                      "where": [[p, o, i] for (p, o), i in where.items()]}))
    return {"rate": rate, "sent": sent, "arrived": arrived, "where": where, "events": events}


def load(path: Path) -> dict[str, Any]:
    """A run :func:`measure` saved."""
    run = json.loads(path.read_text())
    run["where"] = {(p, o): i for p, o, i in run["where"]}
    return run


def _input_positions(s: Settings, want: int) -> dict[tuple[int, int], str]:
    """(partition, offset) of every input record -> its id, read back from the input topic."""
    from sentistream.worker import kafka_clients

    consumer = kafka_clients.consumer(s, s.bootstrap_servers, group_id=None)
    consumer.subscribe([s.input_topic])
    out: dict[tuple[int, int], str] = {}
    deadline = time.monotonic() + 30
    while len(out) < want and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            for r in records:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    out[(r.partition, r.offset)] = json.loads(r.value)["id"]
    consumer.close()
    return out


# -- the analysis -----------------------------------------------------------------------------------
SEGMENTS = ("fetch", "held", "compute", "publish")


def segments(run: dict[str, Any]) -> dict[str, dict[str, float]]:
    """id -> its latency and the four segments, in ms."""
    polled: dict[str, float] = {}
    handled: dict[str, tuple[float, float]] = {}
    for label, w0, w1, _c0, _c1, extra in run["events"]:
        if label == "poll":
            for p, o in extra["records"]:
                i = run["where"].get((p, o))
                if i is not None:
                    polled.setdefault(i, w1 * 1000)
        elif label == "handle":
            for p, o in extra:
                i = run["where"].get((p, o))
                if i is not None:
                    handled.setdefault(i, (w0 * 1000, w1 * 1000))
    out = {}
    for i, sent in run["sent"].items():
        if i not in run["arrived"] or i not in polled or i not in handled:
            continue
        appended = run["arrived"][i]
        h0, h1 = handled[i]
        out[i] = {"latency": appended - sent, "fetch": polled[i] - sent, "held": h0 - polled[i],
                  "compute": h1 - h0, "publish": appended - h1, "sent": sent}
    return out


def report(run: dict[str, Any], top: int = 12) -> str:
    from sentistream.bench.latency import WARMUP_S, latencies

    per = segments(run)
    lat = np.array([v["latency"] for v in per.values()])
    p99 = float(np.quantile(lat, 0.99))
    slow = [v for v in per.values() if v["latency"] >= p99]
    steady = latencies("worker", run["rate"], run["sent"], run["arrived"])
    lines = [f"offered {run['rate']:.0f} msg/s; {len(per)}/{len(run['sent'])} messages joined; latency p50 / p95 / "
             f"p99 {np.quantile(lat, 0.5):.1f} / {np.quantile(lat, 0.95):.1f} / {p99:.1f} ms; after the first "
             f"{WARMUP_S:g} s: " + " / ".join(f"{v:.1f}" for v in steady.ms.values()) + " ms", "",
             f"{'segment':<9} {'all: p50':>9} {'p95':>7} {'p99':>7}   {'slowest 1 %: mean':>18} {'max':>7}"]
    for seg in SEGMENTS:
        a = np.array([v[seg] for v in per.values()])
        b = np.array([v[seg] for v in slow])
        lines.append(f"{seg:<9} {np.quantile(a, 0.5):9.1f} {np.quantile(a, 0.95):7.1f} {np.quantile(a, 0.99):7.1f}"
                     f"   {b.mean():18.1f} {b.max():7.1f}")
    events = [("idle poll" if e[0] == "poll" and e[5]["timeout_ms"] else e[0], *e[1:]) for e in run["events"]]
    start = min(v["sent"] for v in per.values()) / 1000
    end = max(v["sent"] + v["latency"] for v in per.values()) / 1000
    inside = [e for e in events if start <= e[1] <= end]
    totals = Counter()
    counts = Counter()
    for label, w0, w1, *_ in inside:
        totals[label] += w1 - w0
        counts[label] += 1
    span = end - start
    waited = Counter()
    for e in inside:
        waited[e[0]] += (e[2] - e[1]) - (e[4] - e[3])
    lines += ["", f"steps while the load ran ({span:.1f} s): label, calls, share of wall time, of it waiting "
              "(wall - cpu), worst (wall / cpu ms); an idle poll waits for records by design"]
    for label in sorted(totals, key=totals.get, reverse=True):
        worst = max((e for e in inside if e[0] == label), key=lambda e: e[2] - e[1])
        share, waiting = 100 * totals[label] / span, 100 * waited[label] / span
        lines.append(f"  {label:<14} {counts[label]:6d} {share:6.1f} % {waiting:6.1f} %"
                     f"  {1000 * (worst[2] - worst[1]):7.1f} / {1000 * (worst[4] - worst[3]):6.1f}")
    calls = [e for e in inside if e[0] == "predict"]
    if calls:
        sentences = sum(e[5][0] for e in calls)
        cpu = sum(e[4] - e[3] for e in calls)
        lines += ["", f"inference: {len(calls)} calls, {sentences / len(calls):.2f} sentences per call, "
                  f"{1000 * cpu / sentences:.2f} ms CPU per sentence"]
    lines += ["", "the slowest 1 % in episodes (sent less than 100 ms apart): start s, messages, worst ms, "
              "mean segments fetch / held / compute / publish ms"]
    episodes: list[list[dict[str, float]]] = []
    for v in sorted(slow, key=lambda v: v["sent"]):
        if episodes and v["sent"] - episodes[-1][-1]["sent"] < 100:
            episodes[-1].append(v)
        else:
            episodes.append([v])
    for ep in episodes:
        means = " / ".join(f"{np.mean([v[seg] for v in ep]):.1f}" for seg in SEGMENTS)
        lines.append(f"  {ep[0]['sent'] / 1000 - start:6.2f}  {len(ep):4d}  {max(v['latency'] for v in ep):7.1f}  {means}")
    lines += ["", f"the {top} longest steps other than turn, handle and idle polls (wall / cpu ms, at s from the start):"]
    leaves = [e for e in inside if e[0] not in ("turn", "handle", "idle poll")]
    for label, w0, w1, c0, c1, extra in sorted(leaves, key=lambda e: e[2] - e[1], reverse=True)[:top]:
        lines.append(f"  {label:<14} {1000 * (w1 - w0):7.1f} / {1000 * (c1 - c0):6.1f}  at {w0 - start:6.2f}"
                     f"  {extra if isinstance(extra, (int, list)) else ''}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "worker":
        raise SystemExit(traced_worker(Path(argv[1]), Settings.model_validate_json(argv[2]), json.loads(argv[3])))
    if argv and argv[0] == "report":
        for path in argv[1:]:
            print(report(load(Path(path))))
        return
    parser = argparse.ArgumentParser(prog="python -m sentistream.bench.turn_trace", description=__doc__.split("\n")[0])
    parser.add_argument("--share", type=float, default=0.5, help="offered load as a share of the peak (default 0.5)")
    parser.add_argument("--peak", type=float, help="the peak in msg/s (default: measured first, as bench --latency does)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a worker setting for the traced worker (JSON value), e.g. --set latency_target_ms=50")
    parser.add_argument("--ab", action="append", default=[], metavar="CONSTANT=VALUE",
                        help="alternate runs without and with worker/loop.py's CONSTANT set to VALUE (JSON), "
                             "e.g. --ab POLL_BATCHES=1; --runs pairs")
    parser.add_argument("--ab-set", action="append", default=[], metavar="NAME=VALUE",
                        help="alternate runs without and with this worker setting (JSON value), "
                             "e.g. --ab-set latency_target_ms=50; --runs pairs")
    parser.add_argument("--noop", action="store_true",
                        help="trace the no-op model (the bundle's tokenizer, a graph that costs nothing)")
    parser.add_argument("--out", type=Path, default=Path("out/turn-trace"))
    args = parser.parse_args(argv)
    from sentistream.bench.latency import PARTITIONS
    from sentistream.bench.run import sentences, worker_throughput
    from sentistream.bench.soak import soak_broker
    from sentistream.worker.bundle import default_bundle_path

    extra = {}
    for item in args.set:
        name, _, value = item.partition("=")
        extra[name] = json.loads(value)
    texts = sentences(4000)
    with soak_broker(Settings()) as s:
        if args.noop:
            from sentistream.bench.latency import noop_bundle

            extra["bundle"] = str(noop_bundle(s.bundle or default_bundle_path(), args.out / "noop-bundle"))
        peak = args.peak
        if peak is None:
            peak, _ = worker_throughput(s, s.bootstrap_servers, s.bundle or default_bundle_path(), texts[:3000], 1, 1,
                                        32, PARTITIONS)
            print(f"peak of 1 worker × 1 thread: {peak:.0f} msg/s", flush=True)
        constants = {name: json.loads(value) for name, _, value in (item.partition("=") for item in args.ab)}
        settings = {name: json.loads(value) for name, _, value in (item.partition("=") for item in args.ab_set)}
        configs = [("as built", {}, {})]
        if constants or settings:
            configs.append((" ".join(args.ab + args.ab_set), constants, settings))
        summary: list[tuple[str, str]] = []
        for r in range(args.runs):
            for label, consts, sets in configs if r % 2 == 0 else configs[::-1]:
                run = measure(s, s.bootstrap_servers, peak * args.share, args.seconds, texts, args.out,
                              {**extra, **sets}, consts)
                print(f"## {label}\n{report(run)}\n", flush=True)
                summary.append((label, report(run).splitlines()[0]))
        for label, line in sorted(summary, key=lambda x: x[0]):
            print(f"{label:<28} {line}")


if __name__ == "__main__":
    main()
