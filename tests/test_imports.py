"""Imports point one way: down the floors, and never round in a circle.

The packages stand on floors, lowest first::

    worker  <  broker  <  export  <  bench  <  cli

- ``worker``, the runtime, imports nothing of ours outside itself (nor torch or transformers);
- ``broker``, the local Kafka, may use the runtime's settings and clients;
- ``export``, training and the ONNX export, stands on the runtime (its bundles and batching);
- ``bench``, the benchmarks, measures bundles that export makes on brokers that broker starts,
  and holds what the tooling shares about running workers (``bench/worker_process.py``: a
  worker's command line; ``bench/scrape.py``: its /metrics);
- ``cli``, the commands, may import everything.

A module imports from its own floor or a lower one. Among the modules of all five there is no
import cycle. Every import counts, wherever it stands: inside a function or under
``TYPE_CHECKING`` too (a lazy import hides a cycle, it does not break it).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOORS = ("worker", "broker", "export", "bench", "cli")  # lowest first
NOT_IN_THE_RUNTIME = ("torch", "transformers")


def imported_names(path: Path) -> set[str]:
    """Every module name ``path`` imports, anywhere in the file: ``import a.b`` gives ``a.b``;
    ``from a.b import c`` gives ``a.b`` and ``a.b.c`` (``c`` may be a module); a relative import
    is resolved against the file's package (``sentistream.<folder>``)."""
    package = ["sentistream", path.parent.name]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join([*package[: len(package) - node.level + 1], *([node.module] if node.module else [])]) \
                if node.level else node.module
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def modules() -> dict[str, Path]:
    """``sentistream.<folder>.<module>`` (``sentistream.<folder>`` for its __init__) → its file."""
    found = {}
    for floor in FLOORS:
        for path in sorted((ROOT / floor).glob("*.py")):
            name = f"sentistream.{floor}" + ("" if path.stem == "__init__" else f".{path.stem}")
            found[name] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Each of our modules → the modules of ours that it imports (``from pkg import name`` counts
    as importing ``pkg.name`` where that is a module, else ``pkg``)."""
    known = modules()
    graph = {}
    for name, path in known.items():
        targets = {n if n in known else n.rpartition(".")[0] for n in imported_names(path)}
        graph[name] = {t for t in targets if t in known and t != name}
    return graph


def _floor(module: str) -> int:
    return FLOORS.index(module.split(".")[1])


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or None (depth-first search)."""
    state: dict[str, str] = {}  # "open" while on the path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return [*path[path.index(target):], target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_module_imports_from_a_higher_floor() -> None:
    upward = sorted(f"{source} → {target}" for source, targets in import_graph().items() for target in targets
                    if _floor(target) > _floor(source))
    assert not upward, upward


def test_no_import_cycle() -> None:
    cycle = _cycle(import_graph())
    assert cycle is None, " → ".join(cycle)


def test_the_runtime_imports_neither_torch_nor_the_folders_by_their_own_names() -> None:
    """torch and transformers are the export extra's; ``worker``, ``export`` … exist only as
    ``sentistream.…`` once installed (a bare ``import worker`` works in the checkout alone)."""
    known = modules()
    wrong = sorted(f"{name}: {imported}" for name, path in known.items() for imported in imported_names(path)
                   if imported.split(".")[0] in FLOORS
                   or (name.startswith("sentistream.worker") and imported.split(".")[0] in NOT_IN_THE_RUNTIME))
    assert not wrong, wrong


def test_the_walk_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "example.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sentistream.cli.app import app\n"
        "def f():\n    from . import data\n    import sentistream.bench.run\n")
    assert {"sentistream.cli.app", "sentistream.export.data", "sentistream.bench.run"} <= \
        imported_names(folder / "example.py")
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
