"""What one inference call costs when it holds one sentence (issue #27 point 2).

At half the peak the worker classifies about one sentence per call (docs/performance.md, "Tails
at half the peak"), while the peak is measured on full batches. This study times the shipped
bundle's model (tokenizer excluded) in one process, two ways:

    python -m sentistream.bench.call_cost [--sentences 400] [--rounds 3]

- **alone**: each test-split sentence in a call of its own, on every installed runtime with 1 and
  2 threads, the configurations interleaved sentence by sentence (wall and CPU time per call);
- **shape**: training-split sentences of exactly ``L`` tokens, ``n`` to a call, median of repeats:
  how a call's time grows with its length and its batch size, and so how much of a one-sentence
  call is a fixed cost that batching or merging lengths could save;
- ``--profile``: onnxruntime's own profiler over one-sentence calls: kernel time and nodes per
  call by operator type (the profiler's timing inflates the totals; the shares are what it is for).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
import time
from pathlib import Path

from sentistream.worker import sessions
from sentistream.worker.bundle import Bundle, default_bundle_path

LENGTHS = (8, 12, 20, 30, 45)
SIZES = (1, 2, 4, 8, 16)


def alone(sentences: int, rounds: int) -> None:
    from sentistream.export import data

    texts = data.load(data.default_cache_dir()).part("test")[0][:sentences]
    configs = [(r, t) for r in ("onnxruntime", "openvino") if sessions.installed(r) for t in (1, 2)]
    bundles = {c: Bundle(default_bundle_path(), threads=c[1], runtime=c[0]) for c in configs}
    encodings = bundles[configs[0]].tokenize(texts)
    wall: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
    cpu: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
    for r in range(rounds):
        for i, e in enumerate(encodings):
            for c in configs if (i + r) % 2 else configs[::-1]:
                w, p = time.perf_counter(), time.process_time()
                bundles[c].logits_of([e])
                wall[c].append(time.perf_counter() - w)
                cpu[c].append(time.process_time() - p)
    print(f"one sentence per call, {len(texts)} test-split sentences x {rounds} rounds, interleaved:")
    print(f"{'runtime':<12} {'threads':>7} {'wall mean ms':>12} {'p50':>6} {'p99':>6} {'CPU mean ms':>11}")
    for c in configs:
        w = sorted(x * 1000 for x in wall[c])
        print(f"{c[0]:<12} {c[1]:>7} {statistics.fmean(w):12.2f} {statistics.median(w):6.2f} "
              f"{w[int(0.99 * (len(w) - 1))]:6.2f} {statistics.fmean(cpu[c]) * 1000:11.2f}", flush=True)


def shape(repeats: int) -> None:
    from sentistream.export import data

    bundle = Bundle(default_bundle_path(), threads=1, runtime="onnxruntime")
    by_length = collections.defaultdict(list)
    for e in bundle.tokenize(data.load(data.default_cache_dir()).part("train")[0][:8000]):
        by_length[len(e.ids)].append(e)

    def median_ms(batch: list) -> float:
        spent = []
        for _ in range(repeats):
            started = time.perf_counter()
            bundle.logits_of(batch)
            spent.append(time.perf_counter() - started)
        return statistics.median(spent) * 1000

    print(f"\nonnxruntime, 1 thread: median ms per call of n sentences of L tokens ({repeats} repeats)")
    print(f"{'L':>3} " + " ".join(f"{'n=' + str(n):>8}" for n in SIZES) + f" {'n=1 / (n=16 per sentence)':>27}")
    for length in LENGTHS:
        row = {n: median_ms(by_length[length][:n]) for n in SIZES if len(by_length[length]) >= n}
        ratio = row[1] / (row[16] / 16) if 1 in row and 16 in row else float("nan")
        print(f"{length:3d} " + " ".join(f"{row.get(n, float('nan')):8.2f}" for n in SIZES) + f" {ratio:27.2f}",
              flush=True)


def profile(sentences: int) -> None:
    import onnxruntime as ort

    from sentistream.export import data
    from sentistream.worker.bundle import session_options

    bundle = Bundle(default_bundle_path(), threads=1, runtime="onnxruntime")
    options = session_options(1, bundle.manifest.session_config)
    with tempfile.TemporaryDirectory() as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession((bundle.path / "model.onnx").read_bytes(), options,
                                       providers=["CPUExecutionProvider"])
        encodings = bundle.tokenize(data.load(data.default_cache_dir()).part("test")[0][:sentences])
        for e in encodings:
            session.run(None, bundle.feed([e]))
        events = json.loads(Path(session.end_profiling()).read_text())
    spent: collections.Counter[str] = collections.Counter()
    nodes: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            spent[e["args"]["op_name"]] += e["dur"]
            nodes[e["args"]["op_name"]] += 1
    total = sum(spent.values())
    print(f"\nonnxruntime profiler, {len(encodings)} one-sentence calls: {total / len(encodings) / 1000:.2f} ms of "
          f"kernels and {sum(nodes.values()) / len(encodings):.0f} nodes per call")
    for op, us in spent.most_common(12):
        print(f"{op:<24} {us / total:6.1%} {nodes[op] / len(encodings):5.0f} nodes")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sentistream.bench.call_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--sentences", type=int, default=400, help="test-split sentences timed alone")
    parser.add_argument("--rounds", type=int, default=3, help="passes over them")
    parser.add_argument("--repeats", type=int, default=30, help="repeats per (length, batch size)")
    parser.add_argument("--profile", action="store_true", help="only onnxruntime's profile of one-sentence calls")
    args = parser.parse_args(argv)
    if args.profile:
        profile(min(args.sentences, 200))
        return
    alone(args.sentences, args.rounds)
    shape(args.repeats)


if __name__ == "__main__":
    main()
