"""A plain `pip install .` (no checkout on the path): one `sentistream` namespace, and the demo runs."""

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
