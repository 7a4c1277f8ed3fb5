"""``sentistream console`` in a real browser (Debian's chromium driven by Playwright; nothing is
downloaded at test time): two real workers fed by a producer, the console in this process.
The overview's charts move while records flow; dead letters show with their reasons and a replay
started from the page (after its dry run) moves them; a shadow started from the CLI shows its
agreement and the page's Promote makes both workers serve it; a worker stopped with SIGTERM leaves
the list, one killed turns "gone"; on a non-local bind an action without the token is refused.
Screenshots: out/console/."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from sentistream.cli.console import serve
from sentistream.worker.bundle import Manifest, default_bundle_path
from tests.candidates import candidate_bundle
from tests.polling import wait_for
from tests.workers import REPO, WorkerProcess

pytestmark = pytest.mark.kafka
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = REPO / "out" / "console"
TEXTS = ["A warm, funny and clever film.", "Dull, flat and far too long.", "It is a film about a family."]

sync_api = pytest.importorskip("playwright.sync_api")
if not CHROMIUM.exists():
    pytest.skip("no /usr/bin/chromium (deploy/tools.sh installs it)", allow_module_level=True)


class Feeder(threading.Thread):
    """Good records, and now and then a bad one, until stopped."""

    def __init__(self, kafka, topic: str) -> None:
        super().__init__(daemon=True)
        self.kafka, self.topic, self.stop = kafka, topic, threading.Event()
        self.bad = 0

    def run(self) -> None:
        producer = self.kafka.producer()
        i = 0
        while not self.stop.wait(0.05):
            for _ in range(5):
                i += 1
                value = json.dumps({"id": f"m{i}", "text": TEXTS[i % 3]}).encode()
                if i % 40 == 0:
                    value, self.bad = b"{not json", self.bad + 1
                producer.send(self.topic, key=f"k{i % 64}".encode(), value=value)
        producer.flush()
        producer.close()


@pytest.fixture
def console_url(topics, unique) -> Iterator[tuple[str, object]]:
    s = topics(partitions=4, status_topic=f"st-{unique}", control_topic=f"ctl-{unique}", status_interval_s=1.0)
    server, collector = serve(s, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", s
    server.shutdown()
    collector.stop.set()


@pytest.fixture
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield b
        b.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def number(page, sel: str) -> float:
    text = page.inner_text(sel)
    return float(text) if text not in ("", "–") else 0.0


def test_the_console_watches_workers_models_and_dead_letters(kafka, console_url, browser, tmp_path) -> None:
    url, s = console_url
    # control commands may point at candidates under tmp_path, and back at the shipped bundle
    s = s.model_copy(update={"bundle_roots": f"{tmp_path}:{default_bundle_path().parent}"})
    workers = [WorkerProcess(s).start(tmp_path, f"w{i}") for i in range(2)]
    feeder = Feeder(kafka, s.input_topic)
    try:
        for w in workers:
            w.wait_ready(120)
        feeder.start()
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(url + "#overview")
        points = lambda: int(page.get_attribute("#chart-rates", "data-points") or 0)  # noqa: E731
        wait_for(lambda: number(page, "#ov-in") > 0 and points() >= 3, 60, "the overview shows records flowing")
        before = points()
        wait_for(lambda: points() > before, 20, "the charts move")
        wait_for(lambda: page.inner_text("#ov-workers").startswith("2"), 20, "two workers")
        shot(page, "overview")

        page.goto(url + "#workers")
        wait_for(lambda: page.locator("#workers tbody td.ready.ok").count() == 2, 30, "two ready workers")

        page.goto(url + "#partitions")
        owners = page.locator("#partitions tbody td.owner")
        wait_for(lambda: owners.count() == 4 and "–" not in owners.all_inner_texts(), 30,
                 "four partitions, each with its owner")
        shot(page, "partitions")

        # dead letters: their reasons, a dry run, then a replay from the page
        wait_for(lambda: feeder.bad >= 3, 30, "bad records produced")
        page.goto(url + "#dlq")
        wait_for(lambda: page.locator('#dlq-reasons tr[data-reason="invalid_json"]').count() == 1, 90,
                 "invalid_json dead letters counted")
        page.click("#dlq-filter button:not([type])")
        wait_for(lambda: "invalid_json" in page.inner_text("#dlq-browse tbody"), 30, "the browser lists them")
        page.fill("#f-reason", "invalid_json")
        page.click("#dry-run")
        wait_for(lambda: "would replay" in page.inner_text("#replay-plan"), 60, "the dry run's counts")
        assert "invalid_json" in page.inner_text("#replay-plan")
        shot(page, "dead-letters")
        page.once("dialog", lambda d: d.accept())
        page.click("#replay")
        wait_for(lambda: "replayed" in page.inner_text("#dlq-result"), 120, "the replay's report")
        report = json.loads(page.inner_text("#dlq-result"))
        assert report["replayed"] >= 3, report

        # a shadow started from the CLI shows its agreement
        version = f"{Manifest.read(default_bundle_path()).version}-c"
        candidate = candidate_bundle(tmp_path / "candidate", version=version)
        done = subprocess.run([sys.executable, "-m", "sentistream.cli", "model", "shadow", str(candidate),
                               "--bootstrap", s.bootstrap_servers, "--control-topic", s.control_topic],
                              cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
                              env={**os.environ, "SENTISTREAM_HOME": str(s.home)})
        assert done.returncode == 0, done.stderr
        page.goto(url + "#models")
        wait_for(lambda: page.locator("#models td.agreement").filter(has_text="%").count() == 2, 90,
                 "both workers show the shadow's agreement")
        wait_for(lambda: "audit:dlq-replay" in page.inner_text("#control tbody"), 20, "the replay's audit records")
        shot(page, "models")
        serving = page.locator("#models tbody td:nth-child(2)")  # the model column (the shadow's is next)
        page.click("#promote")  # no bundle named: the shadow's
        wait_for(lambda: "written to" in page.inner_text("#model-result"), 60, "the promote command written")
        wait_for(lambda: serving.filter(has_text=f"{version} (").count() == 2, 60, "both workers serve the promoted bundle")
        assert page.locator("#models td.agreement").filter(has_text="%").count() == 0  # the shadow ended
        wait_for(lambda: "audit:console:promote" in page.inner_text("#control tbody"), 20, "the promote audited")
        page.click("#rollback")  # no bundle named: the console's --bundle, else the shipped one
        shipped = Manifest.read(default_bundle_path()).version
        wait_for(lambda: serving.filter(has_text=f"{shipped} (").count() == 2, 60,
                 "both workers serve the shipped bundle again")
        assert serving.filter(has_text=f"{version} (").count() == 0, page.inner_text("#models tbody")
        wait_for(lambda: "audit:console:rollback" in page.inner_text("#control tbody"), 20, "the rollback audited")

        # a worker stopped with SIGTERM leaves (its tombstone); one killed turns "gone" (3 status intervals)
        page.goto(url + "#workers")
        wait_for(lambda: page.locator("#workers tbody tr").count() == 2, 20, "two workers listed")
        assert workers[0].stop(signal.SIGTERM) == 0
        wait_for(lambda: page.locator("#workers tbody tr").count() == 1, 20, "the stopped worker's row dropped")
        assert page.locator("#workers tbody tr.gone").count() == 0
        workers[1].kill()  # SIGKILL: no tombstone
        wait_for(lambda: page.locator("#workers tbody tr.gone").count() == 1, 30, "the killed worker is gone")
        assert page.locator("#workers tbody tr.gone td.ready").inner_text() == "gone"
        shot(page, "workers")  # the killed worker, gone
    finally:
        feeder.stop.set()
        for w in workers:
            w.kill()


def test_on_a_non_local_bind_actions_need_the_token(settings_for, unique, browser) -> None:
    s = settings_for(control_topic=f"ctl-{unique}", status_topic=f"st-{unique}", console_token="s3cret")
    server, collector = serve(s, "0.0.0.0", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        request = urllib.request.Request(url + "api/action/resume", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403
        page = browser.new_page()
        page.goto(url + "#dlq")
        page.click("#resume")
        wait_for(lambda: "needs the console token" in page.inner_text("#dlq-result"), 10, "the page says refused")
        page.fill("#token", "s3cret")
        page.click("#login button")
        wait_for(lambda: page.inner_text("#flash") == "logged in", 10, "logged in")
        page.click("#resume")
        wait_for(lambda: "dlq resume written" in page.inner_text("#dlq-result"), 30, "the action done")
        bearer = urllib.request.Request(url + "api/action/resume", data=b"{}", method="POST",
                                        headers={"Authorization": "Bearer s3cret"})
        with urllib.request.urlopen(bearer, timeout=30) as r:
            assert json.loads(r.read())["ok"]
    finally:
        server.shutdown()
        collector.stop.set()
