"""Live model operations in one worker: run a shadow, promote it, roll back, without a restart.

The run loop calls :meth:`ModelOps.follow` and :meth:`ModelOps.check_rule` between two pieces of
work, never during one: a batch is classified and published by one model, and in exactly-once
mode the switch falls between two transactions. Results carry the version that made them
(``model.version`` and the ``sentistream-model`` header), since the pipeline builds them from the
model it holds at that moment.

One boundary per control record. Everything done for a record (reading its bytes as a command,
finding its bundle under the bundle roots, loading and verifying it, switching) runs inside
:meth:`ModelOps._guarded`, which turns whatever is raised, any ``BaseException`` but a process exit
(worker/faults.py), into a refusal: one log line with the record's place, and
``sentistream_control_refused_total{reason}`` (a :class:`Refused`'s reason, else ``error``). A
refusal changes nothing: all that can fail (finding, loading, checking bundles: :meth:`_plan`)
happens before the switch, which is assignments only (:meth:`_commit`).

State. The worker serves and shadows what the fold of the commands it accepted says
(worker/control.py): live, one command at a time (``state.then``); on start, the fold of the whole
backlog, where a command whose bundle cannot be had is refused, left out, and the rest folded
again, as the running workers left it out when they refused it. Bundles named by commands load
only from under ``settings.bundle_root_paths`` (resolved: symlinks and ``..`` cannot leave them),
and a label change only when the worker's own ``allow_label_change`` says so.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sentistream.worker.bundle import MANIFEST, Bundle, BundleError, DigestMismatch, default_bundle_path
from sentistream.worker.control import (
    Command,
    ControlFeed,
    ControlRecord,
    Received,
    Refused,
    Resume,
    State,
    fold,
    kind,
    locate,
    read_command,
    read_resume,
)
from sentistream.worker.faults import contained, kept, one_line
from sentistream.worker.shadow import Shadow
from sentistream.worker.swap_rule import SwapRule

if TYPE_CHECKING:
    from sentistream.worker.metrics import WorkerMetrics
    from sentistream.worker.pipeline import Pipeline
    from sentistream.worker.settings import Settings

log = logging.getLogger(__name__)

# Every reason a control record is refused for (worker/control.py raises most of them).
REASONS = ("invalid_command", "tombstone", "too_large", "wrong_key", "unreadable_record", "unknown_bundle",
           "outside_roots", "hash_mismatch", "label_change", "load_failed", "error")
FOLLOW_BUDGET_S = 0.5  # records handled per turn of the loop, at most this long (loading a bundle: ~0.2-1 s)


class Unusable(Exception):
    """The bundle a command names cannot be had; ``cause`` says why."""

    def __init__(self, received: Received, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.received = received
        self.cause = cause


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a switch to ``target`` takes, every bundle loaded and checked already."""

    target: State
    serving: Bundle | None = None  # to serve from now on; None: the serving bundle stays
    shadow: Bundle | None = None  # to shadow from now on, unless keep_shadow
    keep_shadow: bool = False  # the running shadow stays as it is


class ModelOps:
    """Which bundle serves, which one shadows it, and the moves between them."""

    def __init__(self, settings: Settings, pipeline: Pipeline, metrics: WorkerMetrics,
                 on_resume: Callable[[Resume], None] = lambda _resume: None) -> None:
        self.on_resume = on_resume  # `sentistream dlq resume`: the run loop closes its breaker
        self.settings = settings
        self.pipeline = pipeline
        self.metrics = metrics
        self.rule = SwapRule.parse(settings.swap_when) if settings.swap_when else None
        self.roots = [root.resolve() for root in settings.bundle_root_paths(default_bundle_path().parent)]
        self.state = State()
        self.pending: deque[ControlRecord] = deque()
        for reason in REASONS:  # every series exists from the start
            metrics.control_refused.labels(reason)

    @property
    def shadow(self) -> Shadow | None:
        return self.pipeline.shadow

    @property
    def serving_digest(self) -> str:
        return self.pipeline.bundle.manifest_sha256

    @property
    def shadow_digest(self) -> str | None:
        return self.shadow.bundle.manifest_sha256 if self.shadow is not None else None

    def start_shadow(self, path: Path) -> bool:
        """``--shadow-bundle``: run the bundle at ``path`` beside the serving one. A bundle that
        cannot load is dropped (logged, counted) and serving goes on."""
        s = self.settings
        shadow = Shadow.load(path, self.metrics, s.batch_size, threads=s.threads, max_tokens=s.max_tokens,
                             runtime=s.runtime)
        if shadow is None:
            return False
        self._set_shadow(shadow)
        command = Command(command="shadow", bundle=str(Path(path).absolute()), sha256=shadow.bundle.manifest_sha256)
        self.state = State(self.state.serving, Received("--shadow-bundle", command))
        return True

    # -- control records ---------------------------------------------------------------------------
    def follow(self, reader: ControlFeed) -> None:
        """Handle the control records that arrived, for at most FOLLOW_BUDGET_S (the rest wait for
        the next turn). A failing read (the broker, an ACL) is raised: the caller retries later."""
        if not self.pending:
            self.pending.extend(reader.poll())
        deadline = time.monotonic() + FOLLOW_BUDGET_S
        while self.pending and time.monotonic() < deadline:
            self.handle(self.pending.popleft())

    def handle(self, record: ControlRecord) -> bool:
        """Carry out one control record (True), or refuse it and change nothing (False)."""
        return self._guarded(record.where, lambda: self._carry_out(record))

    def _carry_out(self, record: ControlRecord) -> None:
        what = kind(record)
        if what == "dlq-resume":
            self.on_resume(read_resume(record))
        elif what == "model":
            self._realize(self.state.then(read_command(record)))
        # "audit": a record for people to read

    def replay(self, records: list[ControlRecord]) -> None:
        """A starting worker reaches the state the backlog leads to: the fold of its commands,
        those whose bundle cannot be had refused and left out."""
        commands: list[Received] = []
        for record in records:
            if contained(lambda record=record: kind(record) != "model", lambda _exc: False):
                continue  # a starting worker's breaker is closed; audit records are for people
            self._guarded(record.where, lambda record=record: commands.append(read_command(record)) or True)
        while commands:
            try:
                self._realize(fold(commands, self.state))
                return
            except Unusable as unusable:
                self._refuse(unusable.received.where, unusable.cause)
                commands = [c for c in commands if c is not unusable.received]

    def _guarded(self, where: str, work: Callable[[], bool | None]) -> bool:
        """The boundary: ``work()`` (True), or, whatever it raised but a process exit, a refusal
        of what came from ``where`` (False)."""
        return contained(lambda: work() is not False, lambda exc: self._refuse(where, exc))

    def _refuse(self, where: str, exc: BaseException) -> bool:
        cause = exc.cause if isinstance(exc, Unusable) else exc
        if isinstance(cause, Refused):
            reason, why = cause.reason, (str(cause).splitlines() or [""])[0][:500]
        else:
            reason, why = "error", one_line(cause)
        self.metrics.control_refused.labels(reason).inc()
        log.error("control command at %s refused (%s): %s; nothing changed", where, reason, why)
        return False

    # -- switching to a state --------------------------------------------------------------------
    def _realize(self, target: State, how: str | None = None) -> None:
        """Serve and shadow what ``target`` says; Unusable (nothing changed) when a bundle it needs
        cannot be had."""
        self._commit(self._plan(target), how)

    def _plan(self, target: State) -> _Plan:
        """Everything that can fail, before anything changes: the bundles ``target`` needs."""
        serving, digest = None, self.serving_digest
        if target.serving is not None and target.serving.command.sha256 != digest:
            serving = _usable(target.serving, self._serving_bundle)
            digest = serving.manifest_sha256
        wanted = target.shadow
        if wanted is None or wanted.command.sha256 == digest:
            return _Plan(target, serving)
        if wanted.command.sha256 == self.shadow_digest:
            return _Plan(target, keep_shadow=True)
        return _Plan(target, serving, _usable(wanted, self._load))

    def _serving_bundle(self, command: Command) -> Bundle:
        shadow = self.shadow
        promoted = shadow is not None and command.sha256 == self.shadow_digest
        bundle = shadow.bundle if promoted else self._load(command)
        serving = list(self.pipeline.bundle.manifest.labels)
        if list(bundle.manifest.labels) != serving and not self.settings.allow_label_change:
            raise Refused("label_change", f"bundle {command.bundle} has labels {bundle.manifest.labels}, the serving "
                          f"one {serving} (a worker accepts that only with its allow_label_change setting)")
        return bundle

    def _load(self, command: Command) -> Bundle:
        """The command's bundle, from under the bundle roots, its manifest's hash checked on the
        bytes it is loaded from."""
        path = locate(command, self.roots)
        if not (path / MANIFEST).is_file():
            raise Refused("unknown_bundle", f"bundle {command.bundle}: no {MANIFEST}")
        s = self.settings
        try:
            return Bundle(path, threads=s.threads, max_tokens=s.max_tokens, manifest_sha256=command.sha256,
                          runtime=s.runtime)
        except DigestMismatch as exc:
            raise Refused("hash_mismatch", f"bundle {command.bundle}: {exc}") from exc
        except BundleError as exc:
            raise Refused("load_failed", f"bundle {command.bundle} cannot be loaded: {exc}") from exc

    def _commit(self, plan: _Plan, how: str | None) -> None:
        """Switch to the plan: assignments and metrics."""
        if plan.serving is not None and plan.target.serving is not None:
            self._swap(plan.serving, how or plan.target.serving.command.command)
        if not plan.keep_shadow:
            self.pipeline.set_shadow(None)  # retired before a successor starts: their metrics may share labels
            if plan.shadow is not None:
                self._set_shadow(Shadow(plan.shadow, self.metrics, self.settings.batch_size))
        self.state = plan.target

    def _set_shadow(self, shadow: Shadow) -> None:
        self.pipeline.set_shadow(shadow)
        log.info("shadow %s %s started beside %s %s", shadow.model.name, shadow.model.version,
                 self.pipeline.model.name, self.pipeline.model.version)

    def _swap(self, bundle: Bundle, how: str) -> None:
        """Serve ``bundle`` from the next piece of work on."""
        retired = self.pipeline.bundle
        old, new = retired.manifest, bundle.manifest
        self.pipeline.swap(bundle)
        self.metrics.retired(retired)
        self.metrics.serving(bundle)
        self.metrics.model_swaps.labels(how).inc()
        log.warning("model swapped (%s): %s %s -> %s %s, from the next batch on", how, old.name, old.version,
                    new.name, new.version)

    # -- automatic promotion ---------------------------------------------------------------------
    def check_rule(self) -> None:
        """``--swap-when``: promote the shadow once it has met the rule (once per worker)."""
        shadow = self.shadow
        if self.rule is None or shadow is None or not self.rule.met(shadow.compared, shadow.agreement):
            return
        log.info("shadow %s %s met --swap-when %s (agreement %.4f over %d sentences)", shadow.model.name,
                 shadow.model.version, self.settings.swap_when, shadow.agreement, shadow.compared)
        self.rule = None
        named = self.state.shadow.command.bundle if self.state.shadow else str(shadow.bundle.path.absolute())
        promote = Received("--swap-when", Command(command="promote", bundle=named, sha256=shadow.bundle.manifest_sha256))
        self._guarded(promote.where, lambda: self._realize(self.state.then(promote), how="auto"))


def _usable(received: Received, get: Callable[[Command], Bundle]) -> Bundle:
    """``get(command)``, or Unusable naming the command, whatever it raised but a process exit."""
    try:
        return get(received.command)
    except BaseException as exc:
        raise Unusable(received, kept(exc)) from exc
