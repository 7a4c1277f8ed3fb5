"""`sentistream broker up/down/status` as a user runs them (a second broker, on its own home)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.kafka


def _cli(home, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "SENTISTREAM_BOOTSTRAP_SERVERS")}
    env["SENTISTREAM_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "sentistream.cli", "broker", *args], capture_output=True, text=True,
                          env=env, timeout=180)


def test_up_down_twice_and_a_second_up_says_so(tmp_path) -> None:
    for _ in range(2):
        up = _cli(tmp_path, "up", "--port", "0")
        assert up.returncode == 0, up.stderr
        assert "is up at 127.0.0.1:" in up.stdout
        again = _cli(tmp_path, "up", "--port", "0")
        assert again.returncode == 2 and "already running" in again.stderr
        status = _cli(tmp_path, "status")
        assert status.returncode == 0 and "1/1 broker(s) answering" in status.stdout
        down = _cli(tmp_path, "down")
        assert down.returncode == 0 and "stopped" in down.stdout
    status = _cli(tmp_path, "status")
    assert status.returncode == 1 and "no local broker is running" in status.stdout


def test_unknown_security_is_one_line(tmp_path) -> None:
    result = _cli(tmp_path, "up", "--security", "tls")
    assert result.returncode == 2
    assert result.stderr.strip() == "sentistream: --security tls: one of plaintext, ssl, sasl_ssl"
    assert not (tmp_path / "broker").exists()  # refused before anything was made


def test_port_taken_is_one_line(tmp_path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = _cli(tmp_path, "up", "--port", str(port))
    assert result.returncode == 2 and f"port {port} is taken" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_kill_stop_start_a_node(tmp_path) -> None:
    """Fault-rehearsal verbs on a 1-node broker (tests/test_faults.py runs 3 nodes)."""
    no_broker = _cli(tmp_path, "kill", "--node", "1")
    assert no_broker.returncode == 2 and "no local broker" in no_broker.stderr
    assert _cli(tmp_path, "up", "--port", "0").returncode == 0
    try:
        for verb in ("kill", "stop", "start"):
            bad = _cli(tmp_path, verb, "--node", "2")
            assert bad.returncode == 2 and bad.stderr.strip() == "sentistream: no node 2: the local broker has node(s) 1..1"
        killed = _cli(tmp_path, "kill", "--node", "1")
        assert killed.returncode == 0 and "node 1 (127.0.0.1:" in killed.stdout and "killed" in killed.stdout
        again = _cli(tmp_path, "kill", "--node", "1")
        assert again.returncode == 2 and "node 1 is not running" in again.stderr
        status = _cli(tmp_path, "status")
        assert status.returncode == 1 and "broker start" in status.stdout
        started = _cli(tmp_path, "start")  # no --node: every stopped node
        assert started.returncode == 0 and "is back" in started.stdout, started.stderr
        assert "1/1 broker(s) answering" in _cli(tmp_path, "status").stdout
        assert _cli(tmp_path, "stop", "--node", "1").returncode == 0
        assert _cli(tmp_path, "start", "--node", "1").returncode == 0
        assert "every node" in _cli(tmp_path, "start").stdout
    finally:
        assert _cli(tmp_path, "down").returncode == 0
