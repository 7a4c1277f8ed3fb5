"""The line ``bench.md`` starts with: the command, the day, the CPU and the bundle it measured.

    `sentistream bench` on 2026-12-03; CPU: 2 × Intel(R) Xeon(R) Processor, int8: AVX512-VNNI,
    AVX-VNNI, AMX: no; bundle sst5-minilm 1.3.0

(one line). README's Performance section is a copy of a ``bench.md``, so its first line says where
its figures come from; :func:`parse_header` finds that line again (tests/test_bench.py checks the
bundle version against the shipped manifest's).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

HEADER = re.compile(r"`(?P<command>sentistream bench[^`]*)` on (?P<day>\d{4}-\d{2}-\d{2}); "
                    r"CPU: (?P<cores>\d+) × (?P<cpu>.+?), int8: (?P<int8>.+?); "
                    r"bundle (?P<bundle>\S+) (?P<version>\S+)$", re.MULTILINE)


@dataclass(frozen=True)
class Header:
    command: str
    day: str  # YYYY-MM-DD
    cpu: str  # CpuFacts.line(): "<cores> × <model>, int8: <features>"
    bundle: str
    version: str

    def line(self) -> str:
        return f"`{self.command}` on {self.day}; CPU: {self.cpu}; bundle {self.bundle} {self.version}"


def parse_header(text: str) -> Header | None:
    """The first header line in ``text``, or None."""
    match = HEADER.search(text)
    if match is None:
        return None
    cpu = f"{match['cores']} × {match['cpu']}, int8: {match['int8']}"
    return Header(match["command"], match["day"], cpu, match["bundle"], match["version"])


def shown_path(path: Path, cwd: Path) -> str:
    """A path as a command line in bench.md may show it: relative to ``cwd`` when inside it, else
    its name only (no machine's absolute paths in what gets committed)."""
    if not path.is_absolute():
        return str(path)
    try:
        return str(path.relative_to(cwd))
    except ValueError:
        return f".../{path.name}"


def bench_command(options: dict[str, object], cwd: Path) -> str:
    """``sentistream bench`` with the options that were given (``None`` and ``False`` left out,
    ``True`` as a bare flag, paths by :func:`shown_path`), in the order given."""
    argv = ["sentistream", "bench"]
    for flag, value in options.items():
        if value is None or value is False:
            continue
        argv.append(flag)
        if value is not True:
            argv.append(shown_path(value, cwd) if isinstance(value, Path) else str(value))
    return shlex.join(argv)
