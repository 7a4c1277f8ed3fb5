"""The model bundle: load, verify, tokenize, infer. The only user of onnxruntime.

A bundle is a directory with ``model.onnx``, ``tokenizer.json`` and ``manifest.json``. The
manifest names the labels (in order), the max length and the model's input names, and holds the
sha256 of every file; a bundle whose hashes or inputs do not match is refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Encoding

MANIFEST = "manifest.json"
DEFAULT_BUNDLE_NAME = "sst5-minilm"
KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class BundleError(RuntimeError):
    """The bundle cannot be served; the message is one line saying why."""


def default_bundle_path() -> Path:
    return Path(str(resources.files("worker") / "models" / DEFAULT_BUNDLE_NAME))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    labels: list[str]
    max_length: int
    inputs: list[str]
    files: dict[str, str]
    output: str = "logits"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, bundle_dir: Path) -> Manifest:
        path = bundle_dir / MANIFEST
        if not bundle_dir.is_dir():
            raise BundleError(f"bundle directory {bundle_dir} does not exist")
        if not path.exists():
            raise BundleError(f"{bundle_dir} is not a model bundle: no {MANIFEST}")
        try:
            raw = json.loads(path.read_text())
            known = {k: raw[k] for k in ("name", "version", "labels", "max_length", "inputs", "files")}
        except (json.JSONDecodeError, KeyError) as exc:
            raise BundleError(f"{path} is not a valid manifest: {exc}") from exc
        extra = {k: v for k, v in raw.items() if k not in known and k != "output"}
        return cls(**known, output=raw.get("output", "logits"), extra=extra)


@dataclass(frozen=True)
class Prediction:
    label: str
    label_id: int
    scores: dict[str, float]


def session_options(threads: int, session_config: dict | None = None):
    """The worker's onnxruntime settings: ``threads`` intra-op, sequential, all graph
    optimizations, no spinning, plus a bundle manifest's ``session_config`` entries."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No busy-waiting between batches: an idle worker should cost ~0 CPU.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for key, value in (session_config or {}).items():  # e.g. fold int8 weights at load
        options.add_session_config_entry(str(key), str(value))
    return options


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Bundle:
    """A verified, loaded bundle: ``logits(texts)`` and ``classify(texts)``."""

    def __init__(self, path: Path, threads: int = 1, max_tokens: int | None = None,
                 verify: bool = True, providers: list[str] | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.path = Path(path)
        self.manifest = Manifest.read(self.path)
        m = self.manifest
        for required in ("model.onnx", "tokenizer.json"):
            if required not in m.files:
                raise BundleError(f"manifest of {self.path} lists no hash for {required}")
        if verify:
            for name, expected in m.files.items():
                file = self.path / name
                if not file.exists():
                    raise BundleError(f"bundle file {file} is missing")
                actual = sha256_file(file)
                if actual != expected:
                    raise BundleError(f"{file} does not match its manifest hash "
                                      f"(sha256 {actual[:12]}…, manifest says {expected[:12]}…)")
        unknown = set(m.inputs) - set(KNOWN_INPUTS)
        if unknown:
            raise BundleError(f"manifest input(s) {sorted(unknown)} are not supported")

        self.max_length = min(m.max_length, max_tokens) if max_tokens else m.max_length
        self.tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.tokenizer.no_padding()
        self._counter = Tokenizer.from_str(self.tokenizer.to_str())  # untruncated: a long text's true length
        self._counter.no_truncation()
        pad_id = self.tokenizer.token_to_id("[PAD]")
        if pad_id is None:
            pad_id = self.tokenizer.token_to_id("<pad>")
        self.pad_id = pad_id or 0

        options = session_options(threads, m.extra.get("session_config", {}))
        try:
            self.session = ort.InferenceSession(
                str(self.path / "model.onnx"), options,
                providers=providers or ["CPUExecutionProvider"],
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BundleError(f"onnxruntime cannot load {self.path / 'model.onnx'}: "
                              f"{str(exc).splitlines()[0]}") from exc
        session_inputs = sorted(i.name for i in self.session.get_inputs())
        if session_inputs != sorted(m.inputs):
            raise BundleError(f"model.onnx takes inputs {session_inputs} but the manifest "
                              f"says {sorted(m.inputs)}")
        outputs = [o.name for o in self.session.get_outputs()]
        if m.output not in outputs:
            raise BundleError(f"model.onnx has no output {m.output!r} (it has {outputs})")
        width = self.session.get_outputs()[outputs.index(m.output)].shape[-1]
        if isinstance(width, int) and width != len(m.labels):
            raise BundleError(f"model.onnx gives {width} scores but the manifest names "
                              f"{len(m.labels)} labels")
        self.labels = list(m.labels)

    # -- tokenization --------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> list[Encoding]:
        """Unpadded encodings (truncated to max length): sort them by ``len(e.ids)`` to batch."""
        return self.tokenizer.encode_batch(texts)

    def token_count(self, text: str) -> int:
        """The text's length in tokens, special tokens included, before truncation."""
        return len(self._counter.encode(text).ids)

    def feed(self, encodings: list[Encoding]) -> dict[str, np.ndarray]:
        """The model's inputs for one batch, padded to its longest encoding."""
        width = max((len(e.ids) for e in encodings), default=1)
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n] = e.ids
            mask[row, :n] = 1
            types[row, :n] = e.type_ids
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: feed[name] for name in self.manifest.inputs}

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        return self.feed(self.tokenize(texts))

    # -- inference -----------------------------------------------------------------------------
    def logits(self, texts: list[str]) -> np.ndarray:
        return self.logits_of(self.tokenize(texts))

    def logits_of(self, encodings: list[Encoding]) -> np.ndarray:
        if not encodings:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return self.session.run([self.manifest.output], self.feed(encodings))[0]

    def classify(self, texts: list[str]) -> list[Prediction]:
        return self.classify_encoded(self.tokenize(texts))

    def classify_encoded(self, encodings: list[Encoding]) -> list[Prediction]:
        probs = softmax(self.logits_of(encodings).astype(np.float64))
        out = []
        for row in probs:
            best = int(row.argmax())
            out.append(Prediction(self.labels[best], best,
                                  {label: round(float(p), 6) for label, p in zip(self.labels, row, strict=True)}))
        return out

    def info(self) -> dict[str, str]:
        return {"name": self.manifest.name, "version": self.manifest.version,
                "sha256": self.manifest.files["model.onnx"]}
