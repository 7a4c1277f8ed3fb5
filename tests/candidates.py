"""Candidate bundles for the model-operation tests: the shipped bundle under another version,
reading fewer tokens (7: it disagrees with the shipped 1.3.0 on 1 of tests/streams.py's 5 texts;
the tests check that it disagrees somewhere), or with other labels. Built in seconds
from files on disk, no export needed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sentistream.worker.bundle import MANIFEST, Manifest, default_bundle_path

SHORT = f"{Manifest.read(default_bundle_path()).version}-short"  # the candidates' version by default


def candidate_bundle(out: Path, version: str = SHORT, max_length: int = 7,
                     labels: list[str] | None = None) -> Path:
    """A copy of the shipped bundle (model.onnx hard-linked where possible) whose manifest says
    ``version`` and ``max_length`` (and ``labels``), hashes rewritten."""
    src = default_bundle_path()
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name != MANIFEST:
            try:
                os.link(f, out / f.name)
            except OSError:
                shutil.copy2(f, out / f.name)
    m = Manifest.read(src)
    update = {"version": version, "max_length": max_length, **({"labels": labels} if labels else {})}
    m.model_copy(update=update).rehashed(out).write(out)
    return out
