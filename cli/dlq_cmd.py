"""``sentistream dlq stats|browse|replay``: the dead-letter topic for operators (engine:
cli/dlq.py, cli/dlq_replay.py, cli/dlq_jobs.py; this module only parses flags and prints)."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sentistream.cli.clients import client_settings
from sentistream.cli.flags import with_settings_flags

if TYPE_CHECKING:
    from sentistream.cli.dlq import DeadLetter, Filter, Stats
    from sentistream.cli.dlq_jobs import JobRecord
    from sentistream.cli.dlq_replay import Plan, Report
    from sentistream.worker.settings import Settings

dlq_app = typer.Typer(no_args_is_help=True, help="Dead letters: count, browse and replay the dead-letter topic.")

DLQ_SETTINGS = ("bootstrap_servers", "input_topic", "output_topic", "dlq_topic", "control_topic", "group_id",
                "client_id", "security_protocol", "sasl_mechanism", "sasl_username", "ssl_cafile", "ssl_certfile",
                "ssl_keyfile")
BUSY_EXIT = 75  # EX_TEMPFAIL: another replay of the topic runs; try again later

ReasonOpt = Annotated[list[str] | None, typer.Option("--reason", metavar="REASON", help="only dead letters with "
                                                     "this reason (repeatable: any of them)", show_default=False)]
SinceOpt = Annotated[str | None, typer.Option(metavar="WHEN", help="dead-lettered at or after: ISO 8601 (local "
                                              "time unless it ends in Z or +hh:mm) or a duration back from now: 30m, "
                                              "2h, 1d")]
UntilOpt = Annotated[str | None, typer.Option(metavar="WHEN", help="dead-lettered before: as --since")]
IdOpt = Annotated[list[str] | None, typer.Option("--id", metavar="ID", help="the value's \"id\", or the source record's "
                                                 "topic/partition/offset (repeatable)", show_default=False)]
KeyOpt = Annotated[list[str] | None, typer.Option("--key", metavar="KEY", help="the record key, as UTF-8 (repeatable)",
                                                  show_default=False)]
ContainsOpt = Annotated[str | None, typer.Option(metavar="TEXT", help="text the value contains")]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON instead of text")]


def _filter(reason: list[str] | None, since: str | None, until: str | None, ids: list[str] | None,
            keys: list[str] | None, contains: str | None) -> Filter:
    from sentistream.cli.dlq import make_filter

    return make_filter(reason or (), since, until, ids or (), keys or (), contains)


def _echo(line: str = "") -> None:
    typer.echo(line)


# -- stats ---------------------------------------------------------------------------------------
@dlq_app.command("stats")
@with_settings_flags(DLQ_SETTINGS)
def stats_cmd(as_json: JsonOpt = False, **flags: Any) -> None:
    """Dead letters by reason, by source topic and partition, by hour (first and last seen), the
    parked ones, and the last 5 replay jobs. Reads the whole dead-letter topic."""
    from sentistream.cli.dlq import collect_stats, topic_size
    from sentistream.cli.dlq_replay import ledger, parked_topic

    settings = client_settings(**flags)
    stats = collect_stats(settings)  # first: says so when the topic is missing
    parked = topic_size(settings, parked_topic(settings))
    jobs = list(reversed(ledger(settings)))[:5]
    if as_json:
        _echo(json.dumps({**stats.to_json(), "parked": {"topic": parked_topic(settings), "records": parked},
                          "jobs": [_job_json(j) for j in jobs]}))
        return
    _print_stats(stats, parked_topic(settings), parked, jobs)


def _print_stats(stats: Stats, parking: str, parked: int | None, jobs: list[JobRecord]) -> None:
    t = stats.total.to_json()
    if not stats.total.count:
        _echo(f"{stats.topic}: no dead letters")
    else:
        _echo(f"{stats.topic}: {t['count']} dead letter(s), first {t['first']}, last {t['last']}"
              + (f"; {stats.replayed} of records replayed before" if stats.replayed else ""))
        _echo("by reason:")
        for reason, seen in sorted(stats.by_reason.items(), key=lambda kv: -kv[1].count):
            s = seen.to_json()
            _echo(f"  {reason:<20} {s['count']:>8}   first {s['first']}   last {s['last']}")
        _echo("by source topic[partition]:")
        for source, n in sorted(stats.by_source.items()):
            _echo(f"  {source:<30} {n:>8}")
        _echo("by hour (UTC), the last 24 with dead letters:")
        for hour, n in sorted(stats.by_hour.items())[-24:]:
            _echo(f"  {hour}:00  {n:>8}")
    _echo(f"parked ({parking}): " + ("none (no such topic)" if parked is None else str(parked)))
    _echo("last replay jobs:" if jobs else "no replay jobs")
    for job in jobs:
        _echo("  " + _job_line(job))


def _when(seconds: float | None) -> str:
    return "-" if not seconds else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _job_line(job: JobRecord) -> str:
    targets = ", ".join(f"{t} {n}" for t, n in job.by_target.items()) or "-"
    return (f"{job.job}  {job.status:<11} {_when(job.started)}  {job.who}  [{job.filter.describe()}]"
            f"  replayed {job.replayed}, parked {job.parked} ({targets})" + (f"  error: {job.error}" if job.error else ""))


def _job_json(job: JobRecord) -> dict[str, Any]:
    return {**job.model_dump(), "started_at": _when(job.started), "finished_at": _when(job.finished)}


# -- browse --------------------------------------------------------------------------------------
@dlq_app.command("browse")
@with_settings_flags(DLQ_SETTINGS)
def browse_cmd(reason: ReasonOpt = None, since: SinceOpt = None, until: UntilOpt = None, ids: IdOpt = None,
               keys: KeyOpt = None, contains: ContainsOpt = None,
               limit: Annotated[int | None, typer.Option(min=1, help="stop after this many")] = None,
               as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line, headers decoded")] = False,
               **flags: Any) -> None:
    """Show dead letters: reason, detail, source coordinates, key, headers and the value (pretty)."""
    from sentistream.cli.dlq import dead_letter_json, read_dead_letters

    flt = _filter(reason, since, until, ids, keys, contains)
    settings = client_settings(**flags)
    shown = 0
    for dl in read_dead_letters(settings, flt):
        if limit is not None and shown >= limit:
            break
        _echo(json.dumps(dead_letter_json(dl), ensure_ascii=False) if as_json else _pretty(dl))
        shown += 1
    if not as_json:
        typer.echo(f"{shown} dead letter(s) [{flt.describe()}]", err=True)


def _pretty(dl: DeadLetter) -> str:
    from sentistream.cli.dlq import iso

    source = f"{dl.source_topic}[{dl.source_partition}]@{dl.source_offset}" if dl.source_topic else "unknown"
    key = "-" if dl.key is None else dl.key.decode("utf-8", "replace")
    own = [f"{k}={(v or b'').decode('utf-8', 'replace')[:80]}" for k, v in dl.headers if not k.startswith("sentistream-")]
    lines = [f"{dl.where}  {iso(dl.timestamp)}  {dl.reason}: {dl.detail}",
             f"  source {source}  id {dl.json_id or dl.derived_id}  key {key}  replays {dl.replay_count}"]
    if own:
        lines.append("  headers " + "  ".join(own))
    lines += ["  " + line for line in _pretty_value(dl.value).splitlines()] + [""]
    return "\n".join(lines)


def _pretty_value(value: bytes | None, most: int = 4000) -> str:
    if value is None:
        return "(no value)"
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return f"({len(value)} bytes, not UTF-8) {value[:200]!r}"
    with contextlib.suppress(ValueError, RecursionError):
        text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    return text if len(text) <= most else text[:most] + f"… ({len(value)} bytes in all)"


# -- replay --------------------------------------------------------------------------------------
@dlq_app.command("replay")
@with_settings_flags(DLQ_SETTINGS)
def replay_cmd(
    reason: ReasonOpt = None, since: SinceOpt = None, until: UntilOpt = None, ids: IdOpt = None,
    keys: KeyOpt = None, contains: ContainsOpt = None,
    to: Annotated[str | None, typer.Option(metavar="TOPIC", help="send every record to this topic instead of its "
                                           "source topic (it must be on the allow-list)")] = None,
    replay_topics: Annotated[str | None, typer.Option(
        metavar="TOPICS", envvar="SENTISTREAM_REPLAY_TOPICS",
        help="topics, comma-separated, a replay may write to besides --input-topic")] = None,
    max_replays: Annotated[int, typer.Option(min=0, help="a record already replayed this many times goes to the "
                                             "parking topic <dlq>.parked instead")] = 3,
    rate: Annotated[float, typer.Option(min=0.001, help="records per second at most")] = 100.0,
    max_records: Annotated[int | None, typer.Option("--max", min=1, help="replay at most this many (the oldest); "
                                                    "the next run goes on")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="say how many would go, by reason and by target; "
                                          "write nothing")] = False,
    as_json: JsonOpt = False,
    **flags: Any,
) -> None:
    """Put dead letters back on their source topic (key, value and headers; the replay count one
    higher), once: a record already replayed --max-replays times is parked instead. Resumable: a
    stopped replay goes on where the target had acknowledged. One at a time per dead-letter topic
    (another one: one line, exit 75). Each job leaves an audit record on the control topic."""
    from sentistream.cli.dlq_replay import ReplayOptions, allowed_topics, check_options, plan_replay, refusal
    from sentistream.worker.errors import UserError

    flt = _filter(reason, since, until, ids, keys, contains)
    settings = client_settings(**flags)
    opts = ReplayOptions(flt, allowed_topics(settings, replay_topics), to, max_replays, rate, max_records)
    check_options(settings, opts)
    if dry_run:
        plan = plan_replay(settings, opts)
        _echo(json.dumps(plan.to_json()) if as_json else _plan_text(plan, flt, dry_run=True))
        why = refusal(plan)
        if why is not None:
            raise UserError(why)  # what a real run would say: one line, exit 2
        return
    report = _replay(settings, opts, as_json)
    _echo(json.dumps(report.to_json()) if as_json else _report_text(report))


def _replay(settings: Settings, opts: Any, quiet: bool) -> Report:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from sentistream.cli.dlq_jobs import ReplayBusy
    from sentistream.cli.dlq_replay import run_replay

    previous = signal.signal(signal.SIGTERM, _interrupt)  # restored below: CliRunner runs this inside a test process
    progress = Progress(TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=Console(stderr=True), disable=quiet)
    task = progress.add_task("replay", total=None, start=False)

    def planned(plan: Plan) -> None:  # the bar shows once there is something to do
        if plan.items:
            progress.update(task, total=len(plan.items))
            progress.start()
            progress.start_task(task)

    try:
        return run_replay(settings, opts, on_plan=planned,
                          on_progress=lambda done, total: progress.update(task, completed=done))
    except ReplayBusy as exc:
        print(f"sentistream: {exc}", file=sys.stderr)
        raise typer.Exit(BUSY_EXIT) from None
    except KeyboardInterrupt:
        print("sentistream: replay stopped; what the targets acknowledged is committed: run it again to go on",
              file=sys.stderr)
        raise typer.Exit(130) from None
    finally:
        progress.stop()
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {n}" for k, n in counter.most_common()) or "-"


def _plan_text(plan: Plan, flt: Filter, dry_run: bool) -> str:
    lines = [f"{'dry run: ' if dry_run else ''}{plan.matched} dead letter(s) of {plan.dlq} selected [{flt.describe()}]: "
             f"{len(plan.items)} would go ({plan.parked} to parking), {plan.already} already replayed or parked "
             f"by earlier jobs, {plan.unreplayable} hold no record (stubs, unreadable)"
             + (f", {plan.beyond_max} left for later by --max" if plan.beyond_max else ""),
             f"  by reason: {_counts(plan.by_reason())}",
             f"  by target: {_counts(plan.by_target())}"]
    if plan.refused:
        lines.append(f"  not on the allow-list: {_counts(plan.refused)}")
    if dry_run:
        lines.append("nothing written")
    return "\n".join(lines)


def _report_text(report: Report) -> str:
    replayed = report.sent - report.parked
    targets = Counter({t: n for t, n in report.by_target.items()})
    return (f"job {report.job}: replayed {replayed}, parked {report.parked} (by reason: {_counts(report.by_reason)}; "
            f"by target: {_counts(targets)}); {report.plan.already} already handled by earlier jobs; "
            f"{report.sent} record(s) in {report.seconds:.1f} s ({report.rate:.0f}/s)")


# -- resume --------------------------------------------------------------------------------------
@dlq_app.command("resume")
@with_settings_flags(DLQ_SETTINGS)
def resume_cmd(**flags: Any) -> None:
    """Close the dead-letter breaker on every worker of the group (a dlq-resume record on the
    control topic; each running worker resumes the partitions its breaker held)."""
    import getpass
    import socket

    _echo(write_resume(client_settings(**flags), f"{getpass.getuser()}@{socket.gethostname()}"))


def write_resume(settings: Settings, issued_by: str) -> str:
    """Write one dlq-resume record; the line that says so."""
    from sentistream.worker import kafka_clients
    from sentistream.worker.control import Resume

    key, value = Resume(issued_by=issued_by).encode()
    producer = kafka_clients.producer(settings, kafka_clients.resolve_bootstrap(settings))
    try:
        producer.send(settings.control_topic, key=key, value=value).get(30)
    finally:
        producer.close()
    return f"dlq resume written to {settings.control_topic}: every worker's dead-letter breaker closes"
