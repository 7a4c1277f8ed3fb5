"""``sentistream model shadow|promote|rollback|status``: write and read the control topic that
every worker of a group follows (worker/control.py), so all replicas move together.

A command is checked here before it is written (the bundle exists, its manifest's sha256 matches
``--sha256`` when given, its labels are the serving bundle's unless ``--allow-label-change``) and
again by every worker before anything loads; a refusal is one line and writes nothing. Whether a
worker accepts other labels is its own setting (``allow_label_change``): a command grants nothing.
"""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sentistream.cli.clients import client_settings
from sentistream.cli.flags import with_settings_flags
from sentistream.worker.errors import UserError

if TYPE_CHECKING:
    from sentistream.worker.control import State

model_app = typer.Typer(no_args_is_help=True, help="Live model operations: shadow, promote, rollback, status.")

SETTINGS = ("bootstrap_servers", "control_topic", "bundle")
Sha256Opt = Annotated[str | None, typer.Option("--sha256", help="the manifest.json's sha256 you expect; "
                                               "refused if the bundle's differs")]
AllowOpt = Annotated[bool, typer.Option("--allow-label-change", help="write the command although its labels "
                                        "differ from the serving bundle's; a worker carries it out only if it runs "
                                        "with its own allow_label_change setting")]


def _state(settings) -> State:
    """What the control topic tells the workers: the fold of its commands (worker/control.py),
    leaving out what the workers refuse as far as this host can tell: records that hold no
    command, commands whose bundle's manifest does not have the sha256 they name, and serving
    commands with other labels (unless allow_label_change, the workers' setting, is set here too)."""
    from sentistream.worker import kafka_clients
    from sentistream.worker.control import ControlReader, Refused, State, read_command

    bootstrap = kafka_clients.resolve_bootstrap(settings)
    admin = kafka_clients.admin(settings, bootstrap)
    try:
        if settings.control_topic not in set(admin.list_topics()):
            return State()
    finally:
        admin.close()
    consumer = kafka_clients.control_consumer(settings, bootstrap)
    try:
        backlog = ControlReader(consumer, settings.control_topic).backlog()
    finally:
        consumer.close()
    state = State()
    for record in backlog:
        with contextlib.suppress(Refused):
            received = read_command(record)
            labels = _labels_if_checks_out(received.command)
            takes_labels = received.command.command == "shadow" or settings.allow_label_change
            if labels is not None and (takes_labels or labels == _serving_labels(settings, state)):
                state = state.then(received)
    return state


def _labels_if_checks_out(command) -> list[str] | None:
    """The labels of the command's bundle when, as this host sees it, its manifest has the sha256
    the command names; else None."""
    from sentistream.worker.bundle import BundleError, Manifest, read_manifest_bytes, sha256_bytes

    try:
        raw = read_manifest_bytes(command.path)
        return list(Manifest.parse(raw, command.path / "manifest.json").labels) \
            if sha256_bytes(raw) == command.sha256 else None
    except (BundleError, OSError):
        return None


def _serving_labels(settings, state: State) -> list[str]:
    from sentistream.worker.bundle import Manifest, default_bundle_path

    path = state.serving.command.path if state.serving else Path(settings.bundle or default_bundle_path())
    return list(Manifest.read(path).labels)


def write(settings, command: str, bundle: Path, sha256: str | None = None, allow_label_change: bool = False,
          state: State | None = None) -> str:
    """Check and write one command; return the line that says what was written. UserError (one
    line, nothing written) for a bad command. ``allow_label_change``: write it although its labels
    differ (the workers decide by their own setting)."""
    from sentistream.worker import kafka_clients
    from sentistream.worker.bundle import Manifest, read_manifest_bytes, sha256_bytes
    from sentistream.worker.control import Command

    bundle = bundle.absolute()
    raw = read_manifest_bytes(bundle)  # BundleError: not a bundle
    manifest, digest = Manifest.parse(raw, bundle / "manifest.json"), sha256_bytes(raw)
    if sha256 is not None and sha256.lower() != digest:
        raise UserError(f"refused: {bundle}/manifest.json has sha256 {digest[:12]}…, --sha256 says {sha256[:12]}…; "
                        "nothing written")
    labels = _serving_labels(settings, _state(settings) if state is None else state)
    note = ""
    if list(manifest.labels) != labels:
        if not allow_label_change:
            raise UserError(f"refused: {bundle} has labels {manifest.labels}, the serving bundle {labels} "
                            "(--allow-label-change writes it; workers accept it only with their own "
                            "allow_label_change setting); nothing written")
        note = "; its labels differ: workers carry it out only if they run with allow_label_change"
    cmd = Command(command=command, bundle=str(bundle), sha256=digest, issued_by=socket.gethostname())
    bootstrap = kafka_clients.resolve_bootstrap(settings)
    kafka_clients.ensure_topics_exist(settings, kafka_clients.control_topic_spec(settings))
    producer = kafka_clients.producer(settings, bootstrap)
    try:
        key, value = cmd.encode()
        meta = producer.send(settings.control_topic, key=key, value=value).get(timeout=30)
    finally:
        producer.close(10)
    return (f"{command} {manifest.name} {manifest.version} (manifest sha256 {digest[:12]}…) written to "
            f"{meta.topic}[{meta.partition}]@{meta.offset}; workers switch between two batches{note}")


@model_app.command("shadow")
@with_settings_flags(SETTINGS)
def shadow_cmd(directory: Annotated[Path, typer.Argument(help="candidate bundle directory (as the workers see it)")],
               sha256: Sha256Opt = None, allow_label_change: AllowOpt = False, **flags: Any) -> None:
    """Run a candidate bundle beside the serving one on every worker; only the serving one publishes."""
    typer.echo(write(client_settings(**flags), "shadow", directory, sha256, allow_label_change))


@model_app.command("promote")
@with_settings_flags(SETTINGS)
def promote_cmd(directory: Annotated[Path | None, typer.Argument(help="bundle to serve; default: the shadow's")] = None,
                sha256: Sha256Opt = None, allow_label_change: AllowOpt = False, **flags: Any) -> None:
    """Serve a bundle (by default the shadow) on every worker, from their next batch on; the shadow ends."""
    settings = client_settings(**flags)
    state = None  # read once needed: a bad --sha256 is refused before any Kafka call
    if directory is None:
        directory, state = shadow_target(settings)
    typer.echo(write(settings, "promote", directory, sha256, allow_label_change, state))


def shadow_target(settings) -> tuple[Path, State]:
    """What ``promote`` serves by default: the shadow's bundle (and the state read to find it)."""
    state = _state(settings)
    if state.shadow is None:
        raise UserError("refused: no shadow to promote (name a bundle); nothing written")
    return state.shadow.command.path, state


def rollback_target(settings) -> Path:
    """What ``rollback`` serves by default: --bundle, else the shipped one."""
    from sentistream.worker.bundle import default_bundle_path

    return Path(settings.bundle or default_bundle_path())


@model_app.command("rollback")
@with_settings_flags(SETTINGS)
def rollback_cmd(directory: Annotated[Path | None, typer.Argument(help="bundle to serve; default: --bundle, "
                                                                       "else the shipped one")] = None,
                 sha256: Sha256Opt = None, allow_label_change: AllowOpt = False, **flags: Any) -> None:
    """Serve an earlier bundle on every worker and stop the shadow."""
    settings = client_settings(**flags)
    target = directory or rollback_target(settings)
    typer.echo(write(settings, "rollback", target, sha256, allow_label_change))


@model_app.command("status")
@with_settings_flags(("bootstrap_servers", "control_topic"))
def status_cmd(**flags: Any) -> None:
    """What the control topic tells the workers to serve and to shadow."""
    settings = client_settings(**flags)
    state = _state(settings)
    if state.serving is None:
        typer.echo(f"{settings.control_topic}: no serving command (workers serve their --bundle)")
    for key, received in (("serving", state.serving), ("shadow", state.shadow)):
        if received is not None:
            c = received.command
            typer.echo(f"{key:<8} {c.command:<8} {c.bundle} (manifest sha256 {c.sha256[:12]}…) at {received.where}")
