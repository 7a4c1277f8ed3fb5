"""The one place that creates Kafka client objects; everything else receives plain records.

Also resolves which cluster to talk to: the configured bootstrap, else the local broker that
``sentistream broker up`` started (its state file), else a plain error.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from kafka.errors import KafkaError, TopicAlreadyExistsError

from sentistream.worker.contract import BROKER_DEFAULT_MAX_MESSAGE_BYTES
from sentistream.worker.errors import UserError
from sentistream.worker.settings import Settings

log = logging.getLogger(__name__)

# settings.rebalance -> the group's assignors (eager: kafka-python's default pair)
ASSIGNORS = {"cooperative": (CooperativeStickyAssignor,),
             "eager": (RangePartitionAssignor, RoundRobinPartitionAssignor)}

# Large enough for any input record plus our dead-letter headers.
MAX_REQUEST_BYTES = 8 * 1024 * 1024


class NoBrokerConfigured(RuntimeError):
    pass


def resolve_bootstrap(settings: Settings) -> str:
    """The configured cluster. (The ``sentistream`` command fills it in with the local broker's
    address when ``sentistream broker up`` started one and nothing else is configured.)"""
    if settings.bootstrap_servers:
        return settings.bootstrap_servers
    raise NoBrokerConfigured("no Kafka configured: set KAFKA_BOOTSTRAP_SERVERS or run `sentistream broker up`")


def brokers_answering(bootstrap: str, **config: Any) -> int:
    """How many brokers the cluster reports; 0 when it does not answer."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), request_timeout_ms=3000,
                                 client_id="sentistream-probe", **config)
    except KafkaError:
        return 0
    try:
        return len(admin.describe_cluster().get("brokers", []))
    except KafkaError:
        return 0
    finally:
        admin.close()


def admin(settings: Settings, bootstrap: str) -> KafkaAdminClient:
    return KafkaAdminClient(**settings.kafka_client_config(bootstrap))


def consumer(settings: Settings, bootstrap: str, **overrides: Any) -> KafkaConsumer:
    cfg: dict[str, Any] = {
        **settings.kafka_client_config(bootstrap),
        "group_id": settings.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": max(500, settings.batch_size * 4),
        "fetch_max_wait_ms": 500,  # a long poll: returns as soon as data arrives; idle = 2 fetches/s
        "isolation_level": "read_committed",
        "session_timeout_ms": 10_000,
        "heartbeat_interval_ms": 2_000,
        "max_poll_interval_ms": 300_000,
        "partition_assignment_strategy": ASSIGNORS[settings.rebalance],
    }
    cfg.update(overrides)
    return KafkaConsumer(**cfg)


def producer(settings: Settings, bootstrap: str, **overrides: Any) -> KafkaProducer:
    cfg: dict[str, Any] = {
        **settings.kafka_client_config(bootstrap),
        "acks": "all",
        # kafka-python's idempotent producer turns one refused record (too large, not authorized)
        # into a fatal state in which every later send fails. Without it, one request in flight
        # per connection keeps each partition's order; a retried send may duplicate, which
        # at-least-once allows. Transactions (exactly-once) switch idempotence back on.
        "enable_idempotence": False,
        "max_in_flight_requests_per_connection": 1,
        "linger_ms": 0,  # results go out at once (latency); under load batches form anyway
        "batch_size": 64 * 1024,
        "max_request_size": MAX_REQUEST_BYTES,
        "compression_type": None,
        # send() blocks at most this long for a topic's metadata: then the send fails, its
        # partition is rewound and retried (worker/delivery.py), and the others flow on
        "max_block_ms": settings.publish_block_ms,
        # a worker never creates a topic by publishing to it (with the broker's defaults): a
        # deleted output or dead-letter topic blocks its partitions until it is back
        "allow_auto_create_topics": False,
    }
    cfg.update(overrides)
    producer = KafkaProducer(**cfg)
    # kafka-python 3.0.12 does not hand allow_auto_create_topics to its cluster metadata, whose
    # requests then ask the broker to create any topic they name: set it where it is read.
    producer._metadata.config["allow_auto_create_topics"] = cfg["allow_auto_create_topics"]
    return producer


def topic_max_bytes(client: KafkaAdminClient, topics: list[str]) -> dict[str, int]:
    """Each topic's ``max.message.bytes`` (the broker default where it cannot be read), so the
    worker refuses an oversized result itself instead of having the broker refuse it."""
    from kafka.admin import ConfigResource, ConfigResourceType

    limits = dict.fromkeys(topics, BROKER_DEFAULT_MAX_MESSAGE_BYTES)
    try:
        described = client.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t, ["max.message.bytes"])
                                             for t in topics])
        for topic, configs in described.get("topic", {}).items():
            value = configs.get("max.message.bytes", {}).get("value")
            if value is not None:
                limits[topic] = int(value)
    except KafkaError as exc:
        log.warning("cannot read max.message.bytes of %s (%s); assuming the broker default", topics, exc)
    return limits


def committed_with_metadata(consumer: KafkaConsumer, tps: set) -> dict[Any, tuple[int, str] | None]:
    """Each partition's committed offset and its metadata string (None: nothing committed)."""
    out: dict[Any, tuple[int, str] | None] = {}
    for tp in tps:
        got = consumer.committed(tp, metadata=True)
        out[tp] = None if got is None else (got.offset, got.metadata or "")
    return out


def topic_known(producer: KafkaProducer, topic: str) -> bool:
    """Whether the producer has ``topic``'s metadata, without waiting; when not, it is asked for in
    the background (the producer's sender thread), so a later call may say yes."""
    if producer._metadata.partitions_for_topic(topic) is not None:
        return True
    producer._sender.add_topic(topic)
    producer._metadata.request_update()
    producer._sender.wakeup()
    return False


def coordinator_unknown(consumer: KafkaConsumer) -> bool:
    """Whether the consumer has lost its group coordinator (the broker is unreachable or moving).
    kafka-python has no public call for this; it is read here, in the one module that knows the
    client."""
    coordinator = getattr(consumer, "_coordinator", None)
    return coordinator is not None and coordinator.coordinator_unknown()


def topic_specs(settings: Settings) -> dict[str, dict[str, Any]]:
    """The project's three topics. The dead-letter topic accepts records as large as any input."""
    return {
        settings.input_topic: {"num_partitions": settings.partitions},
        settings.output_topic: {"num_partitions": settings.partitions},
        settings.dlq_topic: {"num_partitions": settings.partitions,
                             "configs": {"max.message.bytes": str(MAX_REQUEST_BYTES)}},
    }


def control_topic_spec(settings: Settings) -> dict[str, dict[str, Any]]:
    """The model-command topic (worker/control.py): one partition (commands stay in order),
    compacted (the latest command per key is kept for workers that start later)."""
    return {settings.control_topic: {"num_partitions": 1, "configs": {"cleanup.policy": "compact"}}}


def control_consumer(settings: Settings, bootstrap: str) -> KafkaConsumer:
    """A group-less consumer for the control topic: every worker reads every command."""
    return consumer(settings, bootstrap, group_id=None, client_id=f"{settings.client_id}-control",
                    max_poll_records=100)


def ensure_topics(client: KafkaAdminClient, specs: dict[str, dict[str, Any]]) -> list[str]:
    """Create the topics that do not exist yet; return the names created. Idempotent."""
    existing = set(client.list_topics())
    missing = {name: spec for name, spec in specs.items() if name not in existing}
    if not missing:
        return []
    with contextlib.suppress(TopicAlreadyExistsError):  # a concurrent creator won the race
        client.create_topics(missing, wait_for_metadata=True)
    log.info("created topics %s", sorted(missing))
    return sorted(missing)


def ensure_topics_exist(settings: Settings, specs: dict[str, dict[str, Any]]) -> list[str]:
    """:func:`ensure_topics` through an admin client of its own (closed after)."""
    client = admin(settings, resolve_bootstrap(settings))
    try:
        return ensure_topics(client, specs)
    finally:
        client.close()


def describe_topics(client: KafkaAdminClient, names: list[str]) -> list[dict[str, Any]]:
    rows = []
    for topic in client.describe_topics(names):
        rows.append({
            "topic": topic["topic"] if "topic" in topic else topic.get("name"),
            "partitions": len(topic.get("partitions", [])),
            "error_code": topic.get("error_code", 0),
        })
    return rows


# -- pre-flight: TLS trust and SASL credentials, checked by hand ---------------------------------
PROBE_TIMEOUT_S = 10.0
_SASL_HANDSHAKE, _SASL_AUTHENTICATE = 17, 36  # Kafka API keys; both at version 1 (not "flexible")
_UNSUPPORTED_SASL_MECHANISM, _ILLEGAL_SASL_STATE, _SASL_AUTHENTICATION_FAILED = 33, 34, 58


def preflight(settings: Settings, bootstrap: str) -> None:
    """Fail fast, with one line that names the cause, when the broker's certificate is not trusted
    or the SASL credentials are wrong (a :class:`UserError`); return quietly otherwise.

    kafka-python 3.0.12 reports neither. A failed TLS handshake is retried until
    ``bootstrap_timeout_ms`` (30 s) and ends in "Unable to bootstrap". A refused SASL login looks to
    it like a dropped connection: the broker sends its SaslAuthenticate error and closes at once,
    and kafka-python's reader, seeing the end of the stream in the same read, drops the bytes that
    came with it; so it retries that too. This probes the first bootstrap server that accepts a
    connection, with blocking sockets: the TLS handshake with the clients' trust settings, then
    SaslHandshake and SaslAuthenticate with kafka-python's own SASL mechanism. Whatever else goes
    wrong (nothing listening, a timeout) is left to the clients, which retry as they always did.
    """
    protocol = settings.security_protocol
    if protocol == "PLAINTEXT":
        return
    context = tls_context(settings) if protocol.endswith("SSL") else None
    for host, port in _servers(bootstrap):
        try:
            sock = socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S)
        except OSError:
            continue
        with contextlib.ExitStack() as stack:
            stack.callback(sock.close)
            conn: socket.socket | None = sock
            if context is not None:
                conn = _tls_handshake(context, sock, host, port, settings)
                if conn is not None:
                    stack.callback(conn.close)
            if conn is not None and protocol.startswith("SASL"):
                _sasl_login(conn, f"{host}:{port}", settings)
            elif conn is not None:
                _no_sasl_wanted(conn, f"{host}:{port}", settings)
        return


def tls_context(settings: Settings) -> ssl.SSLContext:
    """The TLS context kafka-python builds from the same settings; a file it cannot use is one line.

    An encrypted ``ssl_keyfile`` without ``ssl_password`` fails here instead of OpenSSL asking
    for a pass phrase on the terminal."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.ssl_cafile is not None:
        try:
            ctx.load_verify_locations(str(settings.ssl_cafile))
        except (OSError, ssl.SSLError) as exc:
            raise UserError(f"ssl_cafile {settings.ssl_cafile}: cannot load a CA certificate from it "
                            f"({getattr(exc, 'reason', None) or exc.strerror or exc})") from None
    else:
        ctx.load_default_certs()
    if settings.ssl_certfile is not None:
        password = settings.ssl_password.get_secret_value() if settings.ssl_password else (lambda: b"")
        try:
            ctx.load_cert_chain(str(settings.ssl_certfile), str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
                                password=password)
        except ssl.SSLError:  # OpenSSL says no more than "PEM lib"
            hint = "wrong ssl_password, or a key that does not match the certificate" if settings.ssl_password \
                else "an encrypted key needs ssl_password (SENTISTREAM_SSL_PASSWORD)"
            raise UserError(f"ssl_keyfile {settings.ssl_keyfile or settings.ssl_certfile}: cannot load it with "
                            f"ssl_certfile {settings.ssl_certfile}: {hint}") from None
        except OSError as exc:
            raise UserError(f"ssl_certfile {settings.ssl_certfile} / ssl_keyfile {settings.ssl_keyfile}: "
                            f"{exc.strerror or exc}") from None
    return ctx


def _servers(bootstrap: str) -> list[tuple[str, int]]:
    """``host:port`` entries (``[v6]:port`` too) of a bootstrap list."""
    out = []
    for entry in filter(None, (e.strip() for e in bootstrap.split(","))):
        host, _, port = entry.rpartition(":")
        if host and port.isdigit():
            out.append((host.strip("[]"), int(port)))
    return out


def _tls_handshake(context: ssl.SSLContext, sock: socket.socket, host: str, port: int,
                   settings: Settings) -> ssl.SSLSocket | None:
    """The TLS session with the broker; None when it timed out or was cut (inconclusive)."""
    where = f"{host}:{port}"
    try:
        return context.wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        why = exc.verify_message or exc.reason or "certificate verify failed"
        if exc.verify_code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
            raise UserError(f"TLS: the broker's certificate at {where} is not valid for the name {host}: "
                            f"certificate verify failed: {why}") from None
        trust = f"ssl_cafile {settings.ssl_cafile}" if settings.ssl_cafile else "the system's CA certificates " \
            "(no ssl_cafile set)"
        raise UserError(f"TLS: the broker's certificate at {where} is not trusted by {trust}: "
                        f"certificate verify failed: {why}") from None
    except ssl.SSLError as exc:
        raise UserError(f"TLS: the handshake with {where} failed ({exc.reason or exc}): is it a TLS listener? "
                        f"(security_protocol {settings.security_protocol})") from None
    except OSError as exc:
        log.debug("TLS pre-flight to %s inconclusive: %s", where, exc)
        return None


def _no_sasl_wanted(conn: socket.socket, where: str, settings: Settings) -> None:
    """An SSL client on a SASL_SSL listener: the broker would drop it at its first real request
    and kafka-python would retry for 30 s. A SaslHandshake tells: a SASL listener answers it with
    its mechanisms, any other refuses it (ILLEGAL_SASL_STATE)."""
    try:
        body = _kafka_request(conn, _SASL_HANDSHAKE, _kafka_string("PLAIN"), settings.client_id)
        error, offered = struct.unpack_from(">h", body)[0], _read_strings(body, 2)
    except (OSError, struct.error) as exc:
        log.debug("TLS pre-flight to %s inconclusive: %s", where, exc)
        return
    if error in (0, _UNSUPPORTED_SASL_MECHANISM):
        raise UserError(f"the listener at {where} wants a SASL login (it offers {', '.join(offered)}): set "
                        "security_protocol SASL_SSL with sasl_mechanism, sasl_username and sasl_password")


def _sasl_login(conn: socket.socket, where: str, settings: Settings) -> None:
    """SaslHandshake, then SaslAuthenticate rounds until the mechanism is done; a refusal is one line."""
    try:
        from kafka.net.sasl import get_sasl_mechanism
    except ImportError:  # a kafka-python that moved it: the clients' own errors will have to do
        return
    name, user = settings.sasl_mechanism, settings.sasl_username
    mechanism = get_sasl_mechanism(name)(**settings.kafka_client_config(where))
    try:
        body = _kafka_request(conn, _SASL_HANDSHAKE, _kafka_string(name), settings.client_id)
        error, offered = struct.unpack_from(">h", body)[0], _read_strings(body, 2)
        if error == _UNSUPPORTED_SASL_MECHANISM:
            raise UserError(f"the broker at {where} does not offer SASL mechanism {name} "
                            f"(it offers {', '.join(offered) or 'none'})")
        if error:
            raise UserError(f"the listener at {where} does not take a SASL login (error {error}): is it an SSL "
                            f"or PLAINTEXT listener? (security_protocol {settings.security_protocol})")
        while not mechanism.is_done():
            token = mechanism.auth_bytes()
            body = _kafka_request(conn, _SASL_AUTHENTICATE, struct.pack(">i", len(token)) + token, settings.client_id)
            error, message, data = _read_authenticate(body)
            if error == _SASL_AUTHENTICATION_FAILED:
                raise UserError(f"authentication failed for user {user} ({name}) at {where}: check the password "
                                "(sasl_password) and the user name")
            if error:
                raise UserError(f"SASL login of user {user} ({name}) at {where} failed: error {error}: {message}")
            mechanism.receive(data)
    except (OSError, struct.error) as exc:
        log.debug("SASL pre-flight to %s inconclusive: %s", where, exc)
        return
    except ValueError as exc:  # SCRAM: the server's proof did not verify
        raise UserError(f"SASL login of user {user} ({name}) at {where}: the broker's reply did not verify: {exc}") \
            from None


def _kafka_request(conn: socket.socket, api_key: int, body: bytes, client_id: str) -> bytes:
    """One request at version 1 (request header v1) and its response's body (after the correlation id)."""
    cid = client_id.encode()
    payload = struct.pack(">hhih", api_key, 1, 1, len(cid)) + cid + body
    conn.sendall(struct.pack(">i", len(payload)) + payload)
    size = struct.unpack(">i", _recv_exactly(conn, 4))[0]
    return _recv_exactly(conn, size)[4:]


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = conn.recv(left)
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _kafka_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


def _read_strings(body: bytes, offset: int) -> list[str]:
    """An array of non-null strings (int32 count, then int16 length + bytes each)."""
    (count,), offset, out = struct.unpack_from(">i", body, offset), offset + 4, []
    for _ in range(max(count, 0)):
        (length,) = struct.unpack_from(">h", body, offset)
        out.append(body[offset + 2:offset + 2 + length].decode(errors="replace"))
        offset += 2 + length
    return out


def _read_authenticate(body: bytes) -> tuple[int, str, bytes]:
    """SaslAuthenticate v1 response: error code, error message (nullable), auth bytes."""
    error, length = struct.unpack_from(">hh", body)
    offset = 4 + max(length, 0)
    message = body[4:offset].decode(errors="replace") if length >= 0 else ""
    (size,) = struct.unpack_from(">i", body, offset)
    return error, message, body[offset + 4:offset + 4 + max(size, 0)]
