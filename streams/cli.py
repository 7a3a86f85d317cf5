"""`callstream` console script: argument parsing and one-line errors; work lives elsewhere.

Each subcommand imports its module lazily so `callstream broker status` does not pay for
Faust, Numba or Kafka client imports."""

from __future__ import annotations

import argparse
import os
import sys

from streams.errors import CallstreamError

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


def _bootstrap_default() -> str:
    return os.environ.get("CALLSTREAM_BOOTSTRAP", DEFAULT_BOOTSTRAP)


def _add_connection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", default=None, metavar="HOST:PORT",
                   help="Kafka bootstrap server (default: $CALLSTREAM_BOOTSTRAP or 127.0.0.1:9092)")
    p.add_argument("--topic-prefix", default=os.environ.get("CALLSTREAM_TOPIC_PREFIX", ""),
                   help="prefix for every topic name (isolates runs)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callstream",
        description="Real-time ambulance call telemetry on Kafka: response-time windows and alerts.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    # broker -------------------------------------------------------------------------
    b = sub.add_parser("broker", help="run a local single-node Apache Kafka (KRaft), no Docker")
    b.add_argument("action", choices=["start", "stop", "status", "fetch"],
                   help="fetch only downloads the jars into the cache")
    b.add_argument("--port", type=int, default=None,
                   help="PLAINTEXT port on 127.0.0.1 (default: from --bootstrap, else 9092)")
    b.add_argument("--home", default=None,
                   help="state directory (default: $CALLSTREAM_HOME or ./var/broker)")
    b.add_argument("--bootstrap", default=None, metavar="HOST:PORT",
                   help="where the broker should listen (only 127.0.0.1/localhost hosts)")
    b.add_argument("--partitions", type=int, default=6,
                   help="default partition count for auto-created topics (default 6)")

    # worker -------------------------------------------------------------------------
    w = sub.add_parser("worker", help="run the live processor (Faust worker)")
    _add_connection(w)
    w.add_argument("--partitions", type=int, default=6,
                   help="partition count of the input topics (default 6)")
    w.add_argument("--config", default=None, help="rules and processing settings (TOML)")
    w.add_argument("--web-host", default="127.0.0.1",
                   help="address of the dashboard/API (any non-loopback address needs a token)")
    w.add_argument("--web-port", type=int, default=6066)
    w.add_argument("--web-token", default=os.environ.get("CALLSTREAM_WEB_TOKEN"),
                   help="bearer token for page, API and streams (default: $CALLSTREAM_WEB_TOKEN; "
                        "prefer the variable, arguments show in process lists)")
    w.add_argument("--alertmanager-url", default=os.environ.get("CALLSTREAM_ALERTMANAGER_URL"),
                   help="Alertmanager to notify of alert state changes, e.g. http://127.0.0.1:9093 "
                        "(default: $CALLSTREAM_ALERTMANAGER_URL)")
    w.add_argument("--data-dir", default=None, help="Faust state directory")
    w.add_argument("--idle-timeout", default="5s",
                   help="wall-clock time after which a caught-up, silent input partition stops "
                        "holding the watermark back (default 5s)")
    w.add_argument("--checkpoint-every", default="10s",
                   help="how often join and merge state is snapshotted to Kafka (default 10s)")
    w.add_argument("--loglevel", default="info")

    # replay -------------------------------------------------------------------------
    r = sub.add_parser("replay", help="publish an event log to Kafka, or process it offline")
    r.add_argument("logs", nargs="+", metavar="LOG", help="JSON Lines event log(s), .jsonl or .jsonl.gz")
    r.add_argument("--offline", action="store_true", help="process without Kafka (needs --out)")
    r.add_argument("--out", default=None, help="output directory for --offline")
    r.add_argument("--clock", choices=["arp", "connect"], default=None,
                   help="clock-start rule (default: from --config, else arp)")
    r.add_argument("--config", default=None, help="rules and processing settings (TOML)")
    r.add_argument("--progress", choices=["auto", "always", "never"], default="auto",
                   help="progress bar on stderr (auto: only on a terminal)")
    _add_connection(r)
    r.add_argument("--partitions", type=int, default=6,
                   help="partitions of input topics it creates (default 6)")
    pace = r.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=None, metavar="N",
                      help="pace by event time at N x real time (1 = real time)")
    pace.add_argument("--max", action="store_true", help="publish as fast as possible (default)")
    r.add_argument("--from-line", type=int, default=1, metavar="N",
                   help="resume: start at the N-th record (non-blank line) of the logs, in "
                        "order; an interrupted replay prints the N to use")
    # simulate -----------------------------------------------------------------------
    sim = sub.add_parser("simulate", help="write a realistic synthetic event log (file or Kafka)")
    who = sim.add_mutually_exclusive_group()
    who.add_argument("--trusts", default=None,
                     help="comma-separated trust codes, or 'england' for all English trusts, "
                          "with default performance (default LAS)")
    who.add_argument("--like", default=None, metavar="TRUST",
                     help="calibrate from AmbSYS: a trust (LAS, NWAS, ... or its org code) or "
                          "'england'; reproduces that month's volume, mix and response times")
    sim.add_argument("--month", default=None, metavar="YYYY-MM",
                     help="AmbSYS month for --like (default: the latest one in the data)")
    sim.add_argument("--scenario", default="normal",
                     choices=["normal", "winter-surge", "major-incident", "data-gap"])
    sim.add_argument("--start", default=None,
                     help="RFC 3339 start time or 'now' (default: the month's first day with "
                          "--like, else 2026-01-14T00:00:00Z)")
    span = sim.add_mutually_exclusive_group()
    span.add_argument("--hours", type=float, default=None,
                      help="length of the period (default: the whole month with --like, else 24)")
    span.add_argument("--days", type=float, default=None, help="length of the period in days")
    sim.add_argument("--calls-per-day", type=float, default=None,
                     help="calls per day for every trust (default: each trust's real volume)")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--duplicates", type=float, default=0.0, help="share of events sent twice")
    sim.add_argument("--disorder", type=float, default=0.0,
                     help="share of events delivered late but within the allowed lateness")
    sim.add_argument("--late", type=float, default=0.0,
                     help="share of events delivered later than the allowed lateness")
    sim.add_argument("--lateness", default="2m",
                     help="the processor's allowed lateness the two above refer to (default 2m)")
    sim.add_argument("--malformed", type=float, default=0.0,
                     help="extra corrupted records, as a share of the events")
    sim.add_argument("--id-prefix", default="", help="prefix for every call id")
    dest = sim.add_mutually_exclusive_group(required=True)
    dest.add_argument("--out", help="output file (.jsonl, or .jsonl.gz for gzip)")
    dest.add_argument("--kafka", action="store_true", help="publish to Kafka instead of a file")
    spd = sim.add_mutually_exclusive_group()
    spd.add_argument("--speed", type=float, default=None, metavar="N",
                     help="with --kafka: pace by event time at N x real time (1 = real time)")
    spd.add_argument("--max", action="store_true",
                     help="with --kafka: as fast as possible (default)")
    sim.add_argument("--from-line", type=int, default=1, metavar="N",
                     help="with --kafka: resume at the N-th record (the log is the same for "
                          "the same options and seed)")
    sim.add_argument("--progress", choices=["auto", "always", "never"], default="auto",
                     help="with --kafka: progress bar on stderr (auto: only on a terminal)")
    _add_connection(sim)
    sim.add_argument("--partitions", type=int, default=6,
                     help="with --kafka: partitions of input topics it creates (default 6)")

    # import -------------------------------------------------------------------------
    imp = sub.add_parser("import", help="convert CAD CSV exports into an event log")
    imp.add_argument("csv", nargs="+", metavar="CSV", help="CSV export(s), with a header row")
    imp.add_argument("--preset", default=None,
                     help="a shipped column mapping: sf-fire (San Francisco Fire Department "
                          "Calls for Service)")
    imp.add_argument("--mapping", default=None, metavar="FILE",
                     help="column-mapping TOML; with --preset, its keys override the preset's")
    imp.add_argument("--out", required=True, help="event log to write (.jsonl or .jsonl.gz)")
    imp.add_argument("--dead-letters", default=None, metavar="FILE",
                     help="rows that cannot be used (default: OUT with .dead_letters.jsonl)")

    # report -------------------------------------------------------------------------
    rep = sub.add_parser("report", help="self-contained HTML report of an offline replay's outputs")
    rep.add_argument("directory", metavar="REPLAY_DIR",
                     help="the --out DIR of `callstream replay --offline` (summary.json, stats.jsonl, alerts.jsonl)")
    rep.add_argument("--out", default=None, help="HTML file to write (default: REPLAY_DIR/report.html)")
    rep.add_argument("--window", default=None,
                     help="rolling window the time charts use (default: 1h, else the shortest)")

    # tail ---------------------------------------------------------------------------
    t = sub.add_parser("tail", help="print records from an output topic (stats, alerts, deadletter)")
    t.add_argument("which", choices=["stats", "alerts", "deadletter"])
    _add_connection(t)
    t.add_argument("--window", default=None, help="only stats of this window (e.g. 1h)")
    t.add_argument("--idle", type=float, default=5.0,
                   help="stop after this many seconds without a new record (0: never)")
    t.add_argument("--from-beginning", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(args, parser) or 0
    except CallstreamError as exc:
        print(f"callstream: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("callstream: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int | None:
    if getattr(args, "bootstrap", None) is None and args.command != "broker":
        args.bootstrap = _bootstrap_default()
    if args.command == "broker":
        from streams import broker
        return broker.cli(args)
    if args.command == "worker":
        from streams import worker
        return worker.cli(args)
    if args.command == "replay":
        if args.offline:
            if not args.out:
                raise CallstreamError("--offline needs --out DIR (where summary.json and stats.jsonl go)")
            from streams import replay
            return replay.cli(args)
        from producers import publish
        return publish.cli(args)
    if args.command == "simulate":
        from producers import simulate
        return simulate.cli(args)
    if args.command == "import":
        from producers import importer
        return importer.cli(args)
    if args.command == "report":
        from streams import report
        return report.cli(args)
    if args.command == "report":
        from streams import report
        return report.cli(args)
    if args.command == "tail":
        from streams import tail
        return tail.cli(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
