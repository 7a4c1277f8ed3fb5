"""Typed export errors: each says what differed, with the figures."""

from __future__ import annotations

from sentistream.worker.errors import UserError


class DataError(UserError):
    """Training or evaluation data cannot be used: not fetched, not matching its published hash,
    malformed, or not labelled with the bundle's labels."""


class ExportError(UserError):
    """Base of everything that makes an export refuse to write a bundle."""


class CheckpointError(ExportError):
    """The checkpoint cannot be loaded as a sequence classifier with a fast tokenizer."""


class ParityError(ExportError):
    """The ONNX model, run through the worker's loader, does not match the PyTorch model."""

    def __init__(self, max_abs_diff: float, tolerance: float, disagreements: int, total: int,
                 example: str | None = None) -> None:
        self.max_abs_diff = max_abs_diff
        self.tolerance = tolerance
        self.disagreements = disagreements
        self.total = total
        msg = (f"ONNX vs PyTorch: max |Δlogit| {max_abs_diff:.3g} (tolerance {tolerance:g}), "
               f"labels differ on {disagreements}/{total} sentences")
        if example:
            msg += f", e.g. {example!r}"
        super().__init__(msg)


class QuantizationGateError(ExportError):
    """The quantized model drifted too far from its fp32 export; figures attached."""

    def __init__(self, figures: dict, failed: list[str]) -> None:
        self.figures = figures
        self.failed = failed
        super().__init__("int8 refused: " + "; ".join(failed))
