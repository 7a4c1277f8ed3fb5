"""The bench's pure parts: the roofline (MACs from a graph, padded tokens, GOPS, the CPU's int8
features), the header line bench.md starts with, and the tables it writes from measured rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from sentistream.bench.roofline import CpuFacts, LinearLayers, cpu_facts, gops, linear_layers, padded_tokens
from sentistream.bench.run import Row, roofline_line, throughput_table, timed_batches
from sentistream.bench.run_header import Header, bench_command, parse_header, shown_path

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R)   Processor
flags\t\t: fpu sse avx2 avx512f avx512_vnni avx_vnni
processor\t: 1
model name\t: Intel(R) Xeon(R)   Processor
flags\t\t: fpu sse avx2 avx512f avx512_vnni avx_vnni
"""


def test_linear_layers_count_weights_and_set_activation_matmuls_apart() -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(np.zeros(shape, np.int8 if name.endswith("q") else np.float32), name)

    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"]),  # a weight as it is: 8 × 4
        helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["w_dq"]),
        helper.make_node("MatMul", ["a", "w_dq"], ["b"]),  # a dequantized weight: 4 × 3
        helper.make_node("Gemm", ["b", "g"], ["c"], transB=1),  # 5 × 3 (transposed)
        helper.make_node("MatMulInteger", ["c8", "mq"], ["d"]),  # 5 × 2
        helper.make_node("QLinearMatMul", ["d8", "s", "z", "qq", "s", "z", "s", "z"], ["e"]),  # 2 × 7
        helper.make_node("MatMul", ["q", "k"], ["scores"]),  # two activations: attention's
        helper.make_node("Add", ["e", "w"], ["f"]),  # not a matmul
    ]
    graph = helper.make_graph(nodes, "g", [], [], [init("w", 8, 4), init("wq", 4, 3), init("g", 5, 3),
                                                 init("mq", 5, 2), init("qq", 2, 7), init("s"), init("z")])
    assert linear_layers(graph) == LinearLayers(8 * 4 + 4 * 3 + 5 * 3 + 5 * 2 + 2 * 7, counted=5, activation_matmuls=1)


def test_shipped_bundle_has_minilm_l6s_linear_layers() -> None:
    """6 layers × (4 projections of 384 × 384 + the FFN's 384 × 1536 and 1536 × 384), and the
    classifier's 5 × 384: 10.62 M MACs per token (#27 said about 10.8 M); 12 attention matmuls."""
    pytest.importorskip("onnx")
    from sentistream.bench.roofline import bundle_linear_layers
    from sentistream.worker.bundle import default_bundle_path

    layers = bundle_linear_layers(default_bundle_path())
    assert layers == LinearLayers(6 * (4 * 384 * 384 + 2 * 384 * 1536) + 5 * 384, counted=37, activation_matmuls=12)
    assert 10.5e6 < layers.macs_per_token < 10.9e6


def test_padded_tokens_pad_each_batch_to_its_longest() -> None:
    assert padded_tokens([[3, 5, 4], [2], []]) == 3 * 5 + 2
    assert padded_tokens([]) == 0


def test_gops_counts_a_multiply_accumulate_as_two_operations() -> None:
    assert gops(10_000_000, 1000.0) == pytest.approx(20.0)


@dataclass
class _Encoding:
    ids: list[int]


class _CountingBundle:
    """Tokens are words; records the batches it was given."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def tokenize(self, texts: list[str]) -> list[_Encoding]:
        return [_Encoding(list(range(len(t.split())))) for t in texts]

    def classify_encoded(self, batch: list[_Encoding]) -> None:
        self.batches.append([len(e.ids) for e in batch])


def test_timed_batches_count_the_padded_tokens_of_the_batches_run() -> None:
    bundle = _CountingBundle()
    texts = ["a " * n for n in (1, 5, 2, 6, 1, 9, 3, 3)]
    timing = timed_batches(bundle, texts, window=4, batch_size=2, tolerance=1)  # type: ignore[arg-type]
    assert timing.sentences == len(texts)
    assert timing.padded_tokens == padded_tokens(bundle.batches) == sum(len(b) * max(b) for b in bundle.batches)
    assert sum(len(b) for b in bundle.batches) == len(texts)


def test_cpu_facts_name_the_int8_features_and_say_when_there_is_no_amx() -> None:
    cpu = cpu_facts(CPUINFO)
    assert cpu == CpuFacts("Intel(R) Xeon(R) Processor", 2, cpu.flags)
    assert cpu.line() == "2 × Intel(R) Xeon(R) Processor, int8: AVX512-VNNI, AVX-VNNI, AMX: no"
    amx = cpu_facts(CPUINFO.replace("avx_vnni", "amx_tile amx_int8"))
    assert amx.int8() == "AVX512-VNNI, AMX: int8 + tile"
    assert cpu_facts(CPUINFO.replace(" avx512_vnni avx_vnni", "")).int8() == "no VNNI, AMX: no"
    assert cpu_facts("", "arm64", 8) == CpuFacts("arm64", 8, frozenset())


def test_header_line_parses_back() -> None:
    header = Header("sentistream bench --quick", "2026-12-03", cpu_facts(CPUINFO).line(), "sst5-minilm", "1.3.0")
    assert parse_header(f"intro\n\n{header.line()}\n\n| table |") == header
    assert parse_header("`sentistream bench` on 2026-12-03, bundle sst5-minilm 1.3.0") is None


def test_bench_command_names_the_options_given_without_this_machines_paths(tmp_path: Path) -> None:
    options = {"--bootstrap": None, "-n": 2000, "--quick": False, "--fp32-bundle": tmp_path / "out" / "fp32",
               "--checkpoint": Path("/elsewhere/ckpt"), "--out": None}
    assert bench_command(options, tmp_path) == "sentistream bench -n 2000 --fp32-bundle out/fp32 --checkpoint .../ckpt"
    assert bench_command({"--quick": True}, tmp_path) == "sentistream bench --quick"
    assert shown_path(Path("out/x"), tmp_path) == "out/x"


def _rows() -> list[Row]:
    return [Row("bare onnxruntime, int8, 1 thread (limit)", 400.0, kind="bare", precision="int8",
                padded_per_sentence=25.0),
            Row("sentistream worker (onnxruntime), int8, 1 process × 1 thread", 360.0, kind="worker", precision="int8"),
            Row("bare openvino, int8, 1 thread", 500.0, runtime="openvino", kind="bare", precision="int8",
                padded_per_sentence=25.0),
            Row("sentistream worker (openvino), int8, 1 process × 1 thread", 450.0, runtime="openvino", kind="worker",
                precision="int8"),
            Row("bare onnxruntime, int8, 2 threads", 700.0, kind="bare", precision="int8", cores=2,
                padded_per_sentence=25.0),
            Row("naive peer", 100.0)]


def test_throughput_table_gives_gops_per_core_on_the_int8_rows() -> None:
    rows = _rows()
    lines = throughput_table(rows, rows[-1], LinearLayers(10_000_000, 37, 12))
    assert lines[0] == ("| configuration | messages/s | per core | × bare onnxruntime 1 thread | × naive peer | "
                        "int8 GOPS per core, linear layers |")
    # 400 sentences/s × 25 padded tokens × 10 M MACs × 2 = 200 GOPS; a worker on its runtime's bare tokens
    assert lines[2] == "| bare onnxruntime, int8, 1 thread (limit) | 400 | 400 | 1.00 | 4.0 | 200 |"
    assert lines[3] == "| sentistream worker (onnxruntime), int8, 1 process × 1 thread | 360 | 360 | 0.90 | 3.6 | 180 |"
    assert lines[4] == "| bare openvino, int8, 1 thread | 500 | 500 | 1.25 | 5.0 | 250 |"
    assert lines[6] == "| bare onnxruntime, int8, 2 threads | 700 | 350 | 1.75 | 7.0 | 175 |"
    assert lines[7] == "| naive peer | 100 | 100 | 0.25 | 1.0 | – |"


def test_roofline_line_says_how_and_gives_the_ratio_of_runtimes_per_core() -> None:
    line = roofline_line(_rows(), LinearLayers(10_000_000, 37, 12), cpu_facts(CPUINFO))
    assert line.startswith("GOPS = 2 × 10.00 M multiply-accumulates per token in the linear layers (37 MatMul/Gemm")
    assert "12 activation × activation MatMuls" in line and "× 25.0 padded tokens per sentence" in line
    assert "int8 features: AVX512-VNNI, AVX-VNNI, AMX: no." in line
    assert line.endswith(" openvino / onnxruntime per core: bare 1 thread 1.25×, worker 1 × 1 1.25×.")
    one_runtime = [r for r in _rows() if r.runtime == "onnxruntime"]
    assert "per core:" not in roofline_line(one_runtime, LinearLayers(1, 1, 0), cpu_facts(CPUINFO))


class _Manifest:
    def __init__(self, *passed: str) -> None:
        self.passed = passed

    def passed_runtimes(self) -> tuple[str, ...]:
        return self.passed


def test_the_bench_measures_the_runtimes_the_bundle_passed_that_are_installed(monkeypatch) -> None:
    from sentistream.bench import run

    monkeypatch.setattr(run, "installed", lambda runtime: True)
    assert run.measured_runtimes(_Manifest("openvino", "onnxruntime")) == ["onnxruntime", "openvino"]
    assert run.measured_runtimes(_Manifest("onnxruntime")) == ["onnxruntime"]
    monkeypatch.setattr(run, "installed", lambda runtime: runtime == "onnxruntime")
    assert run.measured_runtimes(_Manifest("onnxruntime", "openvino")) == ["onnxruntime"]


def test_setup_and_latency_line_is_one_line_without_paths() -> None:
    from sentistream.bench.run import setup_and_latency_line

    latencies = [{0.5: 0.0099, 0.95: 0.1717, 0.99: 0.2344, "rate": 62.7, "share": 0.25, "n": 313},
                 {0.5: 0.06, 0.95: 0.3549, 0.99: 0.471, "rate": 125.4, "share": 0.5, "n": 1627}]
    line = setup_and_latency_line(4000, ["onnxruntime", "openvino"], latencies, 0.004)
    assert line.startswith("4,000 sentences of the fixed test split") and "\n" not in line and "/work" not in line
    assert "onnxruntime 1" in line and "openvino 2" in line
    assert ("9.9 / 171.7 / 234.4 ms at 63 msgs/s (25 % of its peak, 313 messages); 60.0 / 354.9 / 471.0 ms at "
            "125 msgs/s (50 % of its peak, 1,627 messages); ready and idle, 0.40 % of one core.") in line


def _readme_section(heading: str) -> str:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_readme_performance_is_one_bench_run_of_the_shipped_bundle() -> None:
    """README's figures come from one `sentistream bench` run, named by its header line: figures
    from another bundle (its name or version not the shipped manifest's) fail here."""
    import datetime
    import re

    from sentistream.worker.bundle import Manifest, default_bundle_path

    section = _readme_section("## Performance")
    header = parse_header(section)
    assert header is not None, "README's Performance section has no `sentistream bench` header line"
    manifest = Manifest.read(default_bundle_path())
    assert (header.bundle, header.version) == (manifest.name, manifest.version)
    assert header.command.split()[:2] == ["sentistream", "bench"]
    datetime.date.fromisoformat(header.day)
    assert re.fullmatch(r"\d+ × .+, int8: .*(VNNI).*, AMX: .+", header.cpu)
    assert not re.search(r"(?<![\w.])/(home|root|tmp|work|Users|usr|var|opt|mnt)/", section)


def test_turn_trace_cuts_each_latency_into_fetch_held_compute_publish() -> None:
    from sentistream.bench.turn_trace import report, segments

    # message a: sent at 1000 ms, polled at 1010, classified 1012-1030, appended at 1034
    # message b: sent at 1005, polled with a, classified in the same call, appended at 1036
    run = {"rate": 2.0, "sent": {"a": 1000.0, "b": 1005.0}, "arrived": {"a": 1034.0, "b": 1036.0},
           "where": {(0, 7): "a", (1, 3): "b"},
           "events": [["poll", 1.0, 1.010, 0.0, 0.0001, {"timeout_ms": 500, "records": [[0, 7], [1, 3]]}],
                      ["handle", 1.012, 1.030, 0.0001, 0.017, [[0, 7], [1, 3]]],
                      ["control", 1.0301, 1.0302, 0.017, 0.0171, None]]}
    per = segments(run)
    assert per["a"] == pytest.approx({"latency": 34.0, "fetch": 10.0, "held": 2.0, "compute": 18.0, "publish": 4.0,
                                      "sent": 1000.0})
    assert per["b"]["fetch"] == pytest.approx(5.0) and per["b"]["publish"] == pytest.approx(6.0)
    text = report(run)
    assert text.startswith("offered 2 msg/s; 2/2 messages joined")
    assert "handle" in text and "control" in text


def test_call_cost_times_one_sentence_per_call_on_each_installed_runtime_and_thread_count(capsys) -> None:
    from sentistream.bench import call_cost
    from sentistream.worker import sessions

    call_cost.alone(sentences=3, rounds=1)
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    installed = [r for r in ("onnxruntime", "openvino") if sessions.installed(r)]
    assert [(r[0], r[1]) for r in rows] == [(r, t) for r in installed for t in ("1", "2")]
    assert all(float(r[2]) > 0 and float(r[5]) >= 0 for r in rows)


def test_dequantized_folds_weight_dequantizers_and_bypasses_activation_pairs() -> None:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from sentistream.bench.attention_fusion import dequantized

    w = np.array([[1, -2], [3, 4]], dtype=np.int8)
    inits = [numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(np.array([0.5, 0.25], np.float32), "w_s"),
             numpy_helper.from_array(np.zeros(2, np.int8), "w_z"),
             numpy_helper.from_array(np.array(0.1, np.float32), "a_s"),
             numpy_helper.from_array(np.array(128, np.uint8), "a_z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "a_s", "a_z"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "a_s", "a_z"], ["x_dq"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], axis=1),
             helper.make_node("MatMul", ["x_dq", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], inits)
    model = dequantized(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert [n.op_type for n in model.graph.node] == ["MatMul"]
    x = np.array([[0.37, -1.21]], np.float32)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x @ (w.astype(np.float32) * [0.5, 0.25]), rtol=1e-6)
    onnx.checker.check_model(model)
