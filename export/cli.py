"""``sentistream export …``: onnx, train, eval. Imported only when the user runs ``export``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="Train a model and export it as a bundle (export extra).")


def _require_export_extra() -> None:
    import importlib.util

    missing = [m for m in ("torch", "transformers", "sklearn", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        from worker.errors import UserError

        raise UserError(f"the export step needs the export extra ({', '.join(missing)} missing): "
                        "pip install 'sentistream[export]'")


def _is_default_task(labels: list[str]) -> bool:
    from export.data import LABELS

    return list(labels) == list(LABELS)


def build_bundle(checkpoint: Path, out: Path, *, quantize: str | None, method: str, name: str | None,
                 version: str, max_length: int | None, extra: dict | None = None) -> dict:
    """Export (fp32, parity-checked), then optionally quantize and gate. Returns the figures.

    With ``quantize``, ``out`` gets the int8 bundle and ``<out>-fp32`` keeps the fp32 export.
    """
    from export import data as data_mod
    from export import onnx_export
    from export import quantize as quant
    from export.errors import QuantizationGateError
    from export.onnx_export import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    dataset = data_mod.load(data_mod.default_cache_dir()) if _is_default_task(labels) else None
    parity_texts = dataset.part("test")[0] if dataset else None
    fp32_dir = out.with_name(out.name + "-fp32") if quantize else out
    shutil.rmtree(fp32_dir, ignore_errors=True)
    exported = onnx_export.export_checkpoint(checkpoint, fp32_dir, name=name, version=version,
                                             max_length=max_length, sentences=parity_texts, extra=extra)
    typer.echo(f"fp32 export {fp32_dir}: parity {json.dumps(exported.parity)}")
    figures = {"parity": exported.parity}
    if quantize:
        calib = dataset.part("train")[0][:512] if dataset else onnx_export.SAMPLE_SENTENCES
        texts, y = (dataset.part("test")[0], dataset.part("test")[1]) if dataset else \
            (onnx_export.SAMPLE_SENTENCES, None)
        candidates = quant.AUTO_ORDER if method == "auto" else (method,)
        refused = []
        for attempt, candidate in enumerate(candidates, start=1):
            shutil.rmtree(out, ignore_errors=True)
            quant.quantize(fp32_dir, out, method=candidate, calibration_texts=calib)
            try:
                gate = quant.gate(fp32_dir, out, texts, y)
                break
            except QuantizationGateError as err:
                shutil.rmtree(out, ignore_errors=True)  # a refused int8 bundle is not left behind
                if attempt == len(candidates):
                    raise
                refused.append({"method": candidate, "gate": err.figures, "failed": err.failed})
                typer.echo(f"int8 {candidate} refused ({'; '.join(err.failed)}); trying the next method")
        typer.echo(f"int8 {out} ({candidate}) accepted: {json.dumps(gate)}")
        manifest_path = out / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["quantization"]["gate"] = gate
        if refused:
            manifest["quantization"]["refused"] = refused
        manifest["parity"] = exported.parity
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
        figures["int8_gate"] = gate
    return figures


@app.command("onnx")
def onnx_cmd(
    model: Annotated[Path, typer.Option(help="Hugging Face checkpoint directory")],
    out: Annotated[Path, typer.Option(help="bundle directory to write")],
    quantize: Annotated[str | None, typer.Option(help="int8")] = None,
    method: Annotated[str, typer.Option(help="int8 method, see README; auto: the fastest the gate accepts")] = "auto",
    name: Annotated[str | None, typer.Option(help="bundle name; default: checkpoint dir name")] = None,
    version: Annotated[str, typer.Option(help="bundle version")] = "1.0.0",
    max_length: Annotated[int | None, typer.Option(help="max tokens; default: the tokenizer's (≤ 512)")] = None,
) -> None:
    """Export a checkpoint to a bundle; validate it against PyTorch; optionally quantize + gate."""
    _require_export_extra()
    if quantize not in (None, "int8"):
        raise typer.BadParameter("only int8 is supported", param_hint="--quantize")
    from export.quantize import METHODS

    if method not in ("auto", *METHODS):
        raise typer.BadParameter(f"choose auto or one of {', '.join(METHODS)}", param_hint="--method")
    build_bundle(model, out, quantize=quantize, method=method, name=name, version=version,
                 max_length=max_length)


@app.command("train")
def train_cmd(
    out: Annotated[Path, typer.Option(help="bundle directory to write")] = Path("worker/models/sst5-minilm"),
    work_dir: Annotated[Path, typer.Option(help="checkpoint and training summary")] = Path("out/train"),
    epochs: Annotated[int, typer.Option(min=1)] = 4,
    learning_rate: Annotated[float, typer.Option("--lr")] = 6e-5,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    max_length: Annotated[int, typer.Option(min=8)] = 64,
    soft_label_mix: Annotated[float, typer.Option(min=0, max=1)] = 0.5,
    pooling: Annotated[str, typer.Option(help="mean or cls")] = "mean",
    class_weight_power: Annotated[float, typer.Option(min=0)] = 0.0,
    threads: Annotated[int, typer.Option(help="torch threads; 0: default")] = 0,
    seed: Annotated[int, typer.Option(help="shuffling and head initialisation")] = 0,
    version: Annotated[str, typer.Option()] = "1.0.0",
) -> None:
    """Reproduce the default model: data, fine-tune, export, quantize, evaluate, report."""
    _require_export_extra()
    from export import data as data_mod
    from export import train

    dataset = data_mod.load(data_mod.default_cache_dir())

    cfg = train.TrainConfig(base_model=train.default_base_model(), out_dir=work_dir, epochs=epochs,
                            learning_rate=learning_rate, batch_size=batch_size, max_length=max_length,
                            soft_label_mix=soft_label_mix, class_weight_power=class_weight_power, pooling=pooling,
                            threads=threads, seed=seed)
    summary = train.train(cfg, dataset)
    finish_default_bundle(work_dir / "checkpoint", out, summary, version, dataset)
    typer.echo((out / "REPORT.md").read_text())


def finish_default_bundle(checkpoint: Path, out: Path, summary: dict, version: str, dataset) -> None:
    from export import evaluate
    from export.onnx_export import write_manifest

    build_bundle(checkpoint, out, quantize="int8", method="auto",
                 name="sst5-minilm", version=version, max_length=summary["config"]["max_length"],
                 extra={"training": summary})
    fp32 = evaluate.evaluate_bundle(out.with_name(out.name + "-fp32"), dataset)
    int8 = evaluate.evaluate_bundle(out, dataset)
    tfidf = evaluate.tfidf_baseline(dataset)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["figures"] = {"split": "fixed test split, 2,121 sentences (shared/design/default-model.md)",
                           "int8": {k: v for k, v in int8.items() if k != "confusion"},
                           "fp32": {k: v for k, v in fp32.items() if k != "confusion"}}
    report = evaluate.report_markdown("sst5-minilm int8 (this bundle)", int8, extra={
        "TF-IDF (1–2 grams) + logistic regression (measured now)": tfidf,
        "sst5-minilm fp32 export": fp32,
    })
    (out / "REPORT.md").write_text(report)
    write_manifest(out, manifest)


@app.command("eval")
def eval_cmd(bundle: Annotated[Path, typer.Option(help="bundle directory")]) -> None:
    """Print a bundle's figures on the fixed test split (accuracy, macro-F1, confusion, r)."""
    from export import data as data_mod
    from export import evaluate

    dataset = data_mod.load(data_mod.default_cache_dir())
    figures = evaluate.evaluate_bundle(bundle, dataset)
    typer.echo(evaluate.report_markdown(bundle.name, figures))
