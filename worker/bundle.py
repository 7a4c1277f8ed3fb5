"""The model bundle: its manifest, load, verify, tokenize, infer (worker/sessions.py runs the model).

A bundle is a directory with ``model.onnx``, ``tokenizer.json`` and ``manifest.json``. The
manifest names the labels (in order), the max length and the model's input names, and holds the
sha256 of every file; a bundle whose hashes or inputs do not match is refused. :class:`Manifest`
reads and writes it; :func:`staged_bundle` writes a bundle so that it appears whole or not at all.

What is loaded is exactly what was hashed: :class:`Bundle` reads each file once into memory,
checks its sha256 and builds the tokenizer and the inference session from those bytes; the
manifest is parsed from the bytes whose hash it checked. The session is onnxruntime's, or another
runtime's that the manifest's ``runtimes`` records as having passed the int8 gate (a manifest
without that field: onnxruntime only); ``auto`` measures which of those is fastest. Only the files the manifest lists are
read, by plain names inside the bundle directory, and only regular files (a device or a FIFO is
refused without being read).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sentistream.worker.sessions import (
    RUNTIMES,
    OnnxruntimeSession,
    OpenvinoSession,
    Session,
    SessionError,
    Signature,
    fastest,
    installed,
)

if TYPE_CHECKING:
    from tokenizers import Encoding

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
DEFAULT_BUNDLE_NAME = "sst5-minilm"
KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
LOADED_FILES = ("model.onnx", "tokenizer.json")  # what the loader builds from; other listed files are only checked
MAX_MANIFEST_BYTES = 1 << 20
MAX_FILE_BYTES = 2 << 30  # protobuf's limit: no ONNX model in one file is larger
# What ``runtime=auto`` times the runtimes on (a bundle ships no texts of its own): a short, a
# middle and a long third, each cycled into one batch of TIMING_BATCH, the worker's default batch.
TIMING_TEXTS = (
    "Great fun.",
    "It is a movie.",
    "The acting is superb.",
    "A dull, lifeless film that never finds its footing.",
    "The plot wanders, but the two leads carry every scene they share.",
    "I laughed twice, checked my watch four times, and left before the credits rolled.",
    "What begins as a sharp satire of office life slowly turns into a warm, patient study of two people who "
    "have forgotten how to ask each other for help.",
    "Even with a running time well past two hours, the film never drags: every subplot pays off, the score "
    "knows when to stay quiet, and the final scene earns its tears without asking for them.",
    "If you can forgive a clumsy first act and a villain whose motives are never quite explained, there is a "
    "clever, generous and often very funny story here about a town that refuses to let its cinema close.",
)
TIMING_BATCH = 32


class BundleError(RuntimeError):
    """The bundle cannot be served; the message is one line saying why."""


class DigestMismatch(BundleError):
    """A bundle file whose sha256 is not the one expected."""


def default_bundle_path() -> Path:
    return Path(str(resources.files("sentistream.worker") / "models" / DEFAULT_BUNDLE_NAME))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def same_digest(a: str, b: str) -> bool:
    """Hex digests compared as numbers: ``ABC…`` and ``abc…`` are the same hash."""
    return a.lower() == b.lower()


def read_regular(path: Path, limit: int) -> bytes:
    """``path``'s whole content, read once, when it is a regular file of at most ``limit`` bytes.
    Anything else (a directory, a device such as /dev/zero, a FIFO, a socket) is refused
    without reading it; a FIFO is opened without waiting for a writer."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise BundleError(f"cannot open {path}: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BundleError(f"{path} is not a regular file")
        if info.st_size > limit:
            raise BundleError(f"{path} is larger than {limit} bytes")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise BundleError(f"{path} grew past {limit} bytes while it was read")
    return data


def check_file_name(name: str) -> str:
    """A manifest's file name: a plain name of a file directly inside the bundle directory."""
    if name in ("", ".", "..", MANIFEST) or any(c in name for c in "/\\\0") or len(name.encode()) > 255:
        raise ValueError(f"{name[:100]!r} is not the plain name of a file inside the bundle")
    return name


class Manifest(BaseModel):
    """``manifest.json``: typed fields for what sentistream reads or writes; any other top-level
    key is kept in ``extra`` and written back as it was. Immutable: change it with
    ``model_copy(update=...)``. Paths of the machine that built the bundle do not belong here
    (record package versions and file hashes instead)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: int = 1
    name: str
    version: str
    task: str = "sequence-classification"
    labels: list[str]
    max_length: int
    inputs: list[str]
    output: str = "logits"
    opset: int | None = None
    precision: str | None = None  # "fp32" or "int8"
    onnxruntime_version: str | None = None  # the version the export was validated with
    source: dict[str, Any] = Field(default_factory=dict)  # the checkpoint: name, file hashes, architecture
    training: dict[str, Any] | None = None  # `export train`'s summary
    files: dict[str, str] = Field(default_factory=dict)  # sha256 of every other file of the bundle
    quantization: dict[str, Any] | None = None  # method and gate figures of an int8 bundle
    session_config: dict[str, str | int | float] = Field(default_factory=dict)  # onnxruntime entries the loader applies
    parity: dict[str, Any] | None = None  # the export's ONNX-vs-PyTorch check
    figures: dict[str, Any] | None = None  # evaluation figures
    # the runtimes whose outputs passed the int8 gate, each with its version, reference and figures
    # (export/runtime_gate.py); None: an older bundle, onnxruntime only
    runtimes: dict[str, dict[str, Any]] | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("files")
    @classmethod
    def _names_stay_inside(cls, files: dict[str, str]) -> dict[str, str]:
        for name in files:
            check_file_name(name)
        return files

    @model_validator(mode="after")
    def _extra_keys_are_not_fields(self) -> Manifest:
        clash = sorted(set(self.extra) & set(type(self).model_fields))
        if clash:
            raise ValueError(f"extra keys {clash} are manifest fields")
        return self

    @classmethod
    def from_json(cls, raw: Any) -> Manifest:
        if not isinstance(raw, dict):
            raise ValueError("the top level is not a JSON object")
        fields = set(cls.model_fields) - {"extra"}
        return cls(**{k: v for k, v in raw.items() if k in fields},
                   extra={k: v for k, v in raw.items() if k not in fields})

    def to_json(self) -> dict[str, Any]:
        return {**self.model_dump(exclude={"extra"}, exclude_none=True), **self.extra}

    @classmethod
    def read(cls, bundle_dir: Path) -> Manifest:
        return cls.parse(read_manifest_bytes(Path(bundle_dir)), Path(bundle_dir) / MANIFEST)

    @classmethod
    def parse(cls, raw: bytes, path: Path) -> Manifest:
        """The manifest in ``raw`` (the bytes of ``path``, named in errors)."""
        try:
            return cls.from_json(json.loads(raw))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "manifest"
            raise BundleError(f"{path} is not a valid manifest: {where}: {first['msg']}") from exc
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise BundleError(f"{path} is not a valid manifest: {str(exc).splitlines()[0][:200]}") from exc

    def write(self, bundle_dir: Path) -> Path:
        """Write ``manifest.json`` into ``bundle_dir`` (replacing it in one rename)."""
        path = Path(bundle_dir) / MANIFEST
        partial = path.with_name(f".{MANIFEST}.{uuid.uuid4().hex[:8]}.partial")
        try:
            partial.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n")
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        return path

    def passed_runtimes(self) -> tuple[str, ...]:
        """The runtimes this bundle may serve on: those that passed its int8 gate."""
        return tuple(self.runtimes) if self.runtimes is not None else ("onnxruntime",)

    def rehashed(self, bundle_dir: Path) -> Manifest:
        """A copy whose ``files`` holds the sha256 of every file in ``bundle_dir`` (the manifest and
        hidden files aside)."""
        files = {f.name: sha256_file(f) for f in sorted(Path(bundle_dir).iterdir())
                 if f.is_file() and f.name != MANIFEST and not f.name.startswith(".")}
        return self.model_copy(update={"files": files})


def read_manifest_bytes(bundle_dir: Path) -> bytes:
    path = bundle_dir / MANIFEST
    try:
        found = bundle_dir.is_dir(), path.exists()
    except OSError as exc:  # e.g. a name too long
        raise BundleError(f"bundle directory {str(bundle_dir)[:300]}: {exc.strerror or exc}") from exc
    if not found[0]:
        raise BundleError(f"bundle directory {bundle_dir} does not exist")
    if not found[1]:
        raise BundleError(f"{bundle_dir} is not a model bundle: no {MANIFEST}")
    return read_regular(path, MAX_MANIFEST_BYTES)


def check_replaceable(out: Path) -> None:
    """Refuse an output path that is a file, a link, or a directory other than a bundle."""
    out = Path(out)
    if out.is_symlink():
        raise BundleError(f"{out} is a symbolic link: give the directory itself as the output")
    if out.exists() and not out.is_dir():
        raise BundleError(f"{out} exists and is not a directory: choose another output")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise BundleError(f"{out} exists and is not a model bundle (no {MANIFEST}): choose another output or remove it")


def publish(src: Path, dst: Path) -> None:
    """Rename the finished bundle directory ``src`` to ``dst`` (same filesystem), replacing an
    earlier bundle there; ``dst`` is never half-written."""
    src, dst = Path(src), Path(dst).absolute()
    check_replaceable(dst)
    if not dst.exists():
        os.rename(src, dst)
        return
    old = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.old")
    os.rename(dst, old)
    try:
        os.rename(src, dst)
    except BaseException:
        os.rename(old, dst)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_bundle(out: Path) -> Iterator[Path]:
    """An empty hidden sibling directory of ``out`` to write a bundle into. When the block ends
    without an error it becomes ``out`` by one rename (replacing an earlier bundle); when the
    block raises, it is removed and ``out`` stays as it was."""
    out = Path(out).absolute()
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.partial")
    stage.mkdir()
    try:
        yield stage
        publish(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # gone already when published


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


def _tokenizer(data: bytes, bundle_dir: Path):
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_buffer(data)
    except Exception as exc:  # tokenizers raises plain Exceptions
        raise BundleError(f"{bundle_dir / 'tokenizer.json'} cannot be loaded: {str(exc)[:200]}") from exc


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Bundle:
    """A verified, loaded bundle: ``logits(texts)`` and ``classify(texts)``.

    ``manifest_sha256``: the sha256 the manifest must have (a control command's), checked on the
    very bytes the manifest is parsed from; :attr:`manifest_sha256` is then the loaded manifest's.
    ``runtime``: ``onnxruntime``, ``openvino`` or ``auto`` (the fastest the bundle passed, measured
    on :data:`TIMING_TEXTS`); a runtime the manifest does not record as passed is refused unless
    ``gated`` is false (the gate itself, measuring a runtime it has not judged yet).
    :attr:`runtime` is the one serving."""

    def __init__(self, path: Path, threads: int = 1, max_tokens: int | None = None,
                 verify: bool = True, providers: list[str] | None = None,
                 manifest_sha256: str | None = None, runtime: str = "onnxruntime", gated: bool = True) -> None:
        self.path = Path(path)
        raw = read_manifest_bytes(self.path)
        self.manifest_sha256 = sha256_bytes(raw)
        if manifest_sha256 is not None and not same_digest(self.manifest_sha256, manifest_sha256):
            raise DigestMismatch(f"{self.path / MANIFEST} has sha256 {self.manifest_sha256[:12]}…, "
                                 f"expected {manifest_sha256.lower()[:12]}…")
        self.manifest = m = Manifest.parse(raw, self.path / MANIFEST)
        for required in LOADED_FILES:
            if required not in m.files:
                raise BundleError(f"manifest of {self.path} lists no hash for {required}")
        unknown = set(m.inputs) - set(KNOWN_INPUTS)
        if unknown:
            raise BundleError(f"manifest input(s) {sorted(unknown)} are not supported")
        runtimes = self._runtimes(runtime, gated)
        blobs = self._read_files(verify)
        self.max_length = min(m.max_length, max_tokens) if max_tokens else m.max_length
        self.tokenizer = _tokenizer(blobs["tokenizer.json"], self.path)
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.tokenizer.no_padding()
        self._counter = _tokenizer(blobs["tokenizer.json"], self.path)  # untruncated: a long text's true length
        self._counter.no_truncation()
        pad_id = self.tokenizer.token_to_id("[PAD]")
        if pad_id is None:
            pad_id = self.tokenizer.token_to_id("<pad>")
        self.pad_id = pad_id or 0
        self.labels = list(m.labels)
        model = blobs.pop("model.onnx")
        sessions = [self._session(r, model, threads, providers) for r in runtimes]
        self.session: Session = sessions[0] if len(sessions) == 1 else self._fastest(sessions, threads)

    @property
    def runtime(self) -> str:
        return self.session.runtime

    def _runtimes(self, runtime: str, gated: bool) -> list[str]:
        """The runtimes to load: the one asked for, or for ``auto`` those the bundle passed that are installed."""
        passed = self.manifest.passed_runtimes()
        if runtime == "auto":
            usable = [r for r in RUNTIMES if r in passed and installed(r)]
            if not usable:
                raise BundleError(f"bundle {self.path} passed the int8 gate on {', '.join(passed)}, "
                                  "none of which is installed")
            return usable
        if runtime not in RUNTIMES:
            raise BundleError(f"unknown runtime {runtime!r}: one of {', '.join(RUNTIMES)} or auto")
        if gated and runtime not in passed:
            raise BundleError(f"bundle {self.path} has not passed the int8 gate on {runtime} (its manifest "
                              f"records {', '.join(passed)}): run sentistream export gate --bundle {self.path} "
                              f"--runtime {runtime}, or serve it on {passed[0]}")
        return [runtime]

    def _read_files(self, verify: bool) -> dict[str, bytes]:
        """The bytes of the files the loader builds from, each read once; with ``verify``, every
        file the manifest lists is read and checked against its hash."""
        names = self.manifest.files if verify else LOADED_FILES
        blobs = {}
        for name in names:
            file = self.path / name
            if not os.path.lexists(file):
                raise BundleError(f"bundle file {file} is missing")
            data = read_regular(file, MAX_FILE_BYTES)
            expected = self.manifest.files[name]
            if verify and not same_digest(actual := sha256_bytes(data), expected):
                raise DigestMismatch(f"{file} does not match its manifest hash "
                                     f"(sha256 {actual[:12]}…, manifest says {expected[:12]}…)")
            if name in LOADED_FILES:
                blobs[name] = data
        return blobs

    def _session(self, runtime: str, model: bytes, threads: int, providers: list[str] | None) -> Session:
        m = self.manifest
        signature = Signature(list(m.inputs), m.output, len(m.labels), str(self.path / "model.onnx"))
        try:
            if runtime == "openvino":
                return OpenvinoSession(model, signature, threads)
            return OnnxruntimeSession(model, signature, session_options(threads, m.session_config), providers)
        except SessionError as exc:
            raise BundleError(str(exc)) from exc

    def _fastest(self, sessions: list[Session], threads: int) -> Session:
        """``auto``: the session with the most sentences per second on batches of :data:`TIMING_TEXTS`."""
        encodings = self.tokenize(list(TIMING_TEXTS))
        by_length = sorted(encodings, key=lambda e: len(e.ids))
        n = len(by_length)  # short, middle and long sentences, each third cycled to a batch of its own
        thirds = [by_length[:n // 3], by_length[n // 3:2 * n // 3], by_length[2 * n // 3:]]
        feeds = [self.feed([part[i % len(part)] for i in range(TIMING_BATCH)]) for part in thirds]
        timing = fastest(sessions, feeds)
        log.info("%s", timing.line(len(feeds), TIMING_BATCH, threads))
        return timing.chosen

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

    # -- inference -----------------------------------------------------------------------------
    def logits(self, texts: list[str]) -> np.ndarray:
        return self.logits_of(self.tokenize(texts))

    def logits_of(self, encodings: list[Encoding]) -> np.ndarray:
        if not encodings:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return self.session.run(self.feed(encodings))

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
