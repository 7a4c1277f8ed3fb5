"""The control topic as hostile input, without Kafka (worker/control.py, worker/model_ops.py): every
kind of bad record is refused with its reason and one log line and changes nothing; bundles load
only from under the bundle roots; the state is a fold that compaction cannot change."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from pathlib import Path

import pytest

from sentistream.worker import model_ops
from sentistream.worker.bundle import MANIFEST, Manifest, default_bundle_path
from sentistream.worker.control import ControlFeed, ControlRecord, State, bundle_path, fold, manifest_digest, read_command
from tests.candidates import SHORT, candidate_bundle
from tests.polling import wait_for
from tests.test_model_ops import SERVING, make_ops, record, refused

SHIPPED = default_bundle_path()


@pytest.fixture(scope="module")
def candidate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return candidate_bundle(tmp_path_factory.mktemp("candidate") / "short")


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    """The one bundle root of these tests' workers (besides the shipped models' folder)."""
    (tmp_path / "roots").mkdir()
    return tmp_path / "roots"


@pytest.fixture
def ops(roots: Path):
    return make_ops([SHIPPED.parent, roots])


def command_json(**fields) -> bytes:
    base = {"command": "shadow", "bundle": str(SHIPPED), "sha256": manifest_digest(SHIPPED)}
    return json.dumps({**base, **fields}).encode()


def assert_refused_alone(ops_, registry, rec: ControlRecord, reason: str, caplog) -> None:
    """``rec`` is refused for ``reason``, in one log line naming where it was, and changes nothing."""
    before = (ops_.state, ops_.pipeline.bundle, ops_.shadow)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="sentistream.worker.model_ops"):
        assert ops_.handle(rec) is False
    assert refused(registry) == {reason: 1}
    lines = [r for r in caplog.records if r.name == "sentistream.worker.model_ops"]
    assert len(lines) == 1 and rec.where in lines[0].getMessage() and reason in lines[0].getMessage()
    assert "\n" not in lines[0].getMessage()
    assert (ops_.state, ops_.pipeline.bundle, ops_.shadow) == before
    assert ops_.pipeline.model.version == SERVING


# -- records that hold no command ------------------------------------------------------------
BYTES = {
    "unparseable URI": (b"shadow", command_json(bundle="file://[::1/x"), "invalid_command"),
    "another host's file URI": (b"shadow", command_json(bundle="file://evil.example/models/x"), "invalid_command"),
    "another scheme": (b"shadow", command_json(bundle="https://evil.example/bundle"), "invalid_command"),
    "relative path": (b"shadow", command_json(bundle="models/sst5-minilm"), "invalid_command"),
    "NUL in the path": (b"shadow", command_json(bundle="/models/a\u0000b"), "invalid_command"),
    "tombstone": (b"shadow", None, "tombstone"),
    "10 MB value": (b"shadow", command_json(issued_by="x" * 10_000_000), "too_large"),
    "unknown field": (b"shadow", command_json(grant="everything"), "invalid_command"),
    "JSON array": (b"shadow", b'["shadow", "/models/x"]', "invalid_command"),
    "JSON number": (b"serving", b"1e400", "invalid_command"),
    "JSON string": (b"serving", b'"promote"', "invalid_command"),
    "JSON null": (b"serving", b"null", "invalid_command"),
    "empty value": (b"serving", b"", "invalid_command"),
    "deep array nesting": (b"shadow", b"[" * 60_000, "invalid_command"),
    "deep object nesting": (b"shadow", b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "invalid_command"),
    "not UTF-8": (b"shadow", b'{"command": "\xff\xfe"}', "invalid_command"),
    "random bytes": (b"\x00\xff", bytes(random.Random(7).getrandbits(8) for _ in range(512)), "invalid_command"),
    "unknown command": (b"serving", command_json(command="delete"), "invalid_command"),
    "short sha256": (b"shadow", command_json(sha256="ab" * 8), "invalid_command"),
    "sha256 not hex": (b"shadow", command_json(sha256="zz" * 32), "invalid_command"),
    "issued_by too long": (b"shadow", command_json(issued_by="x" * 1000), "invalid_command"),
    "issued_at infinite": (b"shadow", b'{"command": "shadow", "bundle": "/m", "sha256": "' + b"a" * 64
                           + b'", "issued_at": 1e999}', "invalid_command"),
    "key of another slot": (b"serving", command_json(), "wrong_key"),
    "no key": (None, command_json(), "wrong_key"),
}


@pytest.mark.parametrize("kind", BYTES)
def test_a_record_that_holds_no_command_is_refused_and_changes_nothing(ops, kind: str, caplog) -> None:
    key, value, reason = BYTES[kind]
    assert_refused_alone(*ops, ControlRecord("ctl[0]@42", key, value), reason, caplog)


def test_a_record_the_kafka_client_cannot_parse_is_refused(ops, caplog) -> None:
    rec = ControlRecord("ctl[0]@5", None, None, unreadable="CorruptRecordError: Found invalid record structure")
    assert_refused_alone(*ops, rec, "unreadable_record", caplog)


@pytest.mark.parametrize("raised", [RecursionError("maximum recursion depth exceeded"), MemoryError(),
                                    OSError(36, "File name too long"), PermissionError(13, "Permission denied"),
                                    type("Panic", (BaseException,), {})("a Rust panic")])
def test_whatever_handling_raises_is_a_refusal(ops, roots: Path, monkeypatch, raised: BaseException,
                                               caplog) -> None:
    """One boundary, not a list: anything but a process exit raised while a record is handled."""
    bundle = candidate_bundle(roots / "b")

    def explode(*_args, **_kwargs):
        raise raised

    monkeypatch.setattr(model_ops, "Bundle", explode)
    assert_refused_alone(*ops, record("shadow", bundle), "error", caplog)


def test_a_process_exit_is_not_a_refusal(ops, roots: Path, monkeypatch) -> None:
    bundle = candidate_bundle(roots / "b")

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(model_ops, "Bundle", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ops[0].handle(record("shadow", bundle))


# -- where bundles may come from -----------------------------------------------------------------
@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A genuine bundle (its true hash) outside the roots."""
    return candidate_bundle(tmp_path / "outside" / "b")


def test_a_bundle_under_the_roots_loads(ops, roots: Path) -> None:
    ops_, registry = ops
    assert ops_.handle(record("shadow", candidate_bundle(roots / "team" / "b")))
    assert ops_.shadow is not None and ops_.shadow.model.version == SHORT and refused(registry) == {}


def test_a_symlink_that_stays_under_the_roots_loads(ops, roots: Path) -> None:
    target = candidate_bundle(roots / "releases" / "b")
    (roots / "current").symlink_to(target)
    assert ops[0].handle(record("shadow", roots / "current"))


@pytest.mark.parametrize("how", ["outside", "symlink", "dot-dot", "file URI"])
def test_a_bundle_outside_the_roots_is_refused_even_with_its_true_hash(ops, roots: Path, outside: Path, how: str,
                                                                       caplog) -> None:
    if how == "symlink":
        (roots / "link").symlink_to(outside.parent)
        location = str(roots / "link" / "b")
    elif how == "dot-dot":
        location = f"{roots}/../outside/b"
    elif how == "file URI":
        location = outside.as_uri()
    else:
        location = str(outside)
    assert bundle_path(location).resolve() == outside.resolve()  # the very bundle, reached another way
    assert_refused_alone(*ops, record("shadow", location, sha256=manifest_digest(outside)), "outside_roots", caplog)


@pytest.mark.parametrize("how", ["missing", "name over 255 bytes", "a file", "no manifest"])
def test_a_bundle_that_is_not_there_is_refused(ops, roots: Path, how: str, caplog) -> None:
    location = {"missing": roots / "nowhere", "name over 255 bytes": roots / ("a" * 300),
                "a file": roots / "file", "no manifest": roots / "empty"}[how]
    (roots / "file").write_text("x")
    (roots / "empty").mkdir()
    assert_refused_alone(*ops, record("shadow", location, sha256="ab" * 32), "unknown_bundle", caplog)


def test_a_bundle_the_worker_may_not_read_is_refused(ops, roots: Path, monkeypatch, caplog) -> None:
    bundle = candidate_bundle(roots / "b")
    if os.geteuid() == 0:  # root reads anything: make the manifest's open fail as it would for a worker
        real_open = os.open

        def denied(path, *args, **kwargs):
            if str(path).startswith(str(bundle)):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr("sentistream.worker.bundle.os.open", denied)
    else:
        (bundle / MANIFEST).chmod(0)
    rec = record("shadow", bundle, sha256="ab" * 32)
    assert_refused_alone(*ops, rec, "load_failed", caplog)
    assert "Permission denied" in caplog.text


@pytest.mark.parametrize("name", ["../model.onnx", "/dev/zero", "sub/model.onnx", "..", "a\\b"])
def test_a_manifest_naming_a_file_outside_the_bundle_is_refused_without_reading_it(ops, roots: Path, name: str,
                                                                                   monkeypatch, caplog) -> None:
    bundle = candidate_bundle(roots / "b")
    raw = json.loads((bundle / MANIFEST).read_text())
    raw["files"][name] = "0" * 64
    (bundle / MANIFEST).write_text(json.dumps(raw))
    opened: list[str] = []
    real_open = os.open
    monkeypatch.setattr("sentistream.worker.bundle.os.open",
                        lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    assert_refused_alone(*ops, record("shadow", bundle), "load_failed", caplog)
    assert opened == [str(bundle / MANIFEST)]  # the manifest only: nothing it names


# -- hashes ----------------------------------------------------------------------------------------
def test_an_upper_case_sha256_is_the_same_hash(ops, roots: Path) -> None:
    ops_, registry = ops
    bundle = candidate_bundle(roots / "b")
    upper = manifest_digest(bundle).upper()
    assert ops_.handle(record("shadow", bundle, 1, sha256=upper))
    shadow_bundle = ops_.shadow.bundle
    assert ops_.handle(record("promote", bundle, 2, sha256=upper))
    assert ops_.pipeline.bundle is shadow_bundle and ops_.shadow is None  # not its own shadow, not loaded again
    assert ops_.handle(record("shadow", bundle, 3, sha256=upper))  # shadowing what serves: nothing to run
    assert ops_.shadow is None and ops_.pipeline.model.version == SHORT and refused(registry) == {}
    assert ops_.state.serving.command.sha256 == upper.lower()


# -- the state: a fold that compaction cannot change -----------------------------------------------
def compacted(records: list[ControlRecord], keep_older: random.Random | None = None) -> list[ControlRecord]:
    """What compaction may leave: the latest record of each key, in log order, and (with
    ``keep_older``) some older ones not cleaned yet."""
    latest = {r.key: r.where for r in records}
    return [r for r in records if latest[r.key] == r.where or (keep_older and keep_older.random() < 0.3)]


def test_after_shadow_promote_rollback_nothing_shadows_whether_compacted_or_not() -> None:
    a, b = str(SHIPPED), "/models/b"
    log = [read_command(record(name, path, i, sha256=sha)) for i, (name, path, sha) in
           enumerate([("shadow", b, "b" * 64), ("promote", b, "b" * 64), ("rollback", a, "a" * 64)])]
    assert fold(log) == State(serving=log[2], shadow=None)
    assert fold([log[0], log[2]]) == fold(log)  # what compaction keeps: the latest per key


def test_the_fold_of_a_compacted_log_is_the_fold_of_the_log() -> None:
    rng = random.Random(23)
    bundles = {name: (f"/models/{name}", name * 64) for name in "abc"}
    for _ in range(500):
        records = []
        for offset in range(rng.randint(1, 12)):
            path, sha = bundles[rng.choice("abc")]
            records.append(record(rng.choice(["shadow", "promote", "rollback"]), path, offset, sha256=sha))
        full = fold(read_command(r) for r in records)
        assert fold(read_command(r) for r in compacted(records)) == full
        assert fold(read_command(r) for r in compacted(records, keep_older=rng)) == full


def test_a_late_starter_reaches_the_running_workers_state_compacted_or_not(candidate: Path, roots: Path) -> None:
    b = roots / "b"
    shutil.copytree(candidate, b)
    log = [record("shadow", b, 0), record("promote", b, 1), record("rollback", SHIPPED, 2)]
    running, _ = make_ops([SHIPPED.parent, roots])
    for r in log:
        assert running.handle(r)
    late, late_compacted = make_ops([SHIPPED.parent, roots])[0], make_ops([SHIPPED.parent, roots])[0]
    late.replay(log)
    late_compacted.replay(compacted(log))
    assert [r.where for r in compacted(log)] == ["ctl[0]@0", "ctl[0]@2"]
    for ops_ in (running, late, late_compacted):
        assert ops_.pipeline.model.version == SERVING and ops_.shadow is None, ops_
        assert ops_.state == running.state


def test_a_late_starter_leaves_out_what_the_running_workers_refused(candidate: Path, roots: Path) -> None:
    b, broken = roots / "b", roots / "broken"
    shutil.copytree(candidate, b)
    candidate_bundle(broken, version="9.9.9")
    (broken / "model.onnx").unlink()  # a new inode: the shipped model it was linked to stays whole
    (broken / "model.onnx").write_bytes(b"not a model")
    Manifest.read(broken).rehashed(broken).write(broken)  # its hashes match: onnxruntime refuses it
    log = [record("shadow", b, 0), record("promote", b, 1), record("shadow", broken, 2, sha256=manifest_digest(broken)),
           record("promote", broken, 3, sha256=manifest_digest(broken))]
    running, running_metrics = make_ops([roots])
    assert [running.handle(r) for r in log] == [True, True, False, False]
    late, late_metrics = make_ops([roots])
    late.replay(log)
    for ops_ in (running, late):
        assert ops_.pipeline.model.version == SHORT and ops_.shadow is None
    assert refused(late_metrics) == {"load_failed": 2} == refused(running_metrics)


def test_the_command_a_worker_starts_with_is_in_its_state(candidate: Path) -> None:
    ops_, _ = make_ops([candidate.parent], shadow_bundle=candidate)
    assert ops_.start_shadow(candidate)
    started = ops_.state.shadow
    assert started.where == "--shadow-bundle" and started.command.command == "shadow"
    assert (started.command.bundle, started.command.sha256) == (str(candidate), manifest_digest(candidate))
    ops_.replay([record("promote", SHIPPED, 0)])  # already serving it: the shadow ends
    assert ops_.shadow is None
    assert Manifest.read(SHIPPED).version == ops_.pipeline.model.version


# -- the feed: the control topic read by a thread of its own -------------------------------------------
class _ScriptedReader:
    """Stands in for ControlReader: each poll returns (or raises) the next scripted answer, then nothing."""

    topic = "sentences.control"

    def __init__(self, answers: list) -> None:
        self.answers = list(answers)
        self.polls = 0

    def poll(self, timeout_ms: int = 0) -> list[ControlRecord]:
        self.polls += 1
        if not self.answers:
            time.sleep(timeout_ms / 1000)
            return []
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def _rec(n: int) -> ControlRecord:
    return ControlRecord(f"sentences.control[0]@{n}", b"serving", b"{}")


def test_the_feed_hands_over_records_in_order_and_raises_a_failure_after_the_records_before_it() -> None:
    reader = _ScriptedReader([[_rec(0), _rec(1)], [_rec(2)], OSError("broker gone"), [_rec(3)]])
    feed = ControlFeed(reader, retry_s=2.0, poll_ms=10).start()
    try:
        got: list[ControlRecord] = []
        wait_for(lambda: feed._queue.qsize() >= 4, timeout=5)  # three records and the failure
        got += feed.poll()
        assert [r.where for r in got] == [f"sentences.control[0]@{n}" for n in range(3)]
        with pytest.raises(OSError, match="broker gone"):
            feed.poll()
        assert reader.polls == 3  # the thread waits retry_s before it reads again
        wait_for(lambda: reader.polls >= 4, timeout=5)
        wait_for(lambda: bool(got.extend(feed.poll()) or len(got) == 4), timeout=5)
        assert got[-1].where == "sentences.control[0]@3"
    finally:
        feed.close()
    assert not feed._thread.is_alive()


def test_a_feed_whose_reader_raises_a_base_exception_keeps_its_thread() -> None:
    class Panic(BaseException):  # what a Rust panic surfaces as
        pass

    reader = _ScriptedReader([Panic("boom"), [_rec(7)]])
    feed = ControlFeed(reader, retry_s=0.05, poll_ms=10).start()
    try:
        wait_for(lambda: reader.polls >= 1, timeout=5)
        with pytest.raises(RuntimeError, match="boom"):
            wait_for(lambda: feed.poll() and False, timeout=5)
        got: list[ControlRecord] = []
        wait_for(lambda: bool(got.extend(feed.poll()) or got), timeout=5)
        assert [r.where for r in got] == ["sentences.control[0]@7"]
    finally:
        feed.close()
