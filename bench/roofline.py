"""The bench's roofline: the work a sentence costs and the CPU it ran on.

- :func:`linear_layers`: multiply-accumulates per token of a model's linear layers, read from its
  ONNX graph (every MatMul, Gemm, MatMulInteger or QLinearMatMul whose weight is an initializer or
  a DequantizeLinear of one: rows × cols of that weight). Attention's activation × activation
  MatMuls are counted apart and not included: their cost per token grows with the padded length.
- :func:`padded_tokens`: the tokens a run really computed (each batch padded to its longest).
- :func:`gops`: 2 × MACs × padded tokens per second, in 1e9.
- :func:`cpu_facts`: model name, core count and int8 features from ``/proc/cpuinfo``'s text.

All pure: a graph, lengths or text in, figures out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WEIGHT_INPUT = {"MatMul": 1, "Gemm": 1, "MatMulInteger": 1, "QLinearMatMul": 3}  # op → index of its B input
INT8_FEATURES = {"avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI"}  # /proc/cpuinfo flag → name shown
AMX_FEATURES = {"amx_int8": "int8", "amx_tile": "tile"}


@dataclass(frozen=True)
class LinearLayers:
    macs_per_token: int  # summed over the counted layers
    counted: int  # MatMul-like nodes with a weight
    activation_matmuls: int  # MatMul-like nodes of two activations (attention's), not counted


def linear_layers(graph: Any) -> LinearLayers:
    """The linear layers of an ``onnx.GraphProto`` (anything with ``.node`` and ``.initializer``)."""
    dims = {init.name: list(init.dims) for init in graph.initializer}
    dequantized = {node.output[0]: node.input[0] for node in graph.node
                   if node.op_type == "DequantizeLinear" and node.input[0] in dims}
    macs, counted, activations = 0, 0, 0
    for node in graph.node:
        if node.op_type not in WEIGHT_INPUT:
            continue
        weight = node.input[WEIGHT_INPUT[node.op_type]]
        shape = dims.get(dequantized.get(weight, weight))
        if shape is None:
            activations += 1
        else:
            macs += math.prod(shape)
            counted += 1
    return LinearLayers(macs, counted, activations)


def bundle_linear_layers(bundle_dir: Path) -> LinearLayers:
    """:func:`linear_layers` of a bundle's ``model.onnx`` (needs onnx, the export extra)."""
    import onnx

    return linear_layers(onnx.load(str(bundle_dir / "model.onnx"), load_external_data=False).graph)


def padded_tokens(batches: Iterable[Sequence[int]]) -> int:
    """Tokens computed for batches given as their sentences' token counts: each batch is padded
    to its longest sentence, so it costs ``len(batch) × max(batch)``."""
    return sum(len(lengths) * max(lengths) for lengths in batches if lengths)


def gops(macs_per_token: int, tokens_per_s: float) -> float:
    """Achieved 1e9 operations per second (a multiply-accumulate is two)."""
    return 2 * macs_per_token * tokens_per_s / 1e9


@dataclass(frozen=True)
class CpuFacts:
    model: str
    cores: int
    flags: frozenset[str]

    def int8(self) -> str:
        """``AVX512-VNNI, AVX-VNNI, AMX: no``; ``no VNNI`` when neither VNNI flag is there."""
        vnni = [name for flag, name in INT8_FEATURES.items() if flag in self.flags] or ["no VNNI"]
        amx = [name for flag, name in AMX_FEATURES.items() if flag in self.flags]
        return ", ".join(vnni) + f", AMX: {' + '.join(amx) if amx else 'no'}"

    def line(self) -> str:
        """``2 × Intel(R) Xeon(R) Processor, int8: AVX512-VNNI, AVX-VNNI, AMX: no``."""
        return f"{self.cores} × {self.model}, int8: {self.int8()}"


def cpu_facts(cpuinfo: str, fallback_model: str = "unknown CPU", fallback_cores: int = 1) -> CpuFacts:
    """From ``/proc/cpuinfo``'s text: the first model name, the processors listed, the flags of the
    first processor (the fallbacks where a field is missing, as on other systems)."""
    model, flags, cores = None, None, 0
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "processor":
            cores += 1
        elif key == "model name" and model is None:
            model = " ".join(value.split())
        elif key == "flags" and flags is None:
            flags = frozenset(value.split())
    return CpuFacts(model or fallback_model, cores or fallback_cores, flags or frozenset())
