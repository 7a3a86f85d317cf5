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
    w.add_argument("--web-host", default="127.0.0.1")
    w.add_argument("--web-port", type=int, default=6066)
    w.add_argument("--data-dir", default=None, help="Faust state directory")
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
    r.add_argument("--partitions", type=int, default=6)
    r.add_argument("--speed", type=float, default=None, help="pace by event time at N x real time")
    r.add_argument("--max", action="store_true", help="publish as fast as possible (default)")
    r.add_argument("--from-line", type=int, default=1, help="resume: first line number to publish")
    # simulate -----------------------------------------------------------------------
    sim = sub.add_parser("simulate", help="write a realistic synthetic event log")
    sim.add_argument("--trusts", default="LAS",
                     help="comma-separated trust codes, or 'england' for all English trusts")
    sim.add_argument("--calls-per-day", type=float, default=None,
                     help="per trust (default: about each trust's real volume)")
    sim.add_argument("--start", default="2026-01-14T00:00:00Z", help="RFC 3339 start time")
    sim.add_argument("--hours", type=float, default=24.0, help="length of the period")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--duplicates", type=float, default=0.0, help="share of events sent twice")
    sim.add_argument("--disorder", type=float, default=0.0,
                     help="share of events delivered late but within the allowed lateness")
    sim.add_argument("--malformed", type=float, default=0.0, help="share of corrupted records")
    sim.add_argument("--out", required=True, help="output file (.jsonl or .jsonl.gz)")

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
    if args.command == "tail":
        from streams import tail
        return tail.cli(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
