"""README's "Everyday use" block runs exactly as written, on a fresh home (its own local broker)."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.kafka


def shell_block(heading: str) -> list[str]:
    """The commands of the first ```bash block under ``heading`` (comments dropped)."""
    text = (REPO / "README.md").read_text()
    block = text.split(heading, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_everyday_use_runs_as_written(tmp_path) -> None:
    commands = shell_block("## Everyday use")
    assert commands[0].endswith("broker up") and commands[-1].endswith("broker down")
    assert port_free(9092) and port_free(9400), "the README's commands use ports 9092 and 9400: free them"
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "SENTISTREAM_BOOTSTRAP_SERVERS")}
    env["SENTISTREAM_HOME"] = str(tmp_path / "home")
    worker, outputs = None, {}
    try:
        for command in commands:
            args = shlex.split(command)
            if args[1] == "worker":  # runs until stopped: in the background, like a second terminal
                log = (tmp_path / "worker.log").open("wb")
                worker = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
                wait_ready("http://127.0.0.1:9400/readyz", worker, tmp_path / "worker.log")
                continue
            if args[1:3] == ["broker", "down"] and worker is not None:
                worker.send_signal(signal.SIGINT)  # Ctrl-C
                assert worker.wait(60) == 0
            done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"{command}: {done.stdout[-1000:]}{done.stderr[-1000:]}"
            outputs[" ".join(args[1:3])] = done.stdout
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        subprocess.run([str(REPO / ".venv/bin/sentistream"), "broker", "down"], cwd=REPO, env=env,
                       capture_output=True, timeout=120)
    consumed = [line for line in outputs["consume --limit"].splitlines() if line.startswith("sentences/")]
    assert len(consumed) == 20, outputs["consume --limit"]
    assert '"result"' in outputs["schema"]


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} not ready in {timeout} s")
