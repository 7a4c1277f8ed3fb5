"""A real Apache Kafka (KRaft) on loopback for the demo, the tests and CI. Tooling only.

Jars come from Maven Central through ``broker/kafka/pom.xml`` (package data) (cached under the home dir and in
Maven's local repository); nodes run with ``java`` as detached processes; everything a cluster
owns (config, data, logs, pids) lives in one data directory. The run loop never imports this.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

KAFKA_VERSION = "4.1.1"
POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"  # package data: works installed too
LOG4J2_PROPERTIES = """\
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


# How clients reach a local cluster (``broker up --security``): the client listener's protocol.
SECURITY_MODES = ("plaintext", "ssl", "sasl_ssl")
SCRAM_MECHANISM = "SCRAM-SHA-512"
CLIENT_USER = "sentistream"  # the clients' SCRAM user
BROKER_USER = "broker"  # the nodes' own SCRAM user (inter-broker traffic uses the secured listener too)


class BrokerError(RuntimeError):
    """One plain line for the user: what went wrong with the local broker."""


@dataclass(frozen=True)
class ClusterState:
    bootstrap: str
    nodes: int
    pids: list[int]
    ports: list[int]
    controller_ports: list[int]
    kafka_version: str
    acls: bool = False
    host: str = "127.0.0.1"  # where clients reach the nodes (the controllers stay on loopback)
    security: str = "plaintext"  # one of SECURITY_MODES: the protocol of the listener clients and nodes use

    def node_bootstrap(self, index: int) -> str:
        return f"{self.host}:{self.ports[index]}"


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0): look at its state.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def provision_jars(home: Path) -> Path:
    """Resolve the Kafka server jars with Maven into ``home/kafka-<version>/libs`` (cached)."""
    libs = home / f"kafka-{KAFKA_VERSION}" / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    if shutil.which("mvn") is None:
        raise BrokerError("Maven (mvn) is not installed: it fetches the Kafka jars once")
    if not POM.exists():
        raise BrokerError(f"{POM} is missing: reinstall sentistream")
    libs.mkdir(parents=True, exist_ok=True)
    cmd = ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
           f"-Dkafka.version={KAFKA_VERSION}", f"-DoutputDirectory={libs}", "-DincludeScope=runtime"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
        raise BrokerError("Maven could not fetch the Kafka jars (offline?): " + " | ".join(tail))
    marker.write_text(KAFKA_VERSION)
    return libs


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise BrokerError("Java is not installed: the local broker needs Java 17 or newer")
    return java


class LocalCluster:
    """A KRaft cluster of 1 or 3 (or any) combined broker+controller nodes on 127.0.0.1."""

    def __init__(self, home: Path, data_dir: Path | None = None) -> None:
        self.home = home
        self.data_dir = data_dir or home / "broker"
        self.state_file = self.data_dir / "state.json"

    # -- state ---------------------------------------------------------------------------------
    def recorded(self) -> ClusterState | None:
        """The cluster this data directory holds, running or not (every node may be stopped)."""
        if not self.state_file.exists():
            return None
        return ClusterState(**json.loads(self.state_file.read_text()))

    def state(self) -> ClusterState | None:
        """The running cluster, or None. Stale state (dead processes) counts as not running."""
        state = self.recorded()
        if state is None or not any(_alive(pid) for pid in state.pids):
            return None
        return state

    def node_index(self, node: int) -> int:
        """The index of node number ``node`` (1-based, as the CLI and the logs count them)."""
        nodes = self._require_recorded().nodes
        if not 1 <= node <= nodes:
            raise BrokerError(f"no node {node}: the local broker has node(s) 1..{nodes}")
        return node - 1

    def running_nodes(self) -> list[int]:
        """Indexes of the nodes whose process is alive."""
        state = self.recorded()
        return [] if state is None else [i for i, pid in enumerate(state.pids) if _alive(pid)]

    def stopped_nodes(self) -> list[int]:
        """Indexes of the nodes whose process is gone (killed or stopped)."""
        state = self._require_recorded()
        return [i for i, pid in enumerate(state.pids) if not _alive(pid)]

    def node_log(self, index: int = 0) -> Path:
        return self.data_dir / f"node-{index + 1}" / "logs" / "server.log"

    def log_tail(self, lines: int = 5, index: int = 0) -> str:
        for path in (self.node_log(index), self._node_dir(index) / "stdout.log"):
            if path.exists() and path.stat().st_size:
                return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log yet)"

    # -- security ------------------------------------------------------------------------------
    @property
    def security_dir(self) -> Path:
        """Keystores, the CA certificate and the secrets of a secured cluster (mode 0700)."""
        return self.data_dir / "security"

    @property
    def ca_file(self) -> Path:
        """The CA certificate (PEM) clients trust: kafka-python's ``ssl_cafile``."""
        return self.security_dir / "ca.pem"

    @property
    def client_env_file(self) -> Path:
        """``SENTISTREAM_*`` lines for clients of a secured cluster, password included (mode 0600)."""
        return self.data_dir / "client.env"

    def client_settings(self, security: str | None = None) -> dict[str, str]:
        """The ``SENTISTREAM_*`` settings (secrets included) a client needs for this cluster's
        listener (``security``; default: the recorded cluster's); empty for plaintext. What
        :attr:`client_env_file` holds."""
        security = security or self._require_recorded().security
        if security == "plaintext":
            return {}
        env = {"SENTISTREAM_SECURITY_PROTOCOL": security.upper(), "SENTISTREAM_SSL_CAFILE": str(self.ca_file)}
        if security == "sasl_ssl":
            env |= {"SENTISTREAM_SASL_MECHANISM": SCRAM_MECHANISM, "SENTISTREAM_SASL_USERNAME": CLIENT_USER,
                    "SENTISTREAM_SASL_PASSWORD": self._secrets()["client_password"]}
        return env

    def client_config(self, security: str | None = None) -> dict[str, Any]:
        """kafka-python keyword arguments for this cluster's security (readiness checks, status)."""
        env = self.client_settings(security)
        if not env:
            return {}
        config: dict[str, Any] = {"security_protocol": env["SENTISTREAM_SECURITY_PROTOCOL"],
                                  "ssl_cafile": env["SENTISTREAM_SSL_CAFILE"]}
        if "SENTISTREAM_SASL_PASSWORD" in env:
            config |= {"sasl_mechanism": SCRAM_MECHANISM, "sasl_plain_username": CLIENT_USER,
                       "sasl_plain_password": env["SENTISTREAM_SASL_PASSWORD"]}
        return config

    def _secrets(self) -> dict[str, str]:
        path = self.security_dir / "secrets.json"
        if not path.exists():
            raise BrokerError(f"{path} is missing: the secured local broker's keys are gone; "
                              "`sentistream broker down` and up again")
        return json.loads(path.read_text())

    # -- lifecycle -----------------------------------------------------------------------------
    def up(self, nodes: int = 1, port: int = 9092, timeout: float = 60.0, acls: bool = False,
           host: str = "127.0.0.1", security: str = "plaintext") -> ClusterState:
        """Format and start ``nodes`` nodes. ``acls``: brokers enforce ACLs (none at first, so
        everyone may do everything until a test adds one; see :func:`acl_properties`). ``host``:
        the address clients reach the nodes at (an address of this machine; tests that put
        workers in network namespaces use a bridge's). ``security``: ``ssl`` or ``sasl_ssl``
        make a CA, the nodes' keystore and (sasl_ssl) SCRAM users at format time, and write the
        clients' settings to :attr:`client_env_file`."""
        if security not in SECURITY_MODES:
            raise BrokerError(f"unknown security {security!r}: one of {', '.join(SECURITY_MODES)}")
        running = self.state()
        if running is not None:
            raise BrokerError(f"a local broker is already running at {running.bootstrap}")
        ports = [port + i for i in range(nodes)] if port else [free_port() for _ in range(nodes)]
        controller_ports = [free_port() for _ in range(nodes)]
        for p in ports:
            if not _port_free(p, host):
                raise BrokerError(f"port {p} is taken: stop what uses it or pass --port")
        java = _java()
        libs = provision_jars(self.home)
        self._format(java, libs, nodes, ports, controller_ports, acls, host, security)
        pids = [self._start_node(java, libs, i) for i in range(nodes)]
        state = ClusterState(
            bootstrap=",".join(f"{host}:{p}" for p in ports), nodes=nodes, pids=pids,
            ports=ports, controller_ports=controller_ports, kafka_version=KAFKA_VERSION, acls=acls, host=host,
            security=security,
        )
        self._save(state)
        try:
            self._wait_ready(state, list(range(nodes)), timeout)
        except BrokerError:
            self.down(wipe=False)
            raise
        return state

    def down(self, timeout: float = 30.0, wipe: bool = True) -> bool:
        """Stop every node (SIGTERM, then SIGKILL after ``timeout``). True if one was running."""
        state = self.recorded()
        if state is None:
            return False
        was_running = any(_alive(pid) for pid in state.pids)
        for pid in state.pids:
            if _alive(pid):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(_alive(pid) for pid in state.pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in state.pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.state_file.unlink(missing_ok=True)
        if wipe:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        return was_running

    def stop_nodes(self, indexes: list[int], hard: bool = False, timeout: float = 30.0) -> None:
        """Stop nodes (fault rehearsal): SIGKILL when ``hard``, else SIGTERM (a clean shutdown),
        and SIGKILL whatever still runs after ``timeout``. Returns once they are gone."""
        state = self._require_recorded()
        for i in indexes:
            self.node_index(i + 1)
            if not _alive(state.pids[i]):
                raise BrokerError(f"node {i + 1} is not running")
        for i in indexes:
            os.kill(state.pids[i], signal.SIGKILL if hard else signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(_alive(state.pids[i]) for i in indexes) and time.monotonic() < deadline:
            time.sleep(0.1)
        for i in indexes:
            if _alive(state.pids[i]):
                os.kill(state.pids[i], signal.SIGKILL)
        while any(_alive(state.pids[i]) for i in indexes):
            time.sleep(0.05)

    def stop_node(self, index: int, hard: bool = False, timeout: float = 30.0) -> None:
        self.stop_nodes([index], hard, timeout)

    def start_nodes(self, indexes: list[int], timeout: float = 60.0) -> None:
        """Start stopped nodes again (same data) and wait until each is back in the cluster.

        Start every node of a full outage in one call: one node alone has no controller quorum
        and never becomes ready."""
        state = self._require_recorded()
        for i in indexes:
            self.node_index(i + 1)
            if _alive(state.pids[i]):
                raise BrokerError(f"node {i + 1} is already running")
        after = len(set(self.running_nodes()) | set(indexes))
        quorum = state.nodes // 2 + 1
        if after < quorum:
            raise BrokerError(f"{after} of {state.nodes} nodes would run: the controllers need {quorum} "
                              "for a quorum; start more nodes at once")
        java, libs = _java(), provision_jars(self.home)
        pids = list(state.pids)
        for i in indexes:
            pids[i] = self._start_node(java, libs, i)
        state = ClusterState(**{**asdict(state), "pids": pids})
        self._save(state)
        self._wait_ready(state, indexes, timeout)

    def start_node(self, index: int, timeout: float = 60.0) -> None:
        self.start_nodes([index], timeout)

    # -- internals -----------------------------------------------------------------------------
    def _node_dir(self, index: int) -> Path:
        return self.data_dir / f"node-{index + 1}"

    def _require_recorded(self) -> ClusterState:
        state = self.recorded()
        if state is None:
            raise BrokerError("no local broker: start one with `sentistream broker up`")
        return state

    def _save(self, state: ClusterState) -> None:
        self.state_file.write_text(json.dumps(asdict(state)))

    def _format(self, java: str, libs: Path, nodes: int, ports: list[int],
                controller_ports: list[int], acls: bool, host: str, security: str = "plaintext") -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.data_dir.mkdir(parents=True)
        secured = self._make_security(java, security, host) if security != "plaintext" else {}
        scram = _scram_arguments(self._secrets()) if security == "sasl_ssl" else []
        listener = security.upper()  # the client listener's name is its protocol's: PLAINTEXT, SSL, SASL_SSL
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        voters = ",".join(f"{i + 1}@127.0.0.1:{cp}" for i, cp in enumerate(controller_ports))
        replication = min(3, nodes)
        for i in range(nodes):
            node = self._node_dir(i)
            (node / "logs").mkdir(parents=True)
            props = {
                "process.roles": "broker,controller",
                "node.id": i + 1,
                "controller.quorum.voters": voters,
                "listeners": f"{listener}://{host}:{ports[i]},CONTROLLER://127.0.0.1:{controller_ports[i]}",
                "advertised.listeners": f"{listener}://{host}:{ports[i]}",
                "controller.listener.names": "CONTROLLER",
                "inter.broker.listener.name": listener,
                "listener.security.protocol.map": f"{listener}:{listener},CONTROLLER:PLAINTEXT",
                "log.dirs": node / "data",
                "num.partitions": 1,
                "default.replication.factor": replication,
                "min.insync.replicas": 2 if nodes >= 3 else 1,
                "offsets.topic.replication.factor": replication,
                "offsets.topic.num.partitions": 10,
                "transaction.state.log.replication.factor": replication,
                "transaction.state.log.min.isr": 2 if nodes >= 3 else 1,
                "transaction.state.log.num.partitions": 10,
                "group.initial.rebalance.delay.ms": 0,
                "share.coordinator.state.topic.replication.factor": replication,
                "share.coordinator.state.topic.min.isr": 1,
                "log.segment.bytes": 64 * 1024 * 1024,
                "auto.create.topics.enable": "true",
                **(acl_properties() if acls else {}),
                **secured,
            }
            if acls and security == "sasl_ssl":
                props["super.users"] = f"User:{BROKER_USER}"  # the nodes themselves skip the ACLs
            _write_private(node / "server.properties", "".join(f"{k}={v}\n" for k, v in props.items()))
            (node / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
            # "--cluster-id=…" in one word: a base64 id may start with "-", which the
            # option parser would otherwise read as a flag (seen once in CI).
            args = ["kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                    "-c", str(node / "server.properties"), "--ignore-formatted", *scram]
            self._run_java(java, libs, args, f"formatting node {i + 1}")
        if security != "plaintext":
            self._write_client_env(security)

    def _run_java(self, java: str, libs: Path, args: list[str], what: str) -> None:
        """Run a Kafka tool. Its arguments (SCRAM passwords among them) go through a private
        argument file, ``java @file``: the process list shows only the file's name. The main class
        is in the file too, since the launcher expands no @file after the main class."""
        argfile = self.data_dir / f".args-{uuid.uuid4().hex}"
        _write_private(argfile, "".join(_argfile_quote(a) + "\n" for a in args))
        try:
            result = subprocess.run([java, "-cp", f"{libs}/*", f"@{argfile}"], capture_output=True, text=True,
                                    check=False)
        finally:
            argfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise BrokerError(f"{what} failed: {(result.stderr or result.stdout).strip()[-300:]}")

    def _make_security(self, java: str, security: str, host: str) -> dict[str, str]:
        """A throw-away CA, one key pair for every node signed by it (SAN: localhost, 127.0.0.1 and
        ``host``), the nodes' keystore and truststore (PKCS12), the CA as PEM for Python clients,
        and random passwords; returns the nodes' security properties. The CA's private key is
        deleted once it signed: nothing else can ever be issued under it."""
        keytool = _keytool(java)
        d = self.security_dir
        d.mkdir(mode=0o700)
        store_password = secrets.token_hex(16)
        users = {"client_password": secrets.token_hex(16), "broker_password": secrets.token_hex(16)} \
            if security == "sasl_ssl" else {}
        _write_private(d / "secrets.json", json.dumps({"store_password": store_password, **users}))
        sans = ["dns:localhost", "ip:127.0.0.1"]
        if host not in ("127.0.0.1", "localhost"):
            sans.append(f"{'ip' if _is_ip(host) else 'dns'}:{host}")
        san = "SAN=" + ",".join(sans)
        ca, broker, trust = d / "ca.p12", d / "broker.p12", d / "truststore.p12"
        csr, crt = d / "broker.csr", d / "broker.crt"
        store = ["-storetype", "PKCS12", "-storepass:env", "STOREPASS"]
        steps = [
            ["-genkeypair", "-alias", "ca", "-dname", "CN=sentistream local CA", "-ext", "bc:c", "-keyalg", "RSA",
             "-keysize", "2048", "-validity", "3650", "-keystore", ca, *store],
            ["-exportcert", "-rfc", "-alias", "ca", "-keystore", ca, "-file", self.ca_file, *store],
            ["-genkeypair", "-alias", "broker", "-dname", "CN=localhost", "-ext", san, "-keyalg", "RSA",
             "-keysize", "2048", "-validity", "825", "-keystore", broker, *store],
            ["-certreq", "-alias", "broker", "-keystore", broker, "-file", csr, *store],
            ["-gencert", "-alias", "ca", "-keystore", ca, "-infile", csr, "-outfile", crt, "-rfc", "-validity", "825",
             "-ext", san, "-ext", "KU=digitalSignature,keyEncipherment", "-ext", "EKU=serverAuth,clientAuth", *store],
            ["-importcert", "-noprompt", "-alias", "ca", "-file", self.ca_file, "-keystore", broker, *store],
            ["-importcert", "-noprompt", "-alias", "broker", "-file", crt, "-keystore", broker, *store],
            ["-importcert", "-noprompt", "-alias", "ca", "-file", self.ca_file, "-keystore", trust, *store],
        ]
        for step in steps:
            _run_keytool(keytool, [str(a) for a in step], store_password)
        for path in (ca, csr, crt):
            path.unlink()
        for path in (broker, trust):
            path.chmod(0o600)
        return _listener_security(security, broker, trust, store_password, users.get("broker_password"))

    def _write_client_env(self, security: str) -> None:
        """The clients' settings as shell lines (``set -a; . client.env; set +a``), mode 0600."""
        lines = [f"# sentistream client settings for the local broker ({security}); the bootstrap comes from "
                 "its state file. Load with: set -a; . THIS_FILE; set +a"]
        lines += [f"{k}={shlex.quote(v)}" for k, v in self.client_settings(security).items()]
        _write_private(self.client_env_file, "\n".join(lines) + "\n")

    def _start_node(self, java: str, libs: Path, index: int) -> int:
        node = self._node_dir(index)
        cmd = [
            java, "-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={node / 'logs'}",
            f"-Dlog4j2.configurationFile={node / 'log4j2.properties'}",
            "-cp", f"{libs}/*", "kafka.Kafka", str(node / "server.properties"),
        ]
        with open(node / "stdout.log", "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        return proc.pid

    def _wait_ready(self, state: ClusterState, indexes: list[int], timeout: float) -> None:
        """Until every node in ``indexes`` is a live (registered, unfenced) broker of the cluster."""
        deadline = time.monotonic() + timeout
        want = {i + 1 for i in indexes}
        bootstrap = ",".join(state.node_bootstrap(i) for i in indexes)
        while time.monotonic() < deadline:
            dead = [i for i in indexes if not _alive(state.pids[i])]
            if dead:
                raise BrokerError(f"node {dead[0] + 1} exited while starting; last log lines:\n"
                                  f"{self.log_tail(index=dead[0])}")
            if want <= live_broker_ids(bootstrap, **self.client_config(state.security)):
                return
            time.sleep(0.3)
        raise BrokerError(f"the local broker did not come up in {timeout:.0f} s; last log lines:\n"
                          f"{self.log_tail(index=indexes[0])}")


def acl_properties() -> dict[str, str]:
    """Broker settings that enforce ACLs on a PLAINTEXT cluster.

    Every client here, the nodes themselves included, is ``User:ANONYMOUS`` (no authentication),
    and a resource with no ACL at all is open to everyone. So the nodes keep talking to each other
    (no ACL ever names the cluster resource) and a test can still deny one thing, e.g. writes to
    one topic, with a DENY ACL for ``User:ANONYMOUS``. No ``super.users``: a super user skips the
    ACLs, and ANONYMOUS as one would make every DENY a no-op.
    """
    return {
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found": "true",
    }


def live_broker_ids(bootstrap: str, **config: Any) -> set[int]:
    """Node ids of the brokers the cluster reports as live; empty when none answers. ``config``:
    kafka-python security settings (:meth:`LocalCluster.client_config`)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), request_timeout_ms=3000,
                                 bootstrap_timeout_ms=3000, client_id="sentistream-probe", **config)
    except KafkaError:
        return set()
    try:
        brokers = admin.describe_cluster().get("brokers", [])
        return {b["broker_id"] for b in brokers if not b.get("is_fenced")}
    except KafkaError:
        return set()
    finally:
        admin.close()


# -- security helpers ------------------------------------------------------------------------------
def _listener_security(security: str, keystore: Path, truststore: Path, store_password: str,
                       broker_password: str | None) -> dict[str, str]:
    """The nodes' TLS (and SCRAM) properties. The nodes talk to each other over the same secured
    listener, as the broker user; the controller listener stays plaintext on loopback."""
    props = {
        "ssl.keystore.type": "PKCS12", "ssl.keystore.location": str(keystore),
        "ssl.keystore.password": store_password, "ssl.key.password": store_password,
        "ssl.truststore.type": "PKCS12", "ssl.truststore.location": str(truststore),
        "ssl.truststore.password": store_password, "ssl.client.auth": "none",
    }
    if security == "sasl_ssl":
        jaas = (f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{BROKER_USER}" '
                f'password="{broker_password}";')
        props |= {"sasl.enabled.mechanisms": SCRAM_MECHANISM, "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
                  f"listener.name.sasl_ssl.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": jaas}
    return props


def _scram_arguments(stored: dict[str, str]) -> list[str]:
    """StorageTool's ``--add-scram`` arguments: the SCRAM users exist from the first start on."""
    users = {CLIENT_USER: stored["client_password"], BROKER_USER: stored["broker_password"]}
    args = []
    for name, password in users.items():
        args += ["--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={password}]"]
    return args


def _keytool(java: str) -> str:
    """The JDK's keytool: next to ``java``, else on the PATH."""
    beside = Path(java).resolve().parent / "keytool"
    found = str(beside) if beside.exists() else shutil.which("keytool")
    if found is None:
        raise BrokerError("keytool is not installed: --security ssl|sasl_ssl needs a full JDK (keytool)")
    return found


def _run_keytool(keytool: str, args: list[str], store_password: str) -> None:
    """One keytool step; the store password comes from the environment (``-storepass:env``),
    never from the command line."""
    env = {**os.environ, "STOREPASS": store_password}
    result = subprocess.run([keytool, *args], capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise BrokerError(f"keytool {args[0]} failed: {(result.stderr or result.stdout).strip()[-300:]}")


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read (it may hold a secret), from the first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    path.chmod(0o600)


def _argfile_quote(arg: str) -> str:
    """One argument for a ``java @file``: quoted, backslashes doubled (the launcher's escapes)."""
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True
