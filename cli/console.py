"""``sentistream console``: a web page that watches the fleet, the models and the dead letters.

The standard library's ThreadingHTTPServer serves the page (cli/console_static/, uPlot vendored:
nothing from a CDN) and JSON the page polls. A background thread reads the status topic and the
group's lag into memory (cli/console_data.py) and keeps 15 minutes of overview points. Dead
letters and model commands go through the engines the CLI uses (cli/dlq*.py, cli/model.py).
Actions (promote, rollback, replay, resume) need the token when one is set, and each leaves an
audit record (``audit:console:…``, which workers ignore) on the control topic.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from sentistream.cli import console_data as data
from sentistream.worker import kafka_clients
from sentistream.worker.errors import UserError
from sentistream.worker.settings import Settings

log = logging.getLogger(__name__)

COLLECT_EVERY_S = 1.0
LAG_EVERY_S = 2.0
BROWSE_LIMIT = 200
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8"}


def check_bind(host: str, token: str | None) -> None:
    """A bind that is not local needs a token (one line, nothing started)."""
    if not data.is_local(host) and not token:
        raise UserError(f"refused: --host {host} is not a local address; set SENTISTREAM_CONSOLE_TOKEN to serve it")


class Collector:
    """The status feed and lag, read every second into the latest fleet and its history."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self.settings = settings
        self.feed = data.StatusFeed(settings, bootstrap)
        self.lag = data.LagReader(settings, bootstrap)
        self.history = data.History()
        self.lock = threading.Lock()
        self.statuses: dict[str, Any] = {}
        self.partitions: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self._next_lag = 0.0
        self._lag_read: tuple[dict[int, int], dict[int, int], dict[int, int]] = ({}, {}, {})

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.collect()
            except Exception as exc:  # the broker away: the page shows what it had
                log.warning("console: reading Kafka failed (%s)", exc)
                self.stop.wait(2)
            self.stop.wait(COLLECT_EVERY_S)
        self.feed.close()
        self.lag.close()

    def collect(self) -> None:
        statuses = dict(self.feed.poll())
        now = time.time()
        if now >= self._next_lag:
            self._next_lag = now + LAG_EVERY_S
            try:
                self._lag_read = self.lag.read()
            except Exception as exc:  # the last lag read stays; the status records still count
                log.warning("console: reading the group's offsets failed (%s)", exc)
        partitions = data.lag_rows(*self._lag_read, data.owners(statuses, now))
        point = {"t": now, **data.totals(statuses, now), "lag": sum(p["lag"] for p in partitions)}
        with self.lock:
            self.statuses, self.partitions = statuses, partitions
            self.history.add(point)

    def overview(self) -> dict[str, Any]:
        with self.lock:
            points = list(self.history.points)
        return {"points": points, "now": points[-1] if points else None}

    def workers(self) -> list[dict[str, Any]]:
        with self.lock:
            return data.fleet_rows(self.statuses, time.time())

    def lag_rows(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.partitions)


class Actions:
    """What the page may change, each audited on the control topic."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def audit(self, action: str, who: str, params: dict[str, Any], result: str, ok: bool) -> None:
        record = {"kind": f"console-{action}", "who": who, "host": socket.gethostname(), "at": time.time(),
                  "params": params, "result": result, "ok": ok}
        key = f"audit:console:{action}:{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"
        s = self.settings
        producer = kafka_clients.producer(s, kafka_clients.resolve_bootstrap(s))
        try:
            producer.send(s.control_topic, key=key.encode(), value=json.dumps(record).encode()).get(30)
        finally:
            producer.close(10)

    def ensure_control_topic(self) -> None:
        """Where actions and their audit records go (a resume before any worker made it, too)."""
        s = self.settings
        admin = kafka_clients.admin(s, kafka_clients.resolve_bootstrap(s))
        try:
            kafka_clients.ensure_topics(admin, kafka_clients.control_topic_spec(s))
        finally:
            admin.close()

    def run(self, action: str, who: str, params: dict[str, Any]) -> dict[str, Any]:
        self.ensure_control_topic()
        work: dict[str, Callable[[dict[str, Any]], Any]] = {
            "promote": self.promote, "rollback": self.rollback, "replay": self.replay, "resume": self.resume}
        try:
            result = work[action](params)
        except UserError as exc:
            self.audit(action, who, params, str(exc), ok=False)
            return {"ok": False, "error": str(exc)}
        self.audit(action, who, params, result if isinstance(result, str) else json.dumps(result)[:2000], ok=True)
        return {"ok": True, "result": result}

    def promote(self, params: dict[str, Any]) -> str:
        from sentistream.cli.model import shadow_target, write

        state = None
        bundle = params.get("bundle")
        if not bundle:
            bundle, state = shadow_target(self.settings)
        return write(self.settings, "promote", Path(bundle), state=state)

    def rollback(self, params: dict[str, Any]) -> str:
        from sentistream.cli.model import rollback_target, write

        bundle = params.get("bundle")
        return write(self.settings, "rollback", Path(bundle) if bundle else rollback_target(self.settings))

    def replay(self, params: dict[str, Any]) -> dict[str, Any]:
        from sentistream.cli.dlq_jobs import ReplayBusy
        from sentistream.cli.dlq_replay import plan_replay, refusal, run_replay

        opts = replay_options(self.settings, params)
        if params.get("dry_run"):
            plan = plan_replay(self.settings, opts)
            return {**plan.to_json(), "refusal": refusal(plan)}
        try:
            return run_replay(self.settings, opts).to_json()
        except ReplayBusy as exc:
            raise UserError(str(exc)) from None

    def resume(self, params: dict[str, Any]) -> str:
        from sentistream.cli.dlq_cmd import write_resume

        return write_resume(self.settings, f"console@{socket.gethostname()}")


def dlq_filter(params: dict[str, Any]) -> Any:
    from sentistream.cli.dlq import make_filter

    reasons = [r for r in params.get("reason") or [] if r]
    return make_filter(reasons, params.get("since") or None, params.get("until") or None,
                       contains=params.get("contains") or None)


def replay_options(settings: Settings, params: dict[str, Any]) -> Any:
    from sentistream.cli.dlq_replay import ReplayOptions, allowed_topics, check_options

    opts = ReplayOptions(dlq_filter(params), allowed_topics(settings, None), None,
                         int(params.get("max_replays", 3)), float(params.get("rate", 100.0)),
                         int(params["max"]) if params.get("max") else None)
    check_options(settings, opts)
    return opts


class Console:
    """Everything a request handler needs."""

    def __init__(self, settings: Settings, collector: Collector, token: str | None) -> None:
        self.settings = settings
        self.collector = collector
        self.token = token
        self.actions = Actions(settings)
        from sentistream.cli.dlq import RunningStats

        self.dlq_stats = RunningStats(settings)  # the DLQ page asks every few seconds: read only what is new

    def get(self, path: str, query: dict[str, list[str]]) -> Any:
        from sentistream.cli import dlq

        s = self.settings
        if path == "/api/overview":
            return self.collector.overview()
        if path == "/api/workers":
            return {"workers": self.collector.workers()}
        if path == "/api/partitions":
            return {"topic": s.input_topic, "group": s.group_id, "partitions": self.collector.lag_rows()}
        if path == "/api/models":
            from sentistream.cli.dlq_jobs import control_records

            return {"workers": self.collector.workers(), "control": data.control_rows(control_records(s))[:100]}
        if path == "/api/dlq/stats":
            return self.dlq_stats.current().to_json()
        if path == "/api/dlq/browse":
            params = {"reason": query.get("reason", []), "since": _one(query, "since"),
                      "until": _one(query, "until"), "contains": _one(query, "contains")}
            found = []
            for dl in dlq.read_dead_letters(s, dlq_filter(params)):
                found.append(dlq.dead_letter_json(dl))
                if len(found) >= BROWSE_LIMIT:
                    break
            return {"dead_letters": found, "limit": BROWSE_LIMIT}
        if path == "/api/session":
            return {"token_required": bool(self.token)}
        return None


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def make_handler(console: Console) -> type[BaseHTTPRequestHandler]:
    static = resources.files("sentistream.cli") / "console_static"

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path.startswith("/api/"):
                self._api(lambda: console.get(url.path, parse_qs(url.query)))
                return
            name = "index.html" if url.path in ("/", "/index.html") else url.path.lstrip("/")
            target = static.joinpath(*name.split("/"))
            if ".." in name.split("/") or not target.is_file():
                self._send(404, b"not found\n")
                return
            self._send(200, target.read_bytes(), STATIC_TYPES.get(Path(name).suffix, "application/octet-stream"))

        def do_POST(self) -> None:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            try:
                params = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self._json(400, {"ok": False, "error": "the body is not JSON"})
                return
            if url.path == "/api/login":
                given = str(params.get("token", ""))
                if not data.token_ok(console.token, f"Bearer {given}", {}):
                    self._json(403, {"ok": False, "error": "wrong token"})
                    return
                self._json(200, {"ok": True}, cookie=f"{data.COOKIE}={given}; HttpOnly; SameSite=Strict; Path=/")
                return
            action = url.path.removeprefix("/api/action/")
            if action not in ("promote", "rollback", "replay", "resume"):
                self._json(404, {"ok": False, "error": "no such action"})
                return
            cookies = data.parse_cookies(self.headers.get("Cookie"))
            if not data.token_ok(console.token, self.headers.get("Authorization"), cookies):
                self._json(403, {"ok": False, "error": "refused: this action needs the console token (log in)"})
                return
            who = f"console:{self.client_address[0]}"
            self._api(lambda: console.actions.run(action, who, params))

        def _api(self, answer: Callable[[], Any]) -> None:
            try:
                body = answer()
            except UserError as exc:
                self._json(400, {"ok": False, "error": str(exc)})
                return
            except Exception as exc:
                log.exception("console: %s failed", self.path)
                self._json(500, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
                return
            if body is None:
                self._json(404, {"ok": False, "error": "not found"})
            else:
                self._json(200, body)

        def _json(self, code: int, body: Any, cookie: str | None = None) -> None:
            self._send(code, json.dumps(body).encode(), "application/json", cookie)

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8",
                  cookie: str | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            if cookie:
                self.send_header("Set-Cookie", cookie)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # polls are not news
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a page closed mid-answer is not news
            super().handle_error(request, client_address)


def serve(settings: Settings, host: str, port: int) -> tuple[ThreadingHTTPServer, Collector]:
    """Start the collector thread and the server (not yet serving: call serve_forever)."""
    token = settings.console_token.get_secret_value() if settings.console_token else None
    check_bind(host, token)
    collector = Collector(settings, kafka_clients.resolve_bootstrap(settings))
    threading.Thread(target=collector.run, name="console-collector", daemon=True).start()
    server = _Server((host, port), make_handler(Console(settings, collector, token)))
    return server, collector


def run_console(settings: Settings, host: str, port: int, echo: Callable[[str], None] = print) -> None:
    server, collector = serve(settings, host, port)
    echo(f"sentistream console on http://{host}:{server.server_address[1]}/ (Ctrl-C stops it)")
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        collector.stop.set()
