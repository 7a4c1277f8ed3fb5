"""Command-line flags generated from :class:`Settings`: every setting is a flag, named after it
(``max_wait_ms`` → ``--max-wait-ms``), with the field's description as its help. Secrets are
read from the environment only, so they never show in the process list. The same names make the
command line that runs a worker (bench/worker_process.py)."""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer

from sentistream.bench.worker_process import flag_name, flag_settings

ALIASES = {"bootstrap_servers": ("--bootstrap",), "group_id": ("--group",)}


def _flag_type(annotation: Any) -> tuple[type, str]:
    """The type typer parses, and a note for the help (the allowed values)."""
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    if get_origin(annotation) is Literal:
        return str, "one of: " + ", ".join(str(a) for a in get_args(annotation))
    if annotation in (bool, int, float, str, Path):
        return annotation, ""
    raise TypeError(f"no command-line type for {annotation!r}")


def settings_parameters(names: Iterable[str] | None = None) -> list[inspect.Parameter]:
    """One keyword parameter per setting (``None`` when not given: the environment decides)."""
    wanted = set(names) if names is not None else None
    params = []
    for name, field in flag_settings().items():
        if wanted is not None and name not in wanted:
            continue
        kind, note = _flag_type(field.annotation)
        flag = flag_name(name)
        decls = (f"{flag}/--no-{flag[2:]}",) if kind is bool else (flag, *ALIASES.get(name, ()))
        default = "" if field.default_factory is not None or field.default is None else f"default {field.default}"
        help_text = "; ".join(p for p in (field.description, note, default) if p)
        option = typer.Option(*decls, help=help_text, show_default=False, rich_help_panel="Settings")
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[kind | None, option]))
    return params


def with_settings_flags(names: Iterable[str] | None = None) -> Callable[[Callable], Callable]:
    """Give a command one flag per setting (or per setting in ``names``); they arrive in its
    ``**flags``."""

    def decorate(fn: Callable) -> Callable:
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values()
               if p.kind is not inspect.Parameter.VAR_KEYWORD]
        fn.__signature__ = inspect.Signature(own + settings_parameters(names))  # type: ignore[attr-defined]
        return fn

    return decorate
