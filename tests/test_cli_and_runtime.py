"""The runtime stays lean; the CLI answers a bad argument with one plain line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sentistream.worker.settings import Settings


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "sentistream.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


# That the runtime imports nothing above it (worker/ imports only worker/): tests/test_imports.py.


def test_serving_loads_neither_torch_nor_the_tooling() -> None:
    code = ("import sys; import sentistream.worker.loop, sentistream.worker.supervisor;"
            "from sentistream.worker.bundle import Bundle, default_bundle_path;"
            "Bundle(default_bundle_path()).classify(['ok']);"
            "bad = [m for m in sys.modules if m.startswith(('torch', 'transformers', 'sentistream.export',"
            " 'sentistream.cli', 'sentistream.bench'))]; print(bad); sys.exit(bool(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("args", "needle"), [
    (["worker", "--batch-size", "0"], "invalid setting batch_size"),
    (["worker", "--delivery", "twice"], "invalid setting delivery"),
    (["worker", "--bundle", "/nonexistent"], "does not exist"),
    (["brokr"], "No such command"),
    (["broker", "up", "--nodes", "0"], "--nodes"),
    (["produce", "/nonexistent.txt", "--bootstrap", "127.0.0.1:1"], "no such file"),
])
def test_bad_arguments_print_one_plain_line(args, needle) -> None:
    result = _run(*args)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_no_broker_configured_is_one_line(tmp_path) -> None:
    result = _run("topics", "create", env={"SENTISTREAM_HOME": str(tmp_path), "KAFKA_BOOTSTRAP_SERVERS": "",
                                           "SENTISTREAM_BOOTSTRAP_SERVERS": ""})
    assert result.returncode == 2 and "no Kafka configured" in result.stderr


def test_settings_from_env_and_secrets_not_in_public_view(monkeypatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("SENTISTREAM_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("SENTISTREAM_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("SENTISTREAM_SASL_USERNAME", "svc")
    monkeypatch.setenv("SENTISTREAM_SASL_PASSWORD", "hunter2")
    s = Settings()
    assert s.bootstrap_servers == "k1:9092,k2:9092"
    cfg = s.kafka_client_config(s.bootstrap_servers)
    assert cfg["bootstrap_servers"] == ["k1:9092", "k2:9092"] and cfg["sasl_plain_password"] == "hunter2"
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.public_view())


def test_sasl_without_credentials_is_refused() -> None:
    with pytest.raises(ValueError, match="needs sasl_mechanism"):
        Settings(security_protocol="SASL_PLAINTEXT")


def test_export_without_the_export_extra_prints_one_line_naming_it(tmp_path) -> None:
    # A runtime-only install (`make demo`, `pip install .`): torch and transformers cannot be found.
    code = ("import sys; sys.modules.update(torch=None, transformers=None); from sentistream.cli.app import main; "
            f"main(['export', 'onnx', '--model', {str(tmp_path)!r}, '--out', {str(tmp_path / 'out')!r}])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "export extra (torch, transformers missing)" in result.stderr


def test_bench_without_its_extras_is_one_line_before_any_work(monkeypatch, capsys) -> None:
    import importlib.util

    from sentistream.cli.app import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--quick"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs the bench and export extras (missing: matplotlib" in err[0]
