"""TLS and SASL_SSL on the local broker (issue #16): `sentistream broker up --security ssl|sasl_ssl`.

One module-scoped pair of clusters (``tests.cluster.own_cluster``), each started as a user starts
it (the CLI, on its own home whose jar cache is a link to the shared one): ``ssl`` (TLS, no login)
and ``sasl_ssl`` (TLS and SCRAM-SHA-512). Over each, ``topics create``, ``produce`` and ``consume`` run as commands with the
settings of the ``client.env`` the broker wrote, and a worker classifies records end to end. A
wrong password, an untrusted CA or the wrong protocol is one plain line naming the cause, for
every command that talks to Kafka; no secret shows in the worker's log, its /metrics or the
process list. The settings' secrets are checked without a broker too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sentistream.bench.worker_process import worker_command
from sentistream.broker.local import KAFKA_VERSION, ClusterState, LocalCluster, provision_jars
from sentistream.worker.settings import Settings, default_home
from tests.cluster import KafkaCluster, own_cluster
from tests.workers import REPO, WorkerProcess

kafka = pytest.mark.kafka
SECURITIES = ("ssl", "sasl_ssl")
SECRET_KEYS = ("SENTISTREAM_SASL_PASSWORD", "SENTISTREAM_SSL_PASSWORD")


def _clean_env() -> dict[str, str]:
    """This process's environment without any Kafka or sentistream setting of its own."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("SENTISTREAM_") and k != "KAFKA_BOOTSTRAP_SERVERS"}


def _cli(env: dict[str, str], *args: str, stdin: str = "", timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sentistream.cli", *args], input=stdin, capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=timeout)


def _read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of a shell file (values shell-quoted), comments skipped."""
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out[key] = shlex.split(value)[0]
    return out


@dataclass
class Secured:
    """One secured local cluster, started by `sentistream broker up --security ...` (``up``)."""

    security: str
    cluster: KafkaCluster
    up: subprocess.CompletedProcess

    @property
    def local(self) -> LocalCluster:
        """Its nodes, keys and files."""
        return self.cluster.local

    @property
    def home(self) -> Path:
        return self.local.home

    @property
    def bootstrap(self) -> str:
        return self.cluster.bootstrap

    @property
    def client(self) -> dict[str, str]:
        """The settings in the broker's client.env (the password included)."""
        return _read_env_file(self.local.client_env_file)

    def env(self, **changes: str) -> dict[str, str]:
        """A user's shell after ``set -a; . client.env; set +a``, with ``changes``; the bootstrap
        comes from the local broker's state file, as it does for a user."""
        return {**_clean_env(), "SENTISTREAM_HOME": str(self.home), **self.client, **changes}

    def secrets(self) -> dict[str, str]:
        return {k: v for k, v in self.client.items() if k in SECRET_KEYS}


def _broker_up(security: str, home: Path) -> subprocess.CompletedProcess:
    """`sentistream broker up --security SECURITY` on ``home``, as a user runs it."""
    home.mkdir(parents=True)
    # the jars are cached once per user: link this home's cache to it instead of fetching again
    (home / f"kafka-{KAFKA_VERSION}").symlink_to(provision_jars(default_home()).parent, target_is_directory=True)
    env = {**_clean_env(), "SENTISTREAM_HOME": str(home)}
    up = _cli(env, "broker", "up", "--port", "0", "--security", security, "--timeout", "150", timeout=240)
    assert up.returncode == 0, f"broker up --security {security}: {up.stdout}{up.stderr}"
    return up


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Secured]]:
    """``{"ssl": ..., "sasl_ssl": ...}``: both clusters, one after the other, stopped and wiped at the end."""
    base = tmp_path_factory.mktemp("secured")
    ups: dict[str, subprocess.CompletedProcess] = {}

    def broker_up(local: LocalCluster) -> ClusterState:
        security = local.home.name
        ups[security] = _broker_up(security, local.home)
        return local.recorded()

    with contextlib.ExitStack() as stack:
        out = {}
        for security in SECURITIES:
            cluster = stack.enter_context(own_cluster(home=base / security, start=broker_up))
            out[security] = Secured(security, cluster, ups[security])
        yield out


@pytest.fixture(scope="module")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A client certificate and its key, encrypted with a password (``ssl_password``)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: it makes the encrypted client key for ssl_password")
    d = tmp_path_factory.mktemp("client-key")
    password = uuid.uuid4().hex
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-keyout", d / "key.pem", "-out", d / "cert.pem",
                    "-passout", "env:KEYPASS", "-subj", "/CN=sentistream-client", "-days", "2"],
                   env={**os.environ, "KEYPASS": password}, check=True, capture_output=True, timeout=60)
    assert "ENCRYPTED" in (d / "key.pem").read_text()
    return d / "cert.pem", d / "key.pem", password


# -- the settings' secrets (no broker) --------------------------------------------------------------
def test_ssl_password_reaches_kafka_python_but_no_flag_no_log() -> None:
    s = Settings(bootstrap_servers="127.0.0.1:1", security_protocol="SSL", ssl_certfile=Path("/certs/c.pem"),
                 ssl_keyfile=Path("/certs/k.pem"), ssl_password="key-pass-123", sasl_password="sasl-pass-456",
                 home=Path("/srv/home"))
    assert s.kafka_client_config("127.0.0.1:1")["ssl_password"] == "key-pass-123"
    view = s.public_view()
    assert "ssl_password" not in view and "sasl_password" not in view
    assert "key-pass-123" not in json.dumps(view) and "sasl-pass-456" not in json.dumps(view)
    assert "key-pass-123" not in repr(s)
    argv = " ".join(worker_command(s))
    assert "--ssl-certfile" in argv  # the other settings do become flags
    assert "key-pass-123" not in argv and "sasl-pass-456" not in argv and "password" not in argv


# -- the broker ------------------------------------------------------------------------------------
@kafka
@pytest.mark.parametrize("security", ["ssl", "sasl_ssl"])
def test_broker_up_prints_the_settings_and_keeps_secrets_in_private_files(secured: dict[str, Secured],
                                                                          security: str) -> None:
    s = secured[security]
    local = s.local
    out = s.up.stdout
    assert f"is up at {s.bootstrap}" in out
    assert f"SENTISTREAM_SECURITY_PROTOCOL={security.upper()}" in out
    assert f"SENTISTREAM_SSL_CAFILE={local.ca_file}" in out
    assert str(local.client_env_file) in out
    assert local.ca_file.read_text().startswith("-----BEGIN CERTIFICATE-----")
    if security == "sasl_ssl":
        assert "SENTISTREAM_SASL_USERNAME=sentistream" in out and "SENTISTREAM_SASL_MECHANISM=SCRAM-SHA-512" in out
        assert s.secrets()["SENTISTREAM_SASL_PASSWORD"]
    stored = json.loads((local.security_dir / "secrets.json").read_text())  # keystore and SCRAM passwords
    assert len(stored) == (3 if security == "sasl_ssl" else 1)
    cmdline = Path(f"/proc/{local.recorded().pids[0]}/cmdline").read_bytes().decode(errors="replace")
    assert "server.properties" in cmdline
    for secret in stored.values():
        assert secret not in out + s.up.stderr
        assert secret not in local.node_log(0).read_text()
        assert secret not in cmdline
    # the files that hold a secret: the owner's only; the CA's private key is not kept at all
    private = [local.client_env_file, local.data_dir / "node-1" / "server.properties",
               *(local.security_dir / n for n in ("secrets.json", "broker.p12", "truststore.p12"))]
    for path in private:
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert local.security_dir.stat().st_mode & 0o777 == 0o700
    assert not (local.security_dir / "ca.p12").exists()
    assert not list(local.data_dir.glob(".args-*"))  # the format step's argument file is gone
    status = _cli(s.env(), "broker", "status")
    assert status.returncode == 0 and "1/1 broker(s) answering" in status.stdout, status.stdout + status.stderr
    assert security.upper() in status.stdout


# -- end to end over each ------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


@kafka
@pytest.mark.parametrize("security", ["ssl", "sasl_ssl"])
def test_topics_produce_worker_consume(secured: dict[str, Secured], security: str, tmp_path: Path,
                                       request: pytest.FixtureRequest) -> None:
    s = secured[security]
    unique = uuid.uuid4().hex[:8]
    topics = {"input_topic": f"in-{unique}", "output_topic": f"out-{unique}", "dlq_topic": f"dlq-{unique}"}
    env = s.env()
    processes = 1
    if security == "ssl":  # a client key encrypted with ssl_password, which only the environment carries
        cert, key, key_password = request.getfixturevalue("client_key")
        env |= {"SENTISTREAM_SSL_CERTFILE": str(cert), "SENTISTREAM_SSL_KEYFILE": str(key),
                "SENTISTREAM_SSL_PASSWORD": key_password}
    else:
        processes = 2  # a supervisor and two children: none may show the password either
        # DEBUG: kafka-python logs its whole configuration, password included, at DEBUG; the
        # worker keeps the kafka loggers at ERROR whatever its own level
        env["SENTISTREAM_LOG_LEVEL"] = "DEBUG"
    secrets = [v for k, v in env.items() if k in SECRET_KEYS]
    assert secrets

    created = _cli(env, "topics", "create", "--input-topic", topics["input_topic"], "--output-topic",
                   topics["output_topic"], "--dlq-topic", topics["dlq_topic"], "--partitions", "2")
    assert created.returncode == 0, created.stderr
    assert created.stdout.count("created") == 3, created.stdout
    lines = [json.dumps({"id": f"r{i}", "text": t}) for i, t in
             enumerate(["A wonderful, moving film.", "Dull and far too long.", "It is a film."] * 2)]
    produced = _cli(env, "produce", "--input-topic", topics["input_topic"], stdin="\n".join(lines) + "\n")
    assert produced.returncode == 0 and "sent 6 message(s)" in produced.stderr, produced.stderr

    # the worker: every non-secret setting a flag (worker_command), the secrets in its environment only
    security_settings = {k.removeprefix("SENTISTREAM_").lower(): v for k, v in env.items()
                         if k.startswith("SENTISTREAM_") and k != "SENTISTREAM_HOME"}
    settings = Settings(bootstrap_servers=s.bootstrap, group_id=f"g-{unique}", processes=processes, home=s.home,
                        **topics, **security_settings)
    worker = WorkerProcess(settings, env={k: env[k] for k in SECRET_KEYS if k in env}).start(tmp_path)
    try:
        worker.wait_ready(timeout=120)
        consumed = _cli(env, "consume", "--output-topic", topics["output_topic"], "--json", "--follow",
                        "--limit", "6", timeout=120)
        assert consumed.returncode == 0, consumed.stderr
        results = [json.loads(line) for line in consumed.stdout.splitlines()]
        assert sorted(r["id"] for r in results) == sorted(f"r{i}" for i in range(6))
        assert all(r["label"] in r["scores"] for r in results)
        metrics = worker.get("/metrics")[1]
        pids = [worker.proc.pid, *_children(worker.proc.pid)]
        assert len(pids) >= 1 + (processes if processes > 1 else 0), pids
        cmdlines = [Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace") for pid in pids]
        environ = Path(f"/proc/{worker.proc.pid}/environ").read_bytes().decode(errors="replace")
    finally:
        code = worker.stop()
    assert code == 0, worker.log()
    log = worker.log_path.read_text(errors="replace")
    for secret in secrets:
        assert secret in environ  # the worker did get it, from its environment ...
        assert secret not in log and secret not in metrics  # ... and shows it nowhere
        for pid, cmdline in zip(pids, cmdlines, strict=True):
            assert secret not in cmdline, f"pid {pid}: {cmdline}"
    assert "--security-protocol" in cmdlines[0]  # the check above did look at the worker's real flags


# -- failures: one plain line naming the cause ---------------------------------------------------------
COMMANDS = {
    "topics": ["topics", "describe"],
    "produce": ["produce"],
    "consume": ["consume", "--limit", "1"],
    "worker": ["worker", "--metrics-port", "0"],
}


def _one_line(result: subprocess.CompletedProcess) -> str:
    """The command's single stderr line (and nothing on stdout, no traceback)."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert not result.stdout.strip(), result.stdout
    return lines[0]


@kafka
@pytest.mark.parametrize("command", COMMANDS)
def test_wrong_password_is_one_line(secured: dict[str, Secured], command: str) -> None:
    s = secured["sasl_ssl"]
    wrong = uuid.uuid4().hex
    result = _cli(s.env(SENTISTREAM_SASL_PASSWORD=wrong), *COMMANDS[command], timeout=60)
    line = _one_line(result)
    assert line == (f"sentistream: authentication failed for user sentistream (SCRAM-SHA-512) at {s.bootstrap}: "
                    "check the password (sasl_password) and the user name")
    assert wrong not in result.stdout + result.stderr


@kafka
@pytest.mark.parametrize("command", COMMANDS)
def test_untrusted_ca_is_one_line(secured: dict[str, Secured], command: str) -> None:
    """The ssl cluster's clients given the other cluster's CA: its certificate is not trusted."""
    s, other_ca = secured["ssl"], secured["sasl_ssl"].local.ca_file
    result = _cli(s.env(SENTISTREAM_SSL_CAFILE=str(other_ca)), *COMMANDS[command], timeout=60)
    line = _one_line(result)
    assert line.startswith(f"sentistream: TLS: the broker's certificate at {s.bootstrap} is not trusted by "
                           f"ssl_cafile {other_ca}: certificate verify failed"), line


@kafka
def test_untrusted_ca_comes_before_the_login(secured: dict[str, Secured]) -> None:
    s, other_ca = secured["sasl_ssl"], secured["ssl"].local.ca_file
    line = _one_line(_cli(s.env(SENTISTREAM_SSL_CAFILE=str(other_ca)), "topics", "describe", timeout=60))
    assert "is not trusted by ssl_cafile" in line and "authentication" not in line


@kafka
def test_the_wrong_protocol_names_the_listener(secured: dict[str, Secured]) -> None:
    ssl, sasl = secured["ssl"], secured["sasl_ssl"]
    # an SSL client on the SASL_SSL listener (kafka-python alone: "Unable to bootstrap" after 30 s)
    env = {**_clean_env(), "SENTISTREAM_HOME": str(sasl.home), "SENTISTREAM_SECURITY_PROTOCOL": "SSL",
           "SENTISTREAM_SSL_CAFILE": str(sasl.local.ca_file)}
    line = _one_line(_cli(env, "topics", "describe", timeout=60))
    assert line == (f"sentistream: the listener at {sasl.bootstrap} wants a SASL login (it offers SCRAM-SHA-512): "
                    "set security_protocol SASL_SSL with sasl_mechanism, sasl_username and sasl_password")
    # a SASL_SSL client on the SSL listener
    env = {**sasl.env(SENTISTREAM_SSL_CAFILE=str(ssl.local.ca_file)), "SENTISTREAM_HOME": str(ssl.home)}
    line = _one_line(_cli(env, "topics", "describe", timeout=60))
    assert line.startswith(f"sentistream: the listener at {ssl.bootstrap} does not take a SASL login"), line
    # a mechanism the broker does not offer
    line = _one_line(_cli(sasl.env(SENTISTREAM_SASL_MECHANISM="SCRAM-SHA-256"), "topics", "describe", timeout=60))
    assert line == (f"sentistream: the broker at {sasl.bootstrap} does not offer SASL mechanism SCRAM-SHA-256 "
                    "(it offers SCRAM-SHA-512)")


@kafka
def test_wrong_key_password_is_one_line(secured: dict[str, Secured], client_key: tuple[Path, Path, str]) -> None:
    cert, key, _ = client_key
    s = secured["ssl"]
    base = {"SENTISTREAM_SSL_CERTFILE": str(cert), "SENTISTREAM_SSL_KEYFILE": str(key)}
    wrong = _one_line(_cli(s.env(**base, SENTISTREAM_SSL_PASSWORD="not-it"), "topics", "describe", timeout=60))
    assert wrong == (f"sentistream: ssl_keyfile {key}: cannot load it with ssl_certfile {cert}: wrong ssl_password, "
                     "or a key that does not match the certificate")
    # none at all: one line too, never OpenSSL's pass phrase prompt on the terminal
    missing = _one_line(_cli(s.env(**base), "topics", "describe", timeout=60))
    assert missing.endswith("an encrypted key needs ssl_password (SENTISTREAM_SSL_PASSWORD)"), missing


# -- lifecycle (last: it restarts a node) ------------------------------------------------------------
@kafka
def test_a_secured_node_stops_and_starts_again(secured: dict[str, Secured]) -> None:
    """Readiness on restart uses the secured listener: start_nodes returns only once the node is a
    live broker again, as seen by a SASL_SSL client."""
    s = secured["sasl_ssl"]
    local = s.local
    local.stop_nodes([0])
    assert "no local broker is running" in _cli(s.env(), "broker", "status").stdout
    local.start_nodes([0], timeout=120)
    status = _cli(s.env(), "broker", "status")
    assert status.returncode == 0 and "1/1 broker(s) answering" in status.stdout, status.stdout + status.stderr
