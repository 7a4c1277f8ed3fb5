"""Live model operations in one worker: run a shadow, promote it, roll back, without a restart.

The run loop calls :meth:`ModelOps.apply` and :meth:`ModelOps.check_rule` between two pieces of
work, never during one: a batch is classified and published by one model, and in exactly-once
mode the switch falls between two transactions. Results carry the version that made them
(``model.version`` and the ``sentistream-model`` header), since the pipeline builds them from the
model it holds at that moment. A command that cannot be carried out changes nothing: one log
line (with the control record's topic, partition and offset) and
``sentistream_control_refused_total``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sentistream.worker.bundle import Bundle
from sentistream.worker.contract import ModelRef
from sentistream.worker.control import Command, Received, Refused, manifest_digest, verified
from sentistream.worker.shadow import Shadow
from sentistream.worker.swap_rule import SwapRule

if TYPE_CHECKING:
    from sentistream.worker.metrics import WorkerMetrics
    from sentistream.worker.pipeline import Pipeline
    from sentistream.worker.settings import Settings

log = logging.getLogger(__name__)


class ModelOps:
    """Which bundle serves, which one shadows it, and the moves between them."""

    def __init__(self, settings: Settings, pipeline: Pipeline, metrics: WorkerMetrics) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.metrics = metrics
        self.rule = SwapRule.parse(settings.swap_when) if settings.swap_when else None
        self.serving_digest = manifest_digest(pipeline.bundle.path)
        self.shadow_digest: str | None = None

    # -- the shadow ------------------------------------------------------------------------------
    @property
    def shadow(self) -> Shadow | None:
        return self.pipeline.shadow

    def start_shadow(self, path: Path, digest: str | None = None) -> bool:
        """Run the bundle at ``path`` beside the serving one (replacing any shadow). A bundle
        that cannot load is dropped (logged, counted) and serving goes on."""
        s = self.settings
        shadow = Shadow.load(path, self.metrics, s.batch_size, threads=s.threads, max_tokens=s.max_tokens)
        if shadow is None:
            return False
        self._stop_shadow()
        self.pipeline.shadow = shadow
        self.shadow_digest = digest or manifest_digest(path)
        log.info("shadow %s %s started beside %s %s", shadow.model.name, shadow.model.version,
                 self.pipeline.model.name, self.pipeline.model.version)
        return True

    def _stop_shadow(self) -> None:
        if self.pipeline.shadow is not None:
            self.pipeline.shadow.retire()
        self.pipeline.shadow = None
        self.shadow_digest = None

    # -- commands --------------------------------------------------------------------------------
    def replay(self, backlog: list[Received]) -> None:
        """A starting worker reaches the state the control topic holds: per key (serving, then
        shadow) the latest command that can be carried out (a refused one changed nothing for
        the workers that read it live, so it changes nothing here either)."""
        for key in ("serving", "shadow"):
            mine = [r for r in backlog if isinstance(r.command, Command) and r.command.key == key]
            for received in reversed(mine):
                if self.apply(received):
                    break

    def apply(self, received: Received) -> bool:
        """Carry out one control record (True), or refuse it and change nothing (False)."""
        command = received.command
        try:
            if isinstance(command, Refused):
                raise command
            path = verified(command)
            if command.command == "shadow":
                self._shadow_command(command, path)
            else:
                self._serve_command(command, path)
        except Refused as refused:
            self.metrics.control_refused.labels(refused.reason).inc()
            log.error("control command at %s refused (%s): %s; nothing changed", received.where, refused.reason,
                      refused)
            return False
        return True

    def _shadow_command(self, command: Command, path: Path) -> None:
        if command.sha256 in (self.serving_digest, self.shadow_digest):
            return  # already so (a replay, or a repeated command)
        if not self.start_shadow(path, command.sha256):
            raise Refused("load_failed", f"bundle {command.bundle} cannot be loaded")

    def _serve_command(self, command: Command, path: Path) -> None:
        if command.sha256 == self.serving_digest:
            if command.command == "rollback":
                self._stop_shadow()
            return  # already serving it
        shadow = self.shadow
        if shadow is not None and command.sha256 == self.shadow_digest:
            bundle = shadow.bundle
        else:
            try:
                bundle = Bundle(path, threads=self.settings.threads, max_tokens=self.settings.max_tokens)
            except Exception as exc:  # BundleError or onnxruntime's own: refused, serving goes on
                raise Refused("load_failed", f"bundle {command.bundle} cannot be loaded: {exc}") from exc
        self._check_labels(bundle, command.allow_label_change)
        self.swap(bundle, command.command, command.sha256)

    def _check_labels(self, bundle: Bundle, allowed: bool) -> None:
        serving = list(self.pipeline.bundle.manifest.labels)
        if list(bundle.manifest.labels) != serving and not allowed:
            raise Refused("label_change", f"bundle {bundle.path} has labels {bundle.manifest.labels}, the serving "
                          f"one {serving} (allow it with --allow-label-change)")

    # -- automatic promotion ---------------------------------------------------------------------
    def check_rule(self) -> None:
        """``--swap-when``: promote the shadow once it has met the rule (once per worker)."""
        shadow = self.shadow
        if self.rule is None or shadow is None or not self.rule.met(shadow.compared, shadow.agreement):
            return
        log.info("shadow %s %s met --swap-when %s (agreement %.4f over %d sentences)", shadow.model.name,
                 shadow.model.version, self.settings.swap_when, shadow.agreement, shadow.compared)
        self.rule = None
        try:
            self._check_labels(shadow.bundle, self.settings.allow_label_change)
        except Refused as refused:
            self.metrics.control_refused.labels(refused.reason).inc()
            log.error("automatic promotion refused: %s", refused)
            return
        self.swap(shadow.bundle, "auto", self.shadow_digest or manifest_digest(shadow.bundle.path))

    # -- the switch ------------------------------------------------------------------------------
    def swap(self, bundle: Bundle, how: str, digest: str) -> None:
        """Serve ``bundle`` from the next piece of work on. The shadow stops when it is the
        bundle promoted, or on a rollback."""
        old = self.pipeline.bundle.manifest
        new = bundle.manifest
        if digest == self.shadow_digest or how == "rollback":
            self._stop_shadow()
        self.pipeline.bundle = bundle
        self.pipeline.model = ModelRef(name=new.name, version=new.version)
        self.serving_digest = digest
        self.metrics.retired(old.name, old.version, old.files["model.onnx"])
        self.metrics.serving(new.name, new.version, new.files["model.onnx"], new.labels)
        self.metrics.model_swaps.labels(how).inc()
        log.warning("model swapped (%s): %s %s -> %s %s, from the next batch on", how, old.name, old.version,
                    new.name, new.version)
