"""Live model operations on the session's broker, while records flow: a worker pair gets
``shadow`` then ``promote`` through the control topic (``sentistream model …``), in both delivery
modes at once.

Judged: every acknowledged input comes out once (exactly-once: no duplicate with read_committed;
at-least-once: none either, as nothing crashes); every result carries the version that made it
(the ``model.version`` field and the ``sentistream-model`` header agree, each input partition
switches once, from the old version to the new, and each result's label is what that version
gives its text offline); the shadow agreement the workers report matches an offline comparison
of the two bundles on the very records the shadow saw (those whose results carry
``sentistream-shadow``) within 0.5 %; both processes of a group swap; a hash mismatch is refused
by the command and by the workers, and changes nothing. Figures: ``pytest -s``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

import pytest

from sentistream.bench.scrape import scrape
from sentistream.worker.bundle import Bundle, Manifest, default_bundle_path
from sentistream.worker.control import Command
from sentistream.worker.settings import Settings
from tests.candidates import SHORT, candidate_bundle
from tests.cluster import KafkaCluster
from tests.polling import wait_for
from tests.streams import TEXTS, Figures, Keeper, Stream
from tests.workers import REPO

pytestmark = pytest.mark.kafka

MODES = ("at-least-once", "exactly-once")
RATE = 40  # records per second per stream: two streams, four worker processes, two models each, on 2 cores
SHADOWED = 600  # sentences each stream's shadow compares before the promotion
OLD, NEW = Manifest.read(default_bundle_path()).version, SHORT


def model_cli(s: Settings, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "sentistream.cli", "model", *args, "--bootstrap", s.bootstrap_servers,
           "--control-topic", s.control_topic]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "SENTISTREAM_HOME": str(s.home)})



def total(st: Stream, name: str, **labels: str) -> float:
    return sum(scrape(w.url("/metrics")).total(name, **labels) for w in st.keeper.workers.values())


def confusion(st: Stream) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = defaultdict(float)
    for w in st.keeper.workers.values():
        for name, labels, v in scrape(w.url("/metrics")).samples:
            if name == "sentistream_shadow_predictions_total":
                out[(labels["serving"], labels["shadow"])] += v
    return out


def test_shadow_then_promote_through_the_control_topic_under_load(kafka: KafkaCluster, topics, unique: str,
                                                                  tmp_path: Path) -> None:
    candidate = candidate_bundle(tmp_path / "candidate", version=NEW)
    offline = {OLD: {t: p.label for t, p in zip(TEXTS, Bundle(default_bundle_path()).classify(TEXTS), strict=True)},
               NEW: {t: p.label for t, p in zip(TEXTS, Bundle(candidate).classify(TEXTS), strict=True)}}
    assert offline[OLD] != offline[NEW], "the candidate must disagree somewhere, or the test cannot tell"
    batch: list[Stream] = []
    try:
        for mode in MODES:
            tag = f"{'alo' if mode == 'at-least-once' else 'eos'}-{unique}"
            s = topics(partitions=4, group_id=f"g-{tag}", input_topic=f"in-{tag}", output_topic=f"out-{tag}",
                       dlq_topic=f"dlq-{tag}", control_topic=f"ctl-{tag}", bundle_roots=str(tmp_path))
            batch.append(Stream(kafka, s, mode, Keeper(tmp_path), f"tx-{tag}"))
        for st in batch:
            st.worker("w")
            st.worker("b")  # two processes of one group: they must swap together
        for st in batch:
            st.feed(RATE)
        for st in batch:
            st.flowing()
            done = model_cli(st.settings, "shadow", str(candidate))
            assert done.returncode == 0, done.stderr
        for st in batch:
            wait_for(lambda st=st: sum(confusion(st).values()) >= SHADOWED, 120, f"{st.mode}: shadow comparisons")
            assert total(st, "sentistream_shadow_info", version=NEW) == 2, f"{st.mode}: both processes shadow"

        for st in batch:  # a hash mismatch: refused by the command (nothing written) and by the workers
            refused = model_cli(st.settings, "promote", str(candidate), "--sha256", "0" * 64)
            assert refused.returncode == 2 and "refused" in refused.stderr and len(refused.stderr.splitlines()) == 1
            forged = Command(command="promote", bundle=str(candidate), sha256="0" * 64)
            kafka.produce(st.settings.control_topic, [forged.encode()])
        for st in batch:
            wait_for(lambda st=st: total(st, "sentistream_control_refused_total", reason="hash_mismatch") == 2, 60,
                     f"{st.mode}: both processes refuse the forged command")
            assert total(st, "sentistream_model_info", version=OLD) == 2 and total(st, "sentistream_model_info",
                                                                                   version=NEW) == 0
            assert total(st, "sentistream_shadow_info", version=NEW) == 2, "the refusal changed nothing"

        for st in batch:
            promoted = model_cli(st.settings, "promote")  # default: the shadow
            assert promoted.returncode == 0, promoted.stderr
        for st in batch:
            wait_for(lambda st=st: total(st, "sentistream_model_swaps_total", command="promote") == 2, 60,
                     f"{st.mode}: both processes promote")
        for st in batch:
            status = model_cli(st.settings, "status")
            assert status.returncode == 0 and f"serving  promote  {candidate}" in status.stdout, status.stdout
        time.sleep(5.0)  # steady input under the new version: a duration, not a condition
        reported = {st.mode: confusion(st) for st in batch}
        expected = {st.mode: st.stop_feeding() for st in batch}
        problems = []
        for st in batch:
            figures = st.reconcile(Figures("shadow then promote through the control topic", st.mode, fault=False),
                                   expected[st.mode])
            problems += figures.problems()
            if figures.duplicates:
                problems.append(f"{st.mode}: {figures.duplicates} duplicate(s), and nothing crashed")
            problems += _judge_versions(kafka, st, expected[st.mode], offline, reported[st.mode])
        assert not problems, "; ".join(problems) + "\n" + "\n".join(st.keeper.logs() for st in batch)
    finally:
        for st in batch:
            st.close()


def _judge_versions(kafka: KafkaCluster, st: Stream, expected: set[str], offline: dict[str, dict[str, str]],
                    reported: dict[tuple[str, str], float]) -> list[str]:
    """The versions the results carry, the labels they give, and the agreement the workers saw."""
    s = st.settings
    got = kafka.collect([s.output_topic], len(expected), timeout=60)
    problems: list[str] = []
    by_partition: dict[int, list[tuple[int, str]]] = defaultdict(list)
    shadowed: list[str] = []
    for r in got:
        value, headers = json.loads(r.value), dict(r.headers)
        version = value["model"]["version"]
        if headers["sentistream-model"].decode() != f"sst5-minilm:{version}":
            problems.append(f"{value['id']}: field says {version}, header {headers['sentistream-model']!r}")
        if value["label"] != offline[version][value["text"]]:
            problems.append(f"{value['id']}: label {value['label']} is not what {version} gives its text")
        by_partition[value["source"]["partition"]].append((value["source"]["offset"], version))
        if "sentistream-shadow" in headers:
            shadowed.append(value["text"])
    for partition, seen in by_partition.items():
        versions = [v for _, v in sorted(seen)]
        switches = sum(a != b for a, b in pairwise(versions))
        if switches != 1 or versions[0] != OLD or versions[-1] != NEW:
            problems.append(f"{st.mode}: input partition {partition} went {versions[0]} → {versions[-1]} with "
                            f"{switches} switch(es)")
    agree_offline = sum(offline[OLD][t] == offline[NEW][t] for t in shadowed) / len(shadowed)
    agree_reported = sum(n for (a, b), n in reported.items() if a == b) / sum(reported.values())
    print(f"\nSWAP [{st.mode}]: {len(got)} results, {len(shadowed)} seen by the shadow; agreement reported "
          f"{agree_reported:.4f}, offline {agree_offline:.4f} over {sum(reported.values()):.0f} / {len(shadowed)} "
          f"sentences; results per version {dict(_count(got))}")
    if abs(agree_reported - agree_offline) > 0.005 or sum(reported.values()) != len(shadowed):
        problems.append(f"{st.mode}: agreement reported {agree_reported:.4f} over {sum(reported.values()):.0f}, "
                        f"offline {agree_offline:.4f} over {len(shadowed)}")
    return problems


def _count(records) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for r in records:
        out[json.loads(r.value)["model"]["version"]] += 1
    return out
