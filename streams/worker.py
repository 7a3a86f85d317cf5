"""`callstream worker`: the Faust adapter around the processing core.

Consumes the three input topics (co-partitioned by call_id) as raw bytes in batches, decodes
with `streams.events.decode` (the same decoder as the offline replay), sends every rejected
record to `calls.deadletter` with its original bytes, reason and topic/partition/offset, and
feeds valid events to a `Processor` whose window records go to `calls.stats` and alerts to
`calls.alerts`. The control-room feed (dashboard, API, /metrics, Alertmanager notifications)
is attached by `streams.web.attach`. Scale-out across workers (two-level aggregation) is a
later step; one worker owning all partitions gives exactly the offline replay's answers."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import orjson

from streams.errors import CallstreamError
from streams.events import DeadLetter, Event, decode
from streams.processor import CollectingOutputs, Processor
from streams.settings import ProcessingSettings
from streams.topics import TopicNames

log = logging.getLogger("callstream.worker")

BATCH_EVENTS = 2000
BATCH_WITHIN_S = 0.2


@dataclass
class WorkerConfig:
    bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = ""
    partitions: int = 6
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    data_dir: str | None = None
    settings: ProcessingSettings = field(default_factory=ProcessingSettings)
    rules: object | None = None
    web_token: str | None = None            # required when web_host is not loopback
    alertmanager_url: str | None = None

    @property
    def app_id(self) -> str:
        return f"{self.topic_prefix}callstream"


def stats_key(record: dict) -> bytes:
    return f"{record['trust']}/{record['category']}/{record['window']}".encode()


def build_app(config: WorkerConfig):
    """The Faust app: one agent over the three input topics."""
    import faust

    from producers.kafka_io import MAX_REQUEST_BYTES

    topics = TopicNames.with_prefix(config.topic_prefix)
    app = faust.App(
        config.app_id,
        broker=f"kafka://{config.bootstrap}",
        store="memory://",
        datadir=config.data_dir or f"var/worker-{config.app_id}",
        web_bind=config.web_host,
        web_host=config.web_host,
        web_port=config.web_port,
        topic_partitions=config.partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_max_request_size=MAX_REQUEST_BYTES,
        consumer_max_fetch_size=MAX_REQUEST_BYTES * 2,
        key_serializer="raw",
        value_serializer="raw",
    )
    inputs = app.topic(*topics.inputs, key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw",
                       partitions=config.partitions)
    out_stats = app.topic(topics.stats, key_serializer="raw", value_serializer="raw")
    out_alerts = app.topic(topics.alerts, key_serializer="raw", value_serializer="raw")
    out_dead = app.topic(topics.deadletter, key_serializer="raw", value_serializer="raw")

    outputs = CollectingOutputs()
    processor = Processor(config.settings, outputs, rules=config.rules, position_kind="offset")
    counters = app.callstream_counters = {"events": 0, "dead_letters": 0, "stats": 0}
    app.callstream_processor = processor
    from streams.web.attach import attach
    control_room = attach(app, bootstrap=config.bootstrap, topics=topics, group_id=config.app_id,
                          web_host=config.web_host, web_token=config.web_token,
                          alertmanager_url=config.alertmanager_url,
                          watermark=lambda: processor.watermark,
                          timezone=config.settings.timezone)
    max_bytes = config.settings.max_record_bytes
    dead_keys: dict[int, bytes | None] = {}

    @app.agent(inputs)
    async def ingest(stream):
        async for batch in stream.take_events(BATCH_EVENTS, within=BATCH_WITHIN_S):
            for event in batch:
                msg = event.message
                raw = msg.value if msg.value is not None else b""
                r = decode(raw, msg.topic, msg.offset, max_bytes)
                if type(r) is Event:
                    processor.feed(r)
                else:
                    letter = DeadLetter(r.reason, r.detail, msg.topic, msg.offset, raw,
                                        "offset", msg.partition)
                    dead_keys[id(letter)] = msg.key
                    processor.reject(letter)
            counters["events"] += len(batch)
            await _flush(outputs)

    async def _flush(out: CollectingOutputs) -> None:
        for letter in out.dead_letters:
            key = dead_keys.pop(id(letter), None)
            await out_dead.send(key=key, value=orjson.dumps(letter.to_dict()))
        counters["dead_letters"] += len(out.dead_letters)
        for rec in out.stats_records:
            await out_stats.send(key=stats_key(rec), value=orjson.dumps(rec))
        counters["stats"] += len(out.stats_records)
        for rec in out.alert_records:
            await out_alerts.send(key=str(rec.get("fingerprint", "")).encode(),
                                  value=orjson.dumps(rec))
            control_room.alert(rec)
        out.dead_letters.clear()
        out.stats_records.clear()
        out.alert_records.clear()

    @app.page("/health")
    async def health(web, request):
        return web.json({"status": "ok", **counters, "watermark": processor.watermark})

    return app


def preflight(config: WorkerConfig) -> None:
    """Fail fast, in one line, before Faust starts retrying forever."""
    from producers.kafka_io import ensure_topics
    ensure_topics(config.bootstrap, TopicNames.with_prefix(config.topic_prefix),
                  config.partitions)


def run_worker(config: WorkerConfig, loglevel: str = "info") -> int:
    from faust import Worker
    from streams.web.attach import check_options
    check_options(config.web_host, config.web_token, config.alertmanager_url)  # before Kafka
    preflight(config)
    app = build_app(config)
    worker = Worker(app, loglevel=loglevel, quiet=True)
    log.info("callstream worker consuming %s from %s", ", ".join(
        TopicNames.with_prefix(config.topic_prefix).inputs), config.bootstrap)
    worker.execute_from_commandline()
    return 0


def cli(args) -> int:
    from streams.replay import load_settings_and_rules
    if args.partitions < 1:
        raise CallstreamError("--partitions must be at least 1")
    settings, rules = load_settings_and_rules(args.config, None)
    config = WorkerConfig(bootstrap=args.bootstrap, topic_prefix=args.topic_prefix,
                          partitions=args.partitions, web_host=args.web_host,
                          web_port=args.web_port, data_dir=args.data_dir, settings=settings,
                          rules=rules, web_token=args.web_token,
                          alertmanager_url=args.alertmanager_url)
    return run_worker(config, args.loglevel)
