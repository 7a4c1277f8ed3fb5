"""What the loader loads is exactly what it hashed (worker/bundle.py): each file is read once, checked,
and the tokenizer, the onnxruntime session and the manifest are built from those bytes; only the
regular files the manifest names, inside the bundle, are read."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from sentistream.worker import bundle as bundle_module
from sentistream.worker.bundle import MANIFEST, Bundle, BundleError, DigestMismatch, Manifest, default_bundle_path
from sentistream.worker.control import manifest_digest
from tests.streams import TEXTS

SHIPPED = default_bundle_path()


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The shipped bundle, its files hard-linked where possible: replace them, never write into them."""
    out = tmp_path / "b"
    out.mkdir()
    for f in SHIPPED.iterdir():
        try:
            os.link(f, out / f.name)
        except OSError:
            shutil.copy2(f, out / f.name)
    return out


def replace(path: Path, data: bytes) -> None:
    """Put ``data`` at ``path`` as a new file (a hard-linked original stays as it was)."""
    partial = path.with_name(path.name + ".new")
    partial.write_bytes(data)
    os.replace(partial, path)


def other_tokenizer() -> bytes:
    """A valid tokenizer.json that tokenizes differently: two vocabulary entries swapped."""
    raw = json.loads((SHIPPED / "tokenizer.json").read_text())
    vocab = raw["model"]["vocab"]
    vocab["acting"], vocab["superb"] = vocab["superb"], vocab["acting"]
    return json.dumps(raw).encode()


def test_files_changed_after_they_were_read_and_checked_are_not_what_loads(copy: Path, monkeypatch) -> None:
    """Each file is swapped on disk right after the loader read it: what loads is what was checked."""
    other_manifest = Manifest.read(copy).model_copy(update={"labels": ["a", "b", "c", "d", "e"]}).to_json()
    swaps = {MANIFEST: json.dumps(other_manifest).encode(), "model.onnx": b"not a model",
             "tokenizer.json": other_tokenizer()}
    real_read = bundle_module.read_regular

    def read_then_swap(path: Path, limit: int) -> bytes:
        data = real_read(path, limit)
        if path.name in swaps:
            replace(path, swaps[path.name])
        return data

    monkeypatch.setattr(bundle_module, "read_regular", read_then_swap)
    loaded = Bundle(copy, manifest_sha256=manifest_digest(SHIPPED))
    monkeypatch.undo()
    shipped = Bundle(SHIPPED)
    assert loaded.labels == shipped.labels and loaded.manifest_sha256 == manifest_digest(SHIPPED)
    assert [e.ids for e in loaded.tokenize(TEXTS)] == [e.ids for e in shipped.tokenize(TEXTS)]
    assert loaded.classify(TEXTS) == shipped.classify(TEXTS)
    with pytest.raises(DigestMismatch):  # the disk did change: loading it now is refused
        Bundle(copy, manifest_sha256=manifest_digest(SHIPPED))


def test_the_session_and_the_tokenizer_are_built_from_bytes(monkeypatch) -> None:
    import onnxruntime
    from tokenizers import Tokenizer

    given: list[type] = []
    real_session = onnxruntime.InferenceSession
    monkeypatch.setattr(onnxruntime, "InferenceSession",
                        lambda model, *a, **k: given.append(type(model)) or real_session(model, *a, **k))
    monkeypatch.setattr(Tokenizer, "from_file", None)  # a path would be read again
    Bundle(SHIPPED)
    assert given == [bytes]


def test_each_listed_file_is_read_once_and_no_other(copy: Path, monkeypatch) -> None:
    (copy / "extra.onnx").write_bytes(b"not listed: never read")
    read: list[str] = []
    real_open = os.open
    monkeypatch.setattr(bundle_module.os, "open", lambda path, *a, **k: read.append(Path(path).name)
                        or real_open(path, *a, **k))
    Bundle(copy)
    assert sorted(read) == sorted([MANIFEST, *Manifest.read(copy).files])
    assert "extra.onnx" not in read


def test_a_bundle_whose_manifest_lists_no_tokenizer_is_refused(copy: Path) -> None:
    m = Manifest.read(copy)
    m.model_copy(update={"files": {k: v for k, v in m.files.items() if k != "tokenizer.json"}}).write(copy)
    with pytest.raises(BundleError, match=r"lists no hash for tokenizer\.json"):
        Bundle(copy)


@pytest.mark.parametrize("name", ["../model.onnx", "/dev/zero", "/etc/passwd", "sub/model.onnx", "..", ".",
                                  "a\\b", "x\u0000y", "x" * 300, MANIFEST])
def test_manifest_file_names_must_stay_inside_the_bundle(copy: Path, name: str) -> None:
    raw = json.loads((copy / MANIFEST).read_text())
    raw["files"][name] = "0" * 64
    replace(copy / MANIFEST, json.dumps(raw).encode())
    with pytest.raises(BundleError, match="not the plain name of a file inside the bundle"):
        Bundle(copy)
    with pytest.raises(BundleError):
        Manifest.read(copy)


@pytest.mark.parametrize("kind", ["device", "fifo", "directory"])
def test_only_regular_files_are_read(copy: Path, kind: str) -> None:
    target = copy / "tokenizer.json"
    target.unlink()
    if kind == "device":
        target.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(target)  # opening it must not wait for a writer
    else:
        target.mkdir()
    with pytest.raises(BundleError, match="is not a regular file"):
        Bundle(copy)


def test_hashes_are_compared_in_any_case(copy: Path) -> None:
    digest = manifest_digest(copy)
    assert Bundle(copy, manifest_sha256=digest.upper()).manifest_sha256 == digest
    with pytest.raises(DigestMismatch):
        Bundle(copy, manifest_sha256="0" * 64)
    m = Manifest.read(copy)
    m.model_copy(update={"files": {k: v.upper() for k, v in m.files.items()}}).write(copy)
    assert Bundle(copy).labels == m.labels


def test_a_manifest_nested_too_deep_is_one_error(copy: Path) -> None:
    replace(copy / MANIFEST, b"[" * 100_000)
    with pytest.raises(BundleError, match="is not a valid manifest"):
        Bundle(copy)
