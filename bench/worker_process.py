"""``sentistream worker`` as a child process of the tooling (the benchmarks, the demo, the tests):
the command line that runs it with given settings. A setting becomes the flag that the CLI gives
it (cli/flags.py builds its options from :func:`flag_settings` and :func:`flag_name` too)."""

from __future__ import annotations

import sys
from typing import Any, get_args

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from sentistream.worker.settings import Settings


def flag_settings() -> dict[str, FieldInfo]:
    """The settings that are command-line flags: all but secrets, which are read from the
    environment only, so they never show in the process list."""
    return {name: field for name, field in Settings.model_fields.items() if SecretStr not in get_args(field.annotation)}


def flag_name(setting: str) -> str:
    """``max_wait_ms`` → ``--max-wait-ms``."""
    return "--" + setting.replace("_", "-")


def worker_command(settings: Settings, *extra: str, **overrides: Any) -> list[str]:
    """The command that runs ``sentistream worker`` with ``settings`` (updated by ``overrides``):
    every setting that differs from its default as its flag, then ``extra``. Secrets stay in the
    environment."""
    return settings_command("worker", settings, *extra, **overrides)


def settings_command(subcommand: str, settings: Settings, *extra: str, **overrides: Any) -> list[str]:
    """``sentistream <subcommand>`` (one that takes every setting as a flag: worker, console)
    with ``settings`` as in :func:`worker_command`."""
    s = settings.model_copy(update=overrides)
    argv = [sys.executable, "-m", "sentistream.cli", subcommand]
    for name, field in flag_settings().items():
        value, default = getattr(s, name), field.get_default(call_default_factory=True)
        if value is None or value == default:
            continue
        flag = flag_name(name)
        if isinstance(value, bool):
            argv.append(flag if value else f"--no-{flag[2:]}")
        else:
            argv += [flag, str(value)]
    return [*argv, *extra]
