"""The ``sentistream`` command. Subcommands import their heavy parts lazily."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError

from sentistream.cli.clients import client_settings, make_settings
from sentistream.cli.dlq_cmd import dlq_app
from sentistream.cli.flags import with_settings_flags
from sentistream.cli.model import model_app
from sentistream.worker.errors import UserError
from sentistream.worker.settings import Settings

if TYPE_CHECKING:
    from sentistream.broker.local import LocalCluster

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="Streaming sentence classifier on Kafka.")
broker_app = typer.Typer(no_args_is_help=True, help="A local Apache Kafka (KRaft) for demo and tests.")
topics_app = typer.Typer(no_args_is_help=True, help="Create and describe the project's topics.")
app.add_typer(broker_app, name="broker")
app.add_typer(topics_app, name="topics")
app.add_typer(model_app, name="model")
app.add_typer(dlq_app, name="dlq")

BootstrapOpt = Annotated[str | None, typer.Option("--bootstrap", help="host:port[,host:port]; "
                         "default: KAFKA_BOOTSTRAP_SERVERS, else the local broker")]


def _echo(line: str) -> None:
    typer.echo(line)


# -- broker ----------------------------------------------------------------------------------
@broker_app.command("up")
def broker_up(
    nodes: Annotated[int, typer.Option(min=1, max=9, help="KRaft nodes (3 for fault tests)")] = 1,
    port: Annotated[int, typer.Option(min=0, max=65535, help="first node's port; 0: any free")] = 9092,
    timeout: Annotated[float, typer.Option(min=1, help="seconds to wait for it")] = 90.0,
    acls: Annotated[bool, typer.Option("--acls", help="enforce ACLs (none at first: all allowed)")] = False,
    security: Annotated[str, typer.Option(help="plaintext, ssl (TLS) or sasl_ssl (TLS + SCRAM-SHA-512 users); "
                                          "ssl/sasl_ssl make a CA and keys with keytool")] = "plaintext",
) -> None:
    """Start a local KRaft broker (unless KAFKA_BOOTSTRAP_SERVERS names a cluster).

    With 3 or more nodes, topics are replicated 3 times with min.insync.replicas 2 (so are the
    offsets and transaction logs): a crashed node loses no acknowledged write."""
    from sentistream.broker.local import SECURITY_MODES, LocalCluster

    if security not in SECURITY_MODES:
        raise UserError(f"--security {security}: one of {', '.join(SECURITY_MODES)}")
    settings = make_settings()
    if settings.bootstrap_servers:
        _echo(f"using the configured cluster {settings.bootstrap_servers}; nothing to start")
        return
    cluster = LocalCluster(settings.home)
    state = cluster.up(nodes=nodes, port=port, timeout=timeout, acls=acls, security=security)
    _echo(f"Apache Kafka {state.kafka_version} ({state.nodes} node(s)) is up at {state.bootstrap}")
    if security != "plaintext":
        _print_client_settings(cluster)


def _print_client_settings(cluster: LocalCluster) -> None:
    """The clients' settings of a secured local broker, but the password: that one stays in the
    0600 file (a terminal's scroll-back and CI logs are not the place for it)."""
    settings = cluster.client_settings()
    secret = " with the password" if any(k.endswith("_PASSWORD") for k in settings) else ""
    _echo(f"client settings (in {cluster.client_env_file}, mode 0600{secret}):")
    for key, value in settings.items():
        _echo(f"  {key}=" + ("(in that file)" if key.endswith("_PASSWORD") else value))
    _echo(f"load them with: set -a; . {cluster.client_env_file}; set +a")


@broker_app.command("down")
def broker_down(
    keep_data: Annotated[bool, typer.Option(help="keep topics and offsets for the next up")] = False,
) -> None:
    """Stop the local broker and (unless --keep-data) remove its data."""
    from sentistream.broker.local import LocalCluster

    stopped = LocalCluster(make_settings().home).down(wipe=not keep_data)
    _echo("local broker stopped" if stopped else "no local broker was running")


@broker_app.command("status")
def broker_status() -> None:
    """Say whether a broker answers, and where."""
    from sentistream.broker.local import LocalCluster, live_broker_ids
    from sentistream.worker.kafka_clients import brokers_answering

    settings = make_settings()
    if settings.bootstrap_servers:
        n = brokers_answering(settings.bootstrap_servers, **_security(settings))
        _echo(f"configured cluster {settings.bootstrap_servers}: {n} broker(s) answering")
        raise typer.Exit(0 if n else 1)
    cluster = LocalCluster(settings.home)
    state, running = cluster.recorded(), cluster.running_nodes()
    if state is None or not running:
        hint = "`sentistream broker start` restarts its nodes" if state else "start one with `sentistream broker up`"
        _echo(f"no local broker is running ({hint})")
        raise typer.Exit(1)
    # the cluster reports a crashed node live until its session times out: count running ones only
    bootstrap = ",".join(state.node_bootstrap(i) for i in running)
    live = live_broker_ids(bootstrap, **cluster.client_config(state.security)) & {i + 1 for i in running}
    stopped = [str(i + 1) for i in range(state.nodes) if i not in running]
    _echo(f"local Apache Kafka {state.kafka_version} at {state.bootstrap}: "
          f"{len(live)}/{state.nodes} broker(s) answering, pids {state.pids}"
          + (f"; node(s) {', '.join(stopped)} stopped" if stopped else "") + ("; ACLs enforced" if state.acls else "")
          + (f"; {state.security.upper()} (client settings: {cluster.client_env_file})"
             if state.security != "plaintext" else ""))


NodesOpt = Annotated[list[int], typer.Option("--node", help="node number, 1..N (repeat for several)")]


def _local_cluster() -> LocalCluster:
    from sentistream.broker.local import LocalCluster

    return LocalCluster(make_settings().home)


def _indexes(cluster: LocalCluster, numbers: list[int]) -> list[int]:
    """Indexes of the node numbers given; a number the cluster lacks is one plain line."""
    return [cluster.node_index(n) for n in dict.fromkeys(numbers)]


def _where(cluster: LocalCluster, index: int) -> str:
    state = cluster.recorded()
    return f"node {index + 1}" + (f" ({state.node_bootstrap(index)})" if state else "")


@broker_app.command("kill")
def broker_kill(node: NodesOpt) -> None:
    """SIGKILL node(s) of the local broker: a crash, for fault rehearsal."""
    cluster = _local_cluster()
    indexes = _indexes(cluster, node)
    cluster.stop_nodes(indexes, hard=True)
    for i in indexes:
        _echo(f"{_where(cluster, i)} killed")


@broker_app.command("stop")
def broker_stop(
    node: NodesOpt,
    timeout: Annotated[float, typer.Option(min=1, help="seconds before a SIGKILL follows")] = 30.0,
) -> None:
    """Stop node(s) of the local broker cleanly (SIGTERM), for fault rehearsal."""
    cluster = _local_cluster()
    indexes = _indexes(cluster, node)
    cluster.stop_nodes(indexes, hard=False, timeout=timeout)
    for i in indexes:
        _echo(f"{_where(cluster, i)} stopped")


@broker_app.command("start")
def broker_start(
    node: Annotated[list[int] | None, typer.Option("--node", help="node number (repeatable); "
                                                   "default: every stopped node")] = None,
    timeout: Annotated[float, typer.Option(min=1, help="seconds to wait for them")] = 90.0,
) -> None:
    """Start stopped node(s) of the local broker again; return once they answer."""
    cluster = _local_cluster()
    indexes = _indexes(cluster, node) if node else cluster.stopped_nodes()
    if not indexes:
        _echo("every node of the local broker is running")
        return
    cluster.start_nodes(indexes, timeout=timeout)
    for i in indexes:
        _echo(f"{_where(cluster, i)} is back")


@broker_app.command("logs")
def broker_logs(
    lines: Annotated[int, typer.Option("-n", min=1, help="how many lines")] = 40,
    node: Annotated[int, typer.Option(min=1, help="which node")] = 1,
) -> None:
    """Print the end of a local node's log."""
    from sentistream.broker.local import LocalCluster

    path = LocalCluster(make_settings().home).node_log(node - 1)
    if not path.exists():
        raise UserError(f"no log at {path}: is a local broker running?")
    _echo("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))


def _security(settings: Settings) -> dict[str, Any]:
    cfg = settings.kafka_client_config("unused")
    cfg.pop("bootstrap_servers")
    cfg.pop("client_id")
    return cfg


# -- topics ----------------------------------------------------------------------------------
TOPIC_SETTINGS = ("bootstrap_servers", "input_topic", "output_topic", "dlq_topic", "partitions")


@topics_app.command("create")
@with_settings_flags(TOPIC_SETTINGS)
def topics_create(**flags: Any) -> None:
    """Create the input, output and dead-letter topics (idempotent)."""
    from sentistream.worker import kafka_clients

    settings = client_settings(**flags)
    client = kafka_clients.admin(settings, kafka_clients.resolve_bootstrap(settings))
    try:
        created = kafka_clients.ensure_topics(client, kafka_clients.topic_specs(settings))
        for row in kafka_clients.describe_topics(client, list(kafka_clients.topic_specs(settings))):
            state = "created" if row["topic"] in created else "exists"
            _echo(f"{row['topic']:<28} {row['partitions']:>3} partition(s)  {state}")
    finally:
        client.close()


@topics_app.command("describe")
def topics_describe(bootstrap: BootstrapOpt = None) -> None:
    """Partition counts of the project's topics."""
    from sentistream.worker import kafka_clients

    settings = client_settings(bootstrap=bootstrap)
    client = kafka_clients.admin(settings, kafka_clients.resolve_bootstrap(settings))
    try:
        existing = set(client.list_topics())
        for name in kafka_clients.topic_specs(settings):
            if name not in existing:
                _echo(f"{name:<28} missing")
                continue
            row = kafka_clients.describe_topics(client, [name])[0]
            _echo(f"{name:<28} {row['partitions']:>3} partition(s)")
    finally:
        client.close()


# -- worker ----------------------------------------------------------------------------------
@app.command("worker")
@with_settings_flags()
def worker_cmd(
    create_topics: Annotated[bool, typer.Option(help="create missing topics first")] = False,
    **flags: Any,
) -> None:
    """Consume sentences, classify them in micro-batches, publish results. Runs until SIGTERM.
    Every setting is a flag (and an environment variable SENTISTREAM_<NAME>)."""
    from sentistream.worker.logs import setup_logging
    from sentistream.worker.supervisor import run_supervised, run_worker_process

    settings = client_settings(**flags)
    setup_logging(settings.log_level, "supervisor" if settings.processes > 1 else "worker")
    from sentistream.worker.bundle import Bundle, default_bundle_path

    # Refuse a bad bundle before anything starts; a single worker then serves this very session.
    bundle = Bundle(settings.bundle or default_bundle_path(), threads=settings.threads, max_tokens=settings.max_tokens,
                    runtime=settings.runtime)
    if create_topics:
        from sentistream.worker import kafka_clients

        kafka_clients.ensure_topics_exist(settings, kafka_clients.topic_specs(settings))
    if settings.processes > 1:
        del bundle  # each child loads its own
        code = run_supervised(settings)
    else:
        code = run_worker_process(settings, bundle=bundle)
    raise typer.Exit(code)


@app.command("demo")
def demo_cmd(
    bootstrap: BootstrapOpt = None,
    bundle: Annotated[Path | None, typer.Option(help="model bundle dir; default: the shipped one")] = None,
) -> None:
    """End to end: broker (started if none), topics, 2 workers, a review, results, figures."""
    from rich.console import Console

    from sentistream.cli.demo import run_demo

    settings = client_settings(bootstrap=bootstrap, bundle=bundle, metrics_port=0)
    raise typer.Exit(run_demo(settings, Console()))


@app.command("produce")
def produce_cmd(
    file: Annotated[Path | None, typer.Argument(help="lines of text or JSON; default: stdin")] = None,
    bootstrap: BootstrapOpt = None,
    input_topic: Annotated[str | None, typer.Option(help="default: sentences")] = None,
) -> None:
    """Send a file (or stdin), one message per line, to the input topic."""
    import sys

    from sentistream.cli.feed import produce_lines

    settings = client_settings(bootstrap=bootstrap, input_topic=input_topic)
    if file is not None and not file.exists():
        raise UserError(f"no such file: {file}")
    with (file.open() if file else sys.stdin) as lines:
        sent = produce_lines(settings, lines)
    typer.echo(f"sent {sent} message(s) to {settings.input_topic}", err=True)


@app.command("consume")
def consume_cmd(
    bootstrap: BootstrapOpt = None,
    output_topic: Annotated[str | None, typer.Option(help="default: sentences.labeled")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep waiting for results")] = False,
    json_lines: Annotated[bool, typer.Option("--json", help="JSON lines instead of pretty")] = False,
    from_beginning: Annotated[bool, typer.Option(help="start at the oldest result")] = True,
    limit: Annotated[int | None, typer.Option(min=1, help="stop after this many")] = None,
) -> None:
    """Print results from the output topic."""
    from rich.console import Console

    from sentistream.cli.feed import consume_results

    settings = client_settings(bootstrap=bootstrap, output_topic=output_topic)
    consume_results(settings, follow, json_lines, from_beginning, limit, Console())


@app.command("top")
def top_cmd(
    targets: Annotated[list[str] | None, typer.Argument(
        help="workers' metrics endpoints (host:port or URL); default: this host's metrics port")] = None,
    interval: Annotated[float, typer.Option(min=0.2, help="seconds between refreshes")] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="print one frame (two scrapes apart) and exit")] = False,
) -> None:
    """Live terminal dashboard over workers' /metrics: msg/s, p50/p99, lag, DLQ, label mix."""
    from rich.console import Console

    from sentistream.cli.top import run

    if not targets:
        targets = [f"127.0.0.1:{make_settings().metrics_port}"]
    run(targets, interval, once, Console())


@app.command("console")
@with_settings_flags()
def console_cmd(
    host: Annotated[str, typer.Option(help="address to serve on; not a local one needs SENTISTREAM_CONSOLE_TOKEN")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="port to serve on")] = 9500,
    **flags: Any,
) -> None:
    """A web page over the fleet, the models and the dead letters (README "Console")."""
    from sentistream.cli.console import run_console

    run_console(client_settings(**flags), host, port, typer.echo)


@app.command("schema")
def schema_cmd() -> None:
    """Print the JSON Schema of input and output records."""
    from sentistream.worker.contract import dump_schemas

    typer.echo(dump_schemas(), nl=False)


# -- commands that live outside the runtime (imported only when run) ------------------------
_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command("export", context_settings=_PASSTHROUGH)
def export_cmd(ctx: typer.Context) -> None:
    """Train, export and evaluate model bundles (needs the export extra). See `export --help`."""
    from sentistream.export.cli import app as export_app

    code = export_app(args=ctx.args, standalone_mode=False, prog_name="sentistream export")
    raise typer.Exit(code if isinstance(code, int) else 0)


@app.command("bench")
def bench_cmd(
    bootstrap: BootstrapOpt = None,
    n: Annotated[int, typer.Option("-n", min=100, help="sentences per measurement")] = 4000,
    quick: Annotated[bool, typer.Option(help="fewer rows and sentences (< 2 min)")] = False,
    fp32_bundle: Annotated[Path | None, typer.Option(help="an fp32 bundle to compare (export train writes one)")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="PyTorch checkpoint for the naive peer")] = None,
    out: Annotated[Path, typer.Option(help="where bench.md and bench.png go")] = Path("out/bench"),
    soak: Annotated[float | None, typer.Option(metavar="MINUTES", help="instead: steady load for MINUTES with a "
                                               "worker restarted every few minutes (memory, latency, loss)")] = None,
    rate: Annotated[float | None, typer.Option(help="--soak: msgs/s offered; default: half of one worker's "
                                               "measured peak")] = None,
    restart_every: Annotated[float | None, typer.Option(metavar="SECONDS", help="--soak: restart the second "
                                                        "worker this often; default: about 180, a whole number of "
                                                        "periods per third of the run")] = None,
    latency: Annotated[bool, typer.Option("--latency", help="instead: exact per-message latency at 25/50/75 % of "
                                          "one worker's peak: the worker, a no-op model (transport), a bare "
                                          "kafka-python echo, the worker with --latency-target-ms 50")] = False,
    seconds: Annotated[float, typer.Option(min=5, help="--latency: seconds of offered load per row")] = 20.0,
) -> None:
    """Throughput and latency: bare runtimes, workers, a naive peer, the roofline (needs the export extra).
    With --soak MINUTES: the soak (needs only the runtime; matplotlib for its plot)."""
    import importlib.util

    from rich.console import Console

    if soak is not None or rate is not None or restart_every is not None:
        _soak(bootstrap, soak, rate, restart_every, out)
        return
    if latency:
        _latency(bootstrap, seconds, out)
        return
    missing = [m for m in ("matplotlib", "quixstreams", "torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:  # checked first: a benchmark that dies after minutes helps nobody
        raise UserError(f"sentistream bench needs the bench and export extras (missing: {', '.join(missing)}): "
                        "pip install 'sentistream[bench,export]', or make bench")
    from sentistream.bench.run import run
    from sentistream.bench.run_header import bench_command

    if fp32_bundle is not None and not fp32_bundle.exists():
        raise UserError(f"no bundle at {fp32_bundle}")
    settings = client_settings(bootstrap=bootstrap)
    console = Console()
    command = bench_command({"--bootstrap": bootstrap, "-n": None if quick or n == 4000 else n, "--quick": quick,
                             "--fp32-bundle": fp32_bundle, "--checkpoint": checkpoint,
                             "--out": None if out == Path("out/bench") else out}, Path.cwd())
    console.print(run(settings, 1000 if quick else n, quick, fp32_bundle, checkpoint, out, console, command))
    console.print(f"Plot: {out / 'bench.png'}")


def _soak(bootstrap: str | None, minutes: float | None, rate: float | None, restart_every: float | None,
          out: Path) -> None:
    """`bench --soak`: exit 1 with one line naming the failed rules (memory slope, lost, p99 not flat)."""
    if minutes is None:
        raise UserError("--rate and --restart-every go with --soak MINUTES")
    if minutes <= 0 or (rate is not None and rate <= 0):
        raise UserError("--soak and --rate must be greater than 0")
    if restart_every is not None and restart_every < 10:
        raise UserError("--restart-every must be at least 10 seconds (a worker needs that long to start)")
    from sentistream.bench.soak import default_restart_every, report, run_soak, soak_broker

    with soak_broker(client_settings(bootstrap=bootstrap)) as settings:
        figures = run_soak(settings, minutes, rate, restart_every or default_restart_every(minutes), out, _echo)
    _echo(report(figures))
    if figures.failures:
        print(f"sentistream: soak failed: {'; '.join(figures.failures)}", file=sys.stderr)
        raise typer.Exit(1)


def _latency(bootstrap: str | None, seconds: float, out: Path) -> None:
    """`bench --latency`: writes latency.md into ``out``."""
    import importlib.util

    if importlib.util.find_spec("onnx") is None:
        raise UserError("sentistream bench --latency needs the export extra (onnx, the data set): "
                        "pip install 'sentistream[export]'")
    from sentistream.bench.latency import run
    from sentistream.bench.run import sentences
    from sentistream.bench.soak import soak_broker
    from sentistream.worker.bundle import default_bundle_path

    with soak_broker(client_settings(bootstrap=bootstrap)) as settings:
        run(settings, settings.bootstrap_servers, settings.bundle or default_bundle_path(), sentences(4000), seconds,
            out, extra_rows={"target-50": ["--latency-target-ms", "50"]}, say=_echo)
    _echo(f"written: {out / 'latency.md'}")


# -- entry point -----------------------------------------------------------------------------
def _one_line(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "settings"
    return f"invalid setting {where}: {first['msg']}"


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors print one plain line and exit 2, never a traceback."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # kafka-python narrates every refused connection; our own messages say what matters.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    from kafka.errors import KafkaError

    from sentistream.broker.local import BrokerError
    from sentistream.worker.bundle import BundleError
    from sentistream.worker.kafka_clients import NoBrokerConfigured

    try:
        code = app(args=argv, standalone_mode=False, prog_name="sentistream")
    except typer.Abort:
        print("sentistream: aborted", file=sys.stderr)
        sys.exit(130)
    except (UserError, BrokerError, NoBrokerConfigured, BundleError) as exc:
        print(f"sentistream: {exc}", file=sys.stderr)
        sys.exit(2)
    except ValidationError as exc:
        print(f"sentistream: {_one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except KafkaError as exc:
        print(f"sentistream: Kafka error: {exc}", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:
        # Typer vendors click: its usage errors carry format_message() and exit_code.
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            print(f"sentistream: {exc.format_message()}", file=sys.stderr)
            sys.exit(exc.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)

