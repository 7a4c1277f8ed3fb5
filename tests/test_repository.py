"""What the repository holds: no large file but a model bundle's own, and no run output, which
``.gitignore`` keeps out.

The files are the ones git tracks; outside a git checkout (an unpacked archive), every file below
the root except in ``.git`` and the directories ``.gitignore`` names. Whether a name is ignored is
asked of ``git check-ignore`` in a scratch repository holding only the committed ``.gitignore``, so
that no one's own excludes (``core.excludesFile``, ``.git/info/exclude``) count.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_BYTES = 5 * 1024 * 1024
MODELS = ("worker", "models")  # a bundle's files: worker/models/<bundle>/model.onnx, tokenizer.json, ...

# Written into the working directory by the repository's commands with their defaults (or by the
# tools they run there), relative to it.
RUN_OUTPUTS = (
    "out/bench/bench.md", "out/bench/bench.png",  # sentistream bench (--out out/bench)
    "out/bench/naive-peer-checkpoint/config.json",
    "out/bench/soak.csv", "out/bench/soak-latency.csv", "out/bench/soak.md", "out/bench/soak.png",  # bench --soak
    "out/bench/soak-worker-a.log",
    "out/bench/latency.md", "out/bench/noop-bundle/model.onnx",  # bench --latency
    "out/train/checkpoint/model.safetensors",  # sentistream export train (--work-dir out/train)
    "out/teacher/labels.npz",  # sentistream export distill-labels
    "worker/models/sst5-minilm-fp32/model.onnx",  # export train --quantize int8: OUT-fp32 beside OUT
    "onnxruntime_profile_2026-01-01_00-00-00.json",  # onnxruntime's enable_profiling
    "worker.prof", "worker.pstats", "prof/flame.svg",  # cProfile, py-spy
    "hs_err_pid4242.log", "replay_pid4242.log",  # a local broker node's JVM crashed (its cwd is the caller's)
    ".pytest_cache/v/cache/lastfailed", ".hypothesis/examples/x", ".ruff_cache/CACHEDIR.TAG",  # make test
    ".tools/bin/kubeconform",  # make tools
    ".venv/bin/python", "sentistream.egg-info/PKG-INFO", "worker/__pycache__/loop.cpython-311.pyc",  # make setup
    "build/lib/x.py", "dist/sentistream-0.1.0-py3-none-any.whl",
)


def _git(cwd: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """git without the user's or the system's configuration."""
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", *args], cwd=cwd, input=stdin, capture_output=True, text=True, env=env, check=False)


def tracked_files(root: Path) -> list[Path] | None:
    """The files git tracks in the checkout ``root``; None when ``root`` is not one."""
    if shutil.which("git") is None:
        return None
    top = _git(root, "rev-parse", "--show-toplevel")
    if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root.resolve():
        return None
    listed = _git(root, "ls-files", "-z")
    assert listed.returncode == 0, listed.stderr
    return [root / name for name in listed.stdout.split("\0") if name]


def walked_files(root: Path) -> list[Path]:
    """Every file below ``root`` except in ``.git`` and in the directories its ``.gitignore``
    names (``name/``, ``/path/``, ``a/*-b/``)."""
    gitignore = root / ".gitignore"
    lines = gitignore.read_text().splitlines() if gitignore.exists() else []
    patterns = [line for line in lines if line.endswith("/") and not line.startswith(("#", "!"))] + [".git/"]

    def ignored(rel: Path) -> bool:
        # a pattern with a slash before its end is anchored at the root; one without matches a name anywhere
        return any(fnmatch.fnmatch(rel.as_posix() if "/" in p.rstrip("/") else rel.name, p.strip("/"))
                   for p in patterns)

    found = []
    for top, dirs, names in os.walk(root):
        here = Path(top).relative_to(root)
        dirs[:] = [d for d in dirs if not ignored(here / d)]
        found += [Path(top) / name for name in names]
    return found


def _repository_files() -> list[Path]:
    tracked = tracked_files(REPO)
    return tracked if tracked is not None else walked_files(REPO)


@pytest.fixture
def ignores(tmp_path: Path):
    """``ignores(names)``: the names the committed .gitignore ignores, as git check-ignore says."""
    assert shutil.which("git"), "git is not installed: it is what says which names are ignored"
    assert _git(tmp_path, "init", "-q").returncode == 0
    shutil.copy(REPO / ".gitignore", tmp_path / ".gitignore")

    def ignored(names: list[str]) -> set[str]:
        result = _git(tmp_path, "check-ignore", "--stdin", stdin="".join(f"{n}\n" for n in names))
        assert result.returncode in (0, 1), result.stderr  # 1: none of them is ignored
        return set(result.stdout.splitlines())

    return ignored


def test_no_large_file_but_a_model_bundles() -> None:
    sizes = {path.relative_to(REPO): path.stat().st_size for path in _repository_files()
             if path.is_file()}  # tracked but deleted in the working tree: nothing to measure
    assert len(sizes) > 50, f"found only {len(sizes)} files below {REPO}"
    too_large = {str(rel): f"{size / 2**20:.1f} MiB" for rel, size in sizes.items()
                 if size > MAX_BYTES and not (rel.parts[:2] == MODELS and len(rel.parts) == 4)}
    assert not too_large, f"files over {MAX_BYTES / 2**20:.0f} MiB outside worker/models/<bundle>/: {too_large}"


def test_gitignore_keeps_run_outputs_out(ignores) -> None:
    assert ignores(list(RUN_OUTPUTS)) == set(RUN_OUTPUTS)


def test_no_tracked_file_is_one_gitignore_ignores(ignores) -> None:
    """A tracked file that .gitignore names is an output committed by force, or a rule too wide."""
    names = [path.relative_to(REPO).as_posix() for path in _repository_files()]
    assert ignores(names) == set()


def test_a_tree_outside_git_is_walked_without_what_gitignore_names(tmp_path: Path) -> None:
    for rel in ("a.py", ".git/HEAD", ".venv/bin/python", "out/bench/bench.md", "w/models/m-fp32/model.onnx",
                "w/models/m/model.onnx", "w/__pycache__/a.pyc", "w/out/b.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    (tmp_path / ".gitignore").write_text("# outputs\n.venv/\n/out/\nw/models/*-fp32/\n__pycache__/\n*.pyc\n")
    found = {path.relative_to(tmp_path).as_posix() for path in walked_files(tmp_path)}
    assert found == {".gitignore", "a.py", "w/models/m/model.onnx", "w/out/b.py"}
