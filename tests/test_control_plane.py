"""A control plane that only operators steer (#23), on real brokers.

- A hostile control stream: about a thousand random and malicious control records (confluent-kafka
  as the foreign producer, kcat for records kafka-python cannot parse, one 10 MB value) while a
  ``sentistream worker --processes 2`` serves a steady input: each process refuses every one of
  them, none restarts, and then shadow, promote and rollback still work on both processes (every
  input partition's results go 1.3.0 → 1.3.0 with a shadow → the candidate → 1.3.0); every input
  is accounted for.
- A worker started after shadow B, promote B, rollback A serves what the running one serves (A,
  no shadow), from the whole log and from what compaction would leave of it.
- ACLs on a SASL_SSL broker: the workers' principal may read the control topic, not write it; an
  operator principal writes it and the workers follow.
Figures: ``pytest -s``.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ACL, ACLOperation, ACLPermissionType, ScramMechanism, UserScramCredentialUpsertion
from kafka.errors import TopicAuthorizationFailedError

from sentistream.broker.local import CLIENT_USER, KAFKA_VERSION, SCRAM_MECHANISM, LocalCluster, provision_jars
from sentistream.cli.model import write
from sentistream.worker import kafka_clients
from sentistream.worker.bundle import MANIFEST, Manifest, default_bundle_path
from sentistream.worker.control import manifest_digest
from sentistream.worker.settings import Settings, default_home
from tests.candidates import SHORT, candidate_bundle
from tests.cluster import ForeignRecord, KafkaCluster, _pattern, own_cluster
from tests.polling import wait_for
from tests.streams import Figures, Keeper, Stream
from tests.workers import WorkerProcess, json_items

pytestmark = pytest.mark.kafka

SHIPPED = default_bundle_path()
OLD = Manifest.read(SHIPPED).version
RANDOM_RECORDS = 969  # besides the crafted ones: 1,000 hostile records in all
UNREADABLE = 3  # kcat records with a header key that is not UTF-8



def roots_of(tmp_path: Path) -> tuple[Path, str]:
    """A bundle root for the test's candidates, and the workers' bundle_roots setting."""
    roots = tmp_path / "roots"
    roots.mkdir(exist_ok=True)
    return roots, f"{SHIPPED.parent}:{roots}"


# -- the hostile stream ------------------------------------------------------------------------------
def command_value(**fields) -> bytes:
    base = {"command": "shadow", "bundle": str(SHIPPED), "sha256": manifest_digest(SHIPPED)}
    return json.dumps({**base, **fields}).encode()


def crafted_bundles(tmp_path: Path, roots: Path) -> dict[str, Path]:
    """Bundles a hostile record may name: genuine ones in the wrong place, broken ones in the right."""
    made = {"outside": candidate_bundle(tmp_path / "outside" / "b"),
            "labels": candidate_bundle(roots / "labels", version="2.0.0", labels=["a", "b", "c", "d", "e"]),
            "garbage": candidate_bundle(roots / "garbage"), "devzero": candidate_bundle(roots / "devzero"),
            "fifo": candidate_bundle(roots / "fifo")}
    (roots / "escape").symlink_to(tmp_path / "outside")
    (made["garbage"] / "model.onnx").unlink()
    (made["garbage"] / "model.onnx").write_bytes(b"not a model")
    Manifest.read(made["garbage"]).rehashed(made["garbage"]).write(made["garbage"])  # hashes match: ORT refuses
    raw = json.loads((made["devzero"] / MANIFEST).read_text())
    raw["files"]["/dev/zero"] = "0" * 64
    (made["devzero"] / MANIFEST).write_text(json.dumps(raw))
    (made["fifo"] / "tokenizer.json").unlink()
    os.mkfifo(made["fifo"] / "tokenizer.json")
    return made


def crafted_records(tmp_path: Path, roots: Path, candidate: Path) -> list[ForeignRecord]:
    """One record of each malicious kind (each is refused: none names a usable bundle rightly)."""
    bad = crafted_bundles(tmp_path, roots)
    true = {name: manifest_digest(path) for name, path in bad.items()}
    out = bad["outside"]
    values = [
        command_value(bundle="file://[::1/x"), command_value(bundle=f"{roots}/{'a' * 300}", sha256="ab" * 32),
        command_value(bundle="models/relative"), command_value(bundle="https://evil.example/b"),
        command_value(bundle="/dev/zero", sha256="ab" * 32), command_value(bundle=str(out), sha256=true["outside"]),
        command_value(bundle=f"{roots}/escape/b", sha256=true["outside"]),
        command_value(bundle=f"{roots}/../outside/b", sha256=true["outside"]),
        command_value(bundle=str(candidate), sha256=f"{random.Random(1).getrandbits(256):064x}"),
        command_value(bundle=str(bad["garbage"]), sha256=true["garbage"]),
        command_value(bundle=str(bad["devzero"]), sha256=true["devzero"]),
        command_value(bundle=str(bad["fifo"]), sha256=true["fifo"]),
        command_value(bundle=str(candidate), sha256=manifest_digest(candidate), grant="all"),
        b"[]", b"42", b'"promote"', b"null", b"true", b"", b"[" * 60_000, b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
        b'{"command": "shadow", "bundle": "\xff\xfe"}',
    ]
    records = [ForeignRecord(v, key=b"shadow") for v in values]
    records += [ForeignRecord(None, key=b"serving"), ForeignRecord(None, key=b"shadow"),  # tombstones
                # a true command under the wrong key is refused before its bundle is read (a compacted
                # topic takes no record without a key)
                ForeignRecord(command_value(bundle=str(candidate), sha256=manifest_digest(candidate)), key=b"serving"),
                ForeignRecord(command_value(bundle=str(candidate), sha256=manifest_digest(candidate)), key=b""),
                ForeignRecord(command_value(command="promote", bundle=str(bad["labels"]), sha256=true["labels"]),
                              key=b"serving")]
    return records


def random_records(rng: random.Random, n: int) -> list[ForeignRecord]:
    """Random bytes and random JSON, with random keys and headers (NULL header values included)."""
    fields = ["command", "bundle", "sha256", "issued_at", "issued_by", "allow_label_change", "x"]
    scalars = [None, True, 0, -1, 1e308, "shadow", "promote", "rollback", "/", "/etc/passwd", "a" * 64, "é\u0000"]
    out = []
    for i in range(n):
        if i % 2:
            value: bytes | None = rng.randbytes(rng.randint(0, 3000))
        else:
            value = json.dumps({rng.choice(fields): rng.choice(scalars) for _ in range(rng.randint(0, 6))}).encode()
        key = rng.choice([b"serving", b"shadow", rng.randbytes(8)])
        headers = [(rng.choice(["h", "sentistream-model", "x"]), rng.choice([None, b"", rng.randbytes(5)]))
                   for _ in range(rng.randint(0, 3))]
        out.append(ForeignRecord(value, key=key, headers=headers))
    return out


def write_hostile(kafka: KafkaCluster, topic: str, records: list[ForeignRecord]) -> int:
    """Write the records, a 10 MB value and the unreadable ones; how many were written."""
    kafka.produce_foreign(topic, records)
    big = KafkaProducer(bootstrap_servers=kafka.bootstrap.split(","), acks="all", max_request_size=16 << 20)
    try:
        big.send(topic, key=b"shadow", value=command_value(issued_by="x" * 10_000_000)).get(timeout=30)
    finally:
        big.close(5)
    for i in range(UNREADABLE):
        kafka.produce_kcat(topic, 0, command_value(issued_by=str(i)), headers=[b"\xff\xfe=v"], key=b"shadow")
    return len(records) + 1 + UNREADABLE


def phases(kafka: KafkaCluster, s: Settings, want: int) -> dict[int, list[tuple[str, bool]]]:
    """Per input partition, the successive (version, shadowed) states of its results, in offset order."""
    got = kafka.collect([s.output_topic], want, timeout=60)
    rows: dict[int, list[tuple[int, str, bool]]] = {}
    for r in got:
        value, headers = json.loads(r.value), dict(r.headers)
        rows.setdefault(value["source"]["partition"], []).append(
            (value["source"]["offset"], value["model"]["version"], "sentistream-shadow" in headers))
    out: dict[int, list[tuple[str, bool]]] = {}
    for partition, seen in rows.items():
        states = [(v, shadowed) for _, v, shadowed in sorted(seen)]
        out[partition] = [st for i, st in enumerate(states) if i == 0 or states[i - 1] != st]
    return out


def test_a_hostile_control_stream_is_refused_and_model_control_still_works(kafka: KafkaCluster, topics,
                                                                           tmp_path: Path, unique: str) -> None:
    started = time.monotonic()
    roots, bundle_roots = roots_of(tmp_path)
    candidate = candidate_bundle(roots / "candidate")
    s = topics(bundle_roots=bundle_roots, control_topic=f"ctl-{unique}", partitions=2)  # one per process
    spec = kafka_clients.control_topic_spec(s)
    spec[s.control_topic]["configs"]["max.message.bytes"] = str(16 << 20)  # lets the 10 MB value in
    kafka.create_topics(s, spec)
    records = crafted_records(tmp_path, roots, candidate) + random_records(random.Random(23), RANDOM_RECORDS)
    st = Stream(kafka, s, "at-least-once", Keeper(tmp_path), f"tx-{unique}")
    try:
        w = st.worker("w", "--processes", "2")
        st.feed(60)
        st.flowing()
        hostile = write_hostile(kafka, s.control_topic, records)
        written = time.monotonic()
        wait_for(lambda: w.metric("sentistream_control_refused_total") >= 2 * hostile, 60,
                 "both processes refuse every hostile record")
        refused = {r: w.metric("sentistream_control_refused_total", reason=r) / 2 for r in
                   ("invalid_command", "tombstone", "too_large", "wrong_key", "unreadable_record", "unknown_bundle",
                    "outside_roots", "hash_mismatch", "label_change", "load_failed", "error")}
        assert w.metric("sentistream_worker_restarts_total") == 0 and not st.keeper.restarts
        hostile_done = time.monotonic()

        for step, command in (("shadow", "shadow"), ("promote", "promote"), ("rollback", "rollback")):
            bundle = SHIPPED if step == "rollback" else candidate
            print("\n" + write(s, command, bundle))
            if step == "shadow":
                wait_for(lambda: w.metric("sentistream_shadow_predictions_total") > 0, 30, "the shadow classifies")
            else:
                wait_for(lambda c=command: w.metric("sentistream_model_swaps_total", command=c) == 2, 30,
                         f"both processes {command}")
            time.sleep(2.0)  # steady input in this state: a duration, not a condition
        expected = st.stop_feeding()
        figures = st.reconcile(Figures("hostile control stream", "at-least-once", fault=False), expected)
        seen = phases(kafka, s, len(expected))
    finally:
        st.close()
    print(f"\nCONTROL hostile: {hostile} records refused by each of 2 processes {hostile_done - written:.1f} s after "
          f"they were written, by reason {refused}; test {time.monotonic() - started:.1f} s")
    assert sum(refused.values()) == hostile and refused["unreadable_record"] == UNREADABLE
    assert refused["too_large"] == 1 and refused["error"] == 0
    assert not figures.problems() and figures.dead_letters == 0, figures.report()
    assert figures.notes[0] == "stop exit codes {'w': 0}", figures.notes
    states = [(OLD, False), (OLD, True), (SHORT, False), (OLD, False)]
    assert sorted(seen) == [0, 1] and all(p == states for p in seen.values()), seen


# -- a worker that starts later ------------------------------------------------------------------------
def state_of(w: WorkerProcess) -> tuple[float, float, float]:
    """What a worker serves and shadows: (serving the shipped version, serving the candidate, shadows it)."""
    return (w.metric("sentistream_model_info", version=OLD), w.metric("sentistream_model_info", version=SHORT),
            w.metric("sentistream_shadow_info", version=SHORT))


def test_a_late_starter_reaches_the_state_of_the_running_workers(kafka: KafkaCluster, topics, tmp_path: Path,
                                                                 unique: str) -> None:
    roots, bundle_roots = roots_of(tmp_path)
    candidate = candidate_bundle(roots / "candidate")
    s = topics(bundle_roots=bundle_roots, control_topic=f"ctl-{unique}")
    compacted = s.model_copy(update={"control_topic": f"ctl-compacted-{unique}"})  # the same group
    kafka.create_topics(compacted, kafka_clients.control_topic_spec(compacted))
    workers: list[WorkerProcess] = []
    try:
        running = WorkerProcess(s).start(tmp_path, "running")
        workers.append(running)
        running.wait_ready()
        for command, bundle, done in (("shadow", candidate, lambda: state_of(running)[2] == 1),
                                      ("promote", candidate, lambda: state_of(running)[1] == 1),
                                      ("rollback", SHIPPED, lambda: state_of(running)[0] == 1)):
            write(s, command, bundle)
            wait_for(done, 30, f"the running worker carries out {command}")
        assert state_of(running) == (1, 0, 0)
        # what compaction keeps of the log: the latest record of each key, in order
        log = kafka.collect([s.control_topic], 3, timeout=30)
        latest = {r.key: r for r in log}
        kept = [r for r in log if latest[r.key] is r]
        assert [json.loads(r.value)["command"] for r in kept] == ["shadow", "rollback"]
        kafka.produce(compacted.control_topic, [(r.key, r.value) for r in kept])
        late = WorkerProcess(s).start(tmp_path, "late")
        late_compacted = WorkerProcess(compacted).start(tmp_path, "late-compacted")
        workers += [late, late_compacted]
        for w in (late, late_compacted):
            w.wait_ready(timeout=90)
            assert state_of(w) == state_of(running) == (1, 0, 0), w.log()
            assert w.metric("sentistream_control_refused_total") == 0
            assert w.metric("sentistream_model_swaps_total") == 0  # replayed to where it already was
        kafka.produce(s.input_topic, json_items(8))
        got = kafka.collect([s.output_topic], 8, timeout=60)
        assert len(got) == 8 and all("sentistream-shadow" not in dict(r.headers) for r in got)
        assert {json.loads(r.value)["model"]["version"] for r in got} == {OLD}
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.stop()


# -- ACLs: only operators write the control topic ------------------------------------------------------
OPERATOR = "operator"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, str]]:
    """A SASL_SSL broker that enforces ACLs (``broker up --security sasl_ssl --acls``), with a second
    SCRAM user, the operator; yields it and the operator's password."""
    home = tmp_path_factory.mktemp("acl-home")
    (home / f"kafka-{KAFKA_VERSION}").symlink_to(provision_jars(default_home()).parent, target_is_directory=True)
    with own_cluster(home=home, start=lambda local: local.up(nodes=1, port=0, timeout=150, acls=True,
                                                           security="sasl_ssl")) as cluster:
        password = uuid.uuid4().hex
        admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap.split(","), **cluster.local.client_config())
        try:
            admin.alter_user_scram_credentials(
                [UserScramCredentialUpsertion(OPERATOR, ScramMechanism.SCRAM_SHA_512, password)])
        finally:
            admin.close()
        yield cluster.local, password


def secured_settings(cluster: LocalCluster, user: str, password: str, **more) -> Settings:
    return Settings(bootstrap_servers=cluster.recorded().bootstrap, security_protocol="SASL_SSL",
                    sasl_mechanism=SCRAM_MECHANISM, sasl_username=user, sasl_password=password,
                    ssl_cafile=cluster.ca_file, metrics_port=0, home=cluster.home, **more)


def test_only_the_operator_principal_writes_the_control_topic(secured, tmp_path: Path) -> None:
    cluster, operator_password = secured
    worker_password = cluster.client_settings()["SENTISTREAM_SASL_PASSWORD"]
    unique = uuid.uuid4().hex[:8]
    roots, bundle_roots = roots_of(tmp_path)
    candidate = candidate_bundle(roots / "candidate")
    names = {"group_id": f"g-{unique}", "input_topic": f"in-{unique}", "output_topic": f"out-{unique}",
             "dlq_topic": f"dlq-{unique}", "control_topic": f"ctl-{unique}", "partitions": 2,
             "bundle_roots": bundle_roots}
    workers_view = secured_settings(cluster, CLIENT_USER, worker_password, **names)
    operators_view = secured_settings(cluster, OPERATOR, operator_password, **names)
    admin = kafka_clients.admin(operators_view, operators_view.bootstrap_servers)
    try:
        kafka_clients.ensure_topics(admin, {**kafka_clients.topic_specs(workers_view),
                                            **kafka_clients.control_topic_spec(workers_view)})
        topic = _pattern(workers_view.control_topic)  # docs/operations.md's recipe, through the admin API
        result = admin.create_acls([ACL(f"User:{CLIENT_USER}", "*", ACLOperation.READ, ACLPermissionType.ALLOW, topic),
                                    ACL(f"User:{OPERATOR}", "*", ACLOperation.ALL, ACLPermissionType.ALLOW, topic)])
        assert not result["failed"], result
    finally:
        admin.close()
    worker = WorkerProcess(workers_view, env={"SENTISTREAM_SASL_PASSWORD": worker_password}).start(tmp_path, "w")
    try:
        worker.wait_ready(timeout=120)
        with pytest.raises(TopicAuthorizationFailedError):  # the workers' principal: read, never write
            write(workers_view, "shadow", candidate)
        written = write(operators_view, "shadow", candidate)
        print(f"\nACL: the workers' principal was refused; the operator's {written}")
        wait_for(lambda: worker.metric("sentistream_shadow_info", version=SHORT) == 1, 30, "the worker shadows")
        producer = kafka_clients.producer(workers_view, workers_view.bootstrap_servers)
        try:
            for key, value in json_items(6):
                producer.send(workers_view.input_topic, key=key, value=value)
            producer.flush(30)
        finally:
            producer.close(5)
        wait_for(lambda: worker.metric("sentistream_shadow_predictions_total") >= 6, 60, "the worker serves")
        assert worker.metric("sentistream_control_refused_total") == 0
        assert worker.metric("sentistream_model_info", version=OLD) == 1
        assert "cannot be read" not in worker.log()
    finally:
        assert worker.stop() == 0, worker.log()

