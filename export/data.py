"""The default model's data: VADER's movie-review ground truth, five SST classes, a fixed split.

The sentences come from the *source* distribution of ``vaderSentiment==3.3.2`` on PyPI (the
wheel leaves them out). They are fetched with pip at training time, verified by sha256, and
never committed. See docs/model-card.md.
"""

from __future__ import annotations

import hashlib
import io
import json
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
# The archive's other crowd-rated sets (same -4 … +4 scale, other domains): text for distillation.
OTHER_FILES = {
    "amazon": ("hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt",
               "11a9807a0974a2506a2d3b4851eaf69b3d6d20688ce4923adda2312a4f6dd6c2"),
    "nyt": ("hutto_ICWSM_2014/nytEditorialSnippets_GroundTruth.txt",
            "7d8fbcce7dde5d716da53e78f4ef4be6b706e9ef1e1d51887e6d0ad4b69cc27e"),
    "tweets": ("hutto_ICWSM_2014/tweets_GroundTruth.txt",
               "dfbe7102e2f92579ed8b19df9a3822491880697c67adf712fb66e520cc05102f"),
}

# What a teacher labels beside the train split, and what the student learns from by default (export/distill.py)
TRANSFER_SOURCES = (*OTHER_FILES, "fragments", "spans")

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
    label_names: tuple[str, ...] = LABELS

    def part(self, name: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        idx = getattr(self, name)
        return [self.texts[i] for i in idx], self.labels[idx], self.ratings[idx]


def normalise(text: str) -> str:
    """The key by which two texts are the same sentence: case and spacing ignored (how held-out
    sentences are kept out of what a model learns from)."""
    return " ".join(text.lower().split())


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


def read_ground_truth(sdist: Path, member: str = MOVIE_FILE, sha256: str = MOVIE_SHA256) -> bytes:
    """One of the crowd-rated files inside the sdist's inner archive, verified."""
    with tarfile.open(sdist) as outer:
        inner_member = next((m for m in outer.getmembers() if m.name.endswith(INNER_ARCHIVE)), None)
        if inner_member is None:
            raise DataError(f"{sdist.name} has no {INNER_ARCHIVE}")
        inner_bytes = outer.extractfile(inner_member).read()  # type: ignore[union-attr]
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        raw = inner.extractfile(member).read()  # type: ignore[union-attr]
    if _sha256(raw) != sha256:
        raise DataError(f"{member} does not match its published sha256 {sha256}")
    return raw


def read_movie_file(sdist: Path) -> bytes:
    return read_ground_truth(sdist)


def load_other_sets(cache_dir: Path) -> dict[str, tuple[list[str], np.ndarray]]:
    """The archive's amazon, nyt and tweets sets: texts and crowd ratings (-4 … +4)."""
    sdist = fetch_sdist(cache_dir)
    return {name: parse_movie_file(read_ground_truth(sdist, member, sha))
            for name, (member, sha) in OTHER_FILES.items()}


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


def read_rows(path: Path) -> list[tuple[int, str, object]]:
    """JSON lines ``{"text": str, "label": ...}`` as (line number, text, label); blank lines skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text") from exc
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not JSON ({exc.msg})") from exc
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or "label" not in row:
            raise DataError(f'{path}:{number}: expected an object {{"text": "...", "label": ...}}')
        rows.append((number, row["text"], row["label"]))
    return rows


def load_jsonl(train_path: Path, validation_path: Path | None = None,
               label_names: list[str] | None = None) -> Dataset:
    """A user's labelled data as a Dataset (no test part, no ratings). Labels are names (numbers
    are read as their text); their order is ``label_names`` where given, else the order of first
    appearance in the training file. Without a validation file, a stratified 10 % of the
    training file (at least one text per label; seed 0) chooses the epoch."""
    train_rows = read_rows(train_path)
    val_rows = read_rows(validation_path) if validation_path else []
    names = [n.strip() for n in label_names] if label_names else list(dict.fromkeys(str(r[2]) for r in train_rows))
    if len(set(names)) != len(names):
        raise DataError(f"label names repeat: {', '.join(names)}")
    index = {name: i for i, name in enumerate(names)}
    if len(names) < 2:
        raise DataError(f"{train_path}: training needs at least two labels, found {names}")
    texts, ids = [], []
    for path, rows in ((train_path, train_rows), (validation_path, val_rows)):
        for number, text, label in rows:
            if str(label) not in index:
                raise DataError(f"{path}:{number}: label {label!r} is not one of {', '.join(names)}")
            texts.append(text)
            ids.append(index[str(label)])
    y = np.asarray(ids, dtype=np.int64)
    n_train = len(train_rows)
    if len(train_rows) < 10:
        raise DataError(f"{train_path} holds {n_train} labelled texts; training needs at least 10")
    if validation_path:
        train, validation = np.arange(n_train), np.arange(n_train, len(texts))
        if not len(validation):
            raise DataError(f"{validation_path} holds no labelled texts")
    else:
        from sklearn.model_selection import train_test_split

        y_train = y[:n_train]
        counts = np.bincount(y_train, minlength=len(names))
        size = max(round(0.1 * n_train), int((counts > 0).sum()))  # room for one text of each label
        try:
            train, validation = train_test_split(np.arange(n_train), test_size=size, stratify=y_train,
                                                 random_state=SEED)
        except ValueError:  # a label with a single text, or too few texts to stratify: a plain split
            train, validation = train_test_split(np.arange(n_train), test_size=size, random_state=SEED)
    return Dataset(texts, np.full(len(texts), np.nan), y, np.sort(train), np.sort(validation),
                   np.arange(0), tuple(names))


def split_sha256(dataset: Dataset) -> str:
    """Names the split (which rows are train, validation, test): teacher labels record it."""
    digest = hashlib.sha256()
    for part in (dataset.train, dataset.validation, dataset.test):
        digest.update(np.asarray(part, dtype=np.int64).tobytes() + b"|")
    return digest.hexdigest()
