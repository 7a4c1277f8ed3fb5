"""Real worker processes for tests against the real broker (the broker itself: tests/cluster.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from sentistream.bench.scrape import scrape
from sentistream.bench.worker_process import worker_command
from sentistream.broker.local import free_port
from sentistream.worker.settings import Settings

REPO = Path(__file__).resolve().parents[1]


@dataclass
class WorkerProcess:
    settings: Settings
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    port: int = 0
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)  # more SENTISTREAM_* settings
    prefix: list[str] = field(default_factory=list)  # e.g. ["ip", "netns", "exec", "host1"]
    host: str = "127.0.0.1"  # where its metrics port is reached from here

    def start(self, log_dir: Path, name: str = "w") -> WorkerProcess:
        s = self.settings
        self.port = free_port()
        cmd = worker_command(s, *self.args, metrics_port=self.port)
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "SENTISTREAM_HOME": str(s.home), **self.env}
        self.proc = subprocess.Popen([*self.prefix, *cmd], cwd=REPO, env=env, stdout=self.log_path.open("wb"),
                                     stderr=subprocess.STDOUT)
        return self

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def wait_ready(self, timeout: float = 60, path: str = "/readyz") -> None:
        """Until ``path`` answers 200 (``/healthz``: the loop runs, ready or not)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"worker exited early:\n{self.log()}"
            try:
                if self.get(path)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"worker not ready in {timeout} s:\n{self.log()}")

    def metric(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples (with ``labels``) in one scrape."""
        return scrape(self.url("/metrics")).total(name, **labels)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90) -> int:
        """Signal it and wait for its exit code; one that outlives ``timeout`` (more than the
        supervisor's 60 s grace) is killed and its log is the failure."""
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            why = f"worker did not exit {timeout} s after {signal.Signals(sig).name}"
            raise AssertionError(f"{why}:\n{self.log()}") from None

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path else ""


def json_items(n: int, keys: int = 5, prefix: str = "m") -> list[tuple[bytes, bytes]]:
    texts = ["The acting is superb.", "A dull, lifeless film.", "It is a movie.",
             "Not bad at all, though the ending drags.", "An instant classic!"]
    return [(f"k{i % keys}".encode(), json.dumps({"id": f"{prefix}{i}", "text": texts[i % len(texts)]}).encode())
            for i in range(n)]
