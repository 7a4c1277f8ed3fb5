"""Distillation study on a GPU machine: teacher learning rates, then student recipes, each in its
own process (one GPU holds them all; the small student is bound by Python, not the GPU).

    python -m sentistream.bench.distill_study --teacher DIR --student DIR --data-cache DIR --out DIR

``--teacher``/``--student``: checkpoint directories of all-mpnet-base-v2 and all-MiniLM-L6-v2;
``--data-cache``: a directory holding ``vaderSentiment-3.3.2.tar.gz`` (``export/data.py``). The
teacher is chosen on validation (accuracy + macro-F1), the students learn from its labels, and
every figure is printed; test figures are reported, never used to choose. Writes ``study.json``
and the chosen teacher's labels (``teacher.npz``, what ``export train --teacher-labels`` reads).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

from sentistream.export import data as data_mod

TEACHER_LRS = (2e-5, 3e-5, 5e-5)
RATED = tuple(data_mod.OTHER_FILES)
ALL = (*data_mod.OTHER_FILES, "fragments")  # "all" when the study ran; spans came later
STUDENTS = {
    "crowd only (shipped recipe)": {},  # shipped when the study ran; now the crowd recipe (export/train.py)
    "kd a.5 T1 train only": {"distill_weight": 0.5, "temperature": 1.0, "transfer_sources": ()},
    "kd a.5 T1 +rated": {"distill_weight": 0.5, "temperature": 1.0, "transfer_sources": RATED},
    "kd a.5 T1 +fragments": {"distill_weight": 0.5, "temperature": 1.0, "transfer_sources": ("fragments",)},
    "kd a.5 T1 +all": {"distill_weight": 0.5, "temperature": 1.0, "transfer_sources": ALL},
    "kd a.5 T2 +all": {"distill_weight": 0.5, "temperature": 2.0, "transfer_sources": ALL},
    "kd a.9 T1 +all": {"distill_weight": 0.9, "temperature": 1.0, "transfer_sources": ALL},
    "kd a.5 T1 +all seed 1": {"distill_weight": 0.5, "temperature": 1.0, "transfer_sources": ALL, "seed": 1},
}


def _dataset(args):
    """The fixed split; with ``--smoke`` a few hundred sentences of it (a check of the plumbing)."""
    from sentistream.export import data as data_mod

    dataset = data_mod.load(Path(args.data_cache))
    if args.smoke:
        dataset = dataclasses.replace(dataset, train=dataset.train[:300], validation=dataset.validation[:100],
                                      test=dataset.test[:100])
    return dataset


def _figures(model, tokenizer, dataset, cfg) -> dict:
    from sentistream.export.scores import classification_figures
    from sentistream.export.train import device_of, predict_logits

    out = {}
    for part in ("validation", "test"):
        texts, y, _ = dataset.part(part)
        logits = predict_logits(model.to(device_of(cfg.device)), tokenizer, texts, cfg.max_length)
        figures = classification_figures(y, logits.argmax(1), len(dataset.label_names))
        out[part] = {k: round(v, 4) for k, v in figures.items() if k != "confusion"}
    return out


def run_teacher(args) -> None:
    from sentistream.export import distill
    from sentistream.export.train import recipe

    dataset = _dataset(args)
    cfg = recipe("teacher", base_model=args.teacher, out_dir=Path(args.out), epochs=args.epochs,
                 learning_rate=args.lr, device=args.device, threads=2)
    labels = distill.label(cfg, dataset, Path(args.data_cache), progress=False)
    labels.save(Path(args.out) / f"teacher-{args.lr:g}.npz")
    (Path(args.out) / f"teacher-{args.lr:g}.json").write_text(json.dumps(labels.describe(), indent=2))


def run_student(args) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from sentistream.export.pooling import apply_from_config
    from sentistream.export.teacher_labels import TeacherLabels
    from sentistream.export.train import recipe, train

    dataset = _dataset(args)
    out = Path(args.out) / f"student-{list(STUDENTS).index(args.name)}"
    # each student: the crowd recipe (no teacher) changed as STUDENTS says
    cfg = recipe("crowd", base_model=args.student, out_dir=out, epochs=1 if args.smoke else None, device=args.device,
                 threads=2, **STUDENTS[args.name])
    teacher = TeacherLabels.load(Path(args.out) / "teacher.npz") if cfg.distill_weight else None
    summary = train(cfg, dataset, progress=False, teacher=teacher)
    model = AutoModelForSequenceClassification.from_pretrained(out / "checkpoint")
    apply_from_config(model)
    summary["figures"] = _figures(model, AutoTokenizer.from_pretrained(out / "checkpoint"), dataset, cfg)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


def _parallel(commands: list[list[str]], logs: Path, phase: str) -> None:
    procs = []
    for i, cmd in enumerate(commands):
        log = (logs / f"log-{phase}-{i}.txt").open("w")
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
    failed = [c for c, p in zip(commands, procs, strict=True) if p.wait() != 0]
    if failed:
        print(f"{len(failed)} runs failed: {failed}", flush=True)


def main(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    me = [sys.executable, "-m", "sentistream.bench.distill_study", "--teacher", args.teacher, "--student",
          args.student, "--data-cache", args.data_cache, "--out", args.out, "--device", args.device,
          *(["--smoke"] if args.smoke else [])]
    started = time.perf_counter()
    _parallel([[*me, "--role", "teacher", "--lr", str(lr), "--epochs", str(args.epochs)] for lr in TEACHER_LRS], out,
              "teacher")
    teachers = {lr: json.loads((out / f"teacher-{lr:g}.json").read_text())
                for lr in TEACHER_LRS if (out / f"teacher-{lr:g}.json").exists()}
    print(f"teachers ({time.perf_counter() - started:.0f} s):", flush=True)
    for lr, t in teachers.items():
        print(f"  lr {lr:g}: best epoch {t['best_epoch']}, {t['figures']}, {t['train_seconds']} s", flush=True)
    if not teachers:
        raise SystemExit(f"every teacher run failed: see {out}/log-teacher-*.txt")
    best = max(teachers, key=lambda lr: sum(teachers[lr]["figures"]["validation"].values()))
    (out / "teacher.npz").write_bytes((out / f"teacher-{best:g}.npz").read_bytes())
    print(f"chosen on validation: lr {best:g}", flush=True)
    started = time.perf_counter()
    _parallel([[*me, "--role", "student", "--name", name] for name in STUDENTS], out, "student")
    students = {}
    for i, name in enumerate(STUDENTS):
        path = out / f"student-{i}" / "summary.json"
        if path.exists():
            s = json.loads(path.read_text())
            students[name] = {k: s[k] for k in ("history", "best_epoch", "examples", "figures", "train_seconds")}
            print(f"  {name}: epoch {s['best_epoch']}, {s['figures']}, {s['train_seconds']} s", flush=True)
    print(f"students: {time.perf_counter() - started:.0f} s", flush=True)
    (out / "study.json").write_text(json.dumps({"teachers": {f"{k:g}": v for k, v in teachers.items()},
                                                "chosen_teacher_lr": best, "students": students}, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag in ("--teacher", "--student", "--data-cache", "--out"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--role", choices=("main", "teacher", "student"), default="main")
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--name", default="")
    parser.add_argument("--smoke", action="store_true", help="a few hundred sentences, one student epoch")
    parsed = parser.parse_args()
    {"main": main, "teacher": run_teacher, "student": run_student}[parsed.role](parsed)
