"""Inference sessions: a bundle's ``model.onnx`` run by one runtime, behind one small interface.

:class:`Session` is what the bundle's classify path calls: ``run(feeds) -> logits``. Two
runtimes implement it on the very same bytes (the QDQ int8 ``model.onnx`` the manifest hashes):

- ``onnxruntime`` (:class:`OnnxruntimeSession`), the default and a dependency of the runtime;
- ``openvino`` (:class:`OpenvinoSession`), the optional extra ``sentistream[openvino]``, imported
  only when it is asked for. Its CPU plugin is pinned to fp32 for whatever the model does not
  quantize (its default is bf16 where the CPU has it, which would change the numbers the int8
  gate measured), and to no thread pinning (several worker processes share one host).

A bundle serves on a runtime only when its manifest records that the runtime passed the int8 gate
(worker/bundle.py; ``sentistream export gate``). :func:`fastest` is the ``auto`` setting's
measurement: interleaved rounds of the same batches on each session, bounded in time.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

Runtime = Literal["onnxruntime", "openvino"]
RUNTIMES: tuple[Runtime, ...] = ("onnxruntime", "openvino")
EXTRA = {"openvino": "sentistream[openvino]"}  # where a runtime that is not a dependency comes from
AUTO_BUDGET_S = 2.0  # auto: no round starts that would end past this (at least one runs), nor after AUTO_ROUNDS
AUTO_ROUNDS = 5


class SessionError(RuntimeError):
    """The runtime cannot load or serve the model; the message is one line."""


@dataclass(frozen=True)
class Signature:
    """What the manifest says the model takes and gives, checked against what the runtime loaded."""

    inputs: list[str]
    output: str
    width: int  # scores per sentence: the number of labels
    where: str  # the model file, for messages


class Session(Protocol):
    runtime: Runtime

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The model's ``signature.output`` for one batch of inputs."""
        ...


def installed(runtime: str) -> bool:
    return runtime == "onnxruntime" or importlib.util.find_spec(runtime) is not None


def version(runtime: Runtime) -> str:
    """The installed version of ``runtime`` (what the manifest records beside its gate figures)."""
    if runtime == "onnxruntime":
        import onnxruntime

        return onnxruntime.__version__
    import openvino

    return openvino.__version__.split("-")[0]


def check_signature(signature: Signature, inputs: list[str], outputs: list[str], width: object) -> None:
    """Refuse a model whose inputs, output or score width are not the manifest's."""
    if sorted(inputs) != sorted(signature.inputs):
        raise SessionError(f"{signature.where} takes inputs {sorted(inputs)} but the manifest "
                           f"says {sorted(signature.inputs)}")
    if signature.output not in outputs:
        raise SessionError(f"{signature.where} has no output {signature.output!r} (it has {outputs})")
    if isinstance(width, int) and width != signature.width:
        raise SessionError(f"{signature.where} gives {width} scores but the manifest names "
                           f"{signature.width} labels")


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class OnnxruntimeSession:
    runtime: Runtime = "onnxruntime"

    def __init__(self, model: bytes, signature: Signature, options, providers: list[str] | None = None) -> None:
        """``options``: onnxruntime SessionOptions (worker/bundle.py ``session_options``)."""
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(model, options, providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise SessionError(f"onnxruntime cannot load {signature.where}: {_first_line(exc)}") from exc
        outputs = [o.name for o in self.session.get_outputs()]
        width = self.session.get_outputs()[outputs.index(signature.output)].shape[-1] \
            if signature.output in outputs else None
        check_signature(signature, [i.name for i in self.session.get_inputs()], outputs, width)
        self.output = signature.output

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([self.output], feeds)[0]


class OpenvinoSession:
    runtime: Runtime = "openvino"

    def __init__(self, model: bytes, signature: Signature, threads: int) -> None:
        if not installed("openvino"):
            raise SessionError(f"runtime openvino is not installed: pip install '{EXTRA['openvino']}'")
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": False}
        try:
            loaded = core.read_model(model, ov.Tensor(type=ov.Type.u8, shape=[0]))
            self.compiled = core.compile_model(loaded, "CPU", config)
        except Exception as exc:  # openvino raises plain RuntimeErrors
            raise SessionError(f"openvino cannot load {signature.where}: {_first_line(exc)}") from exc
        outputs = [name for o in self.compiled.outputs for name in o.get_names()]
        width = None
        if signature.output in outputs:
            last = self.compiled.output(signature.output).get_partial_shape()[-1]
            width = last.get_length() if last.is_static else None
        check_signature(signature, [i.get_any_name() for i in self.compiled.inputs], outputs, width)
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output(signature.output)
        self._lock = threading.Lock()  # one infer request: one batch at a time

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        with self._lock:
            return self.request.infer(feeds)[self.output].copy()


@dataclass(frozen=True)
class Timing:
    """What :func:`fastest` measured: sentences per second per runtime, over ``rounds`` rounds."""

    chosen: Session
    rates: dict[str, float]
    rounds: int
    seconds: float

    def line(self, batches: int, batch_size: int, threads: int) -> str:
        figures = ", ".join(f"{runtime} {rate:,.0f}" for runtime, rate in
                            sorted(self.rates.items(), key=lambda kv: -kv[1]))
        return (f"runtime auto: {self.chosen.runtime} ({figures} sentences/s; {self.rounds} interleaved rounds of "
                f"{batches} batches of {batch_size}, {threads} thread(s), {self.seconds:.1f} s)")


def fastest(sessions: list[Session], feeds: list[dict[str, np.ndarray]], budget_s: float = AUTO_BUDGET_S,
            rounds: int = AUTO_ROUNDS, clock=time.perf_counter) -> Timing:
    """The session with the most sentences per second on ``feeds``: one warm-up pass each, then
    rounds in which every session runs every batch (the order alternating), up to ``rounds`` rounds
    and while the next round, as long as the last one, would end within ``budget_s`` seconds of the
    start (at least one round)."""
    started = clock()
    for session in sessions:
        session.run(feeds[0])
    spent = {s.runtime: 0.0 for s in sessions}
    sentences = sum(len(next(iter(f.values()))) for f in feeds)
    done, last = 0, 0.0
    while done < rounds and (done == 0 or clock() - started + last <= budget_s):
        round_started = clock()
        for session in sessions if done % 2 == 0 else sessions[::-1]:
            t = clock()
            for feed in feeds:
                session.run(feed)
            spent[session.runtime] += clock() - t
        last = clock() - round_started
        done += 1
    rates = {runtime: done * sentences / max(seconds, 1e-9) for runtime, seconds in spent.items()}
    best = max(sessions, key=lambda s: rates[s.runtime])
    return Timing(best, rates, done, clock() - started)
