"""A plain `pip install .` (no checkout on the path): one `sentistream` namespace, the demo runs,
and the benchmarks find their data as package data (nothing reads files of the checkout).

The install has the runtime alone: `sentistream bench --quick` needs the bench and export extras
(torch among them, gigabytes), so the benchmark that runs here is the shadow's cost, which needs
only the runtime and reads the example reviews the soak reads too."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.kafka
def test_an_install_outside_the_checkout_has_one_namespace_and_runs_the_demo(kafka, tmp_path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    env = {**os.environ, "UV_SYSTEM_CERTS": "1"}
    env.pop("VIRTUAL_ENV", None)
    subprocess.run([uv, "pip", "install", "--quiet", "--python", str(python), str(REPO)], check=True, env=env,
                   timeout=600)
    site = next((venv / "lib").glob("python3*/site-packages"))
    top_level = {p.name for p in site.iterdir()}
    assert "sentistream" in top_level
    assert not {"worker", "export", "bench", "cli"} & top_level

    run_env = {**env, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "SENTISTREAM_HOME": str(tmp_path / "home"),
               "PYTHONPATH": ""}
    result = subprocess.run([str(venv / "bin" / "sentistream"), "demo"], cwd=tmp_path, env=run_env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Very positive" in result.stdout or "Positive" in result.stdout

    assert (site / "sentistream" / "bench" / "data" / "reviews.txt").is_file()
    bench_help = subprocess.run([str(venv / "bin" / "sentistream"), "bench", "--quick", "--help"], cwd=tmp_path,
                                env=run_env, capture_output=True, text=True, timeout=60)
    assert bench_help.returncode == 0 and "--soak" in bench_help.stdout, bench_help.stdout + bench_help.stderr
    shadow_cost = subprocess.run([str(python), "-m", "sentistream.bench.shadow_cost", "1"], cwd=tmp_path, env=run_env,
                                 capture_output=True, text=True, timeout=180)
    assert shadow_cost.returncode == 0, shadow_cost.stdout[-2000:] + shadow_cost.stderr[-2000:]
    assert "round 0: without a shadow" in shadow_cost.stdout
