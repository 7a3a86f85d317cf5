"""`callstream worker`: the Faust app around the live processor (`streams.live`).

Faust runs the process: its web server (bound to 127.0.0.1 unless told otherwise, with
/health and the control-room feed from `streams.web.attach`), signal handling (SIGTERM
snapshots the state and leaves the consumer groups) and logging. The processing itself is the
pure core in two levels, `streams.partition` per input partition and `streams.aggregate` for
the merge, driven by `streams.live.LiveProcessor`, a task the worker starts beside the app."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from streams.errors import CallstreamError
from streams.live import LiveOptions, LiveProcessor, ensure_internal_topics
from streams.settings import ProcessingSettings, parse_duration_ms
from streams.topics import TopicNames

log = logging.getLogger("callstream.worker")


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
    idle_timeout_s: float = 5.0
    checkpoint_every_s: float = 10.0

    @property
    def app_id(self) -> str:
        return f"{self.topic_prefix}callstream"


def live_processor(config: WorkerConfig) -> LiveProcessor:
    return LiveProcessor(LiveOptions(
        bootstrap=config.bootstrap, topic_prefix=config.topic_prefix, group=config.app_id,
        partitions=config.partitions, settings=config.settings,
        rules_factory=lambda: config.rules, idle_timeout_s=config.idle_timeout_s,
        checkpoint_every_s=config.checkpoint_every_s))


def build_app(config: WorkerConfig, live: LiveProcessor | None = None):
    """The Faust app: web server and control-room feed; the live processor (made here
    unless given; started by `run_worker`, stopped with the app) as `app.callstream_live`."""
    import faust

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
        # a restarted worker waits for its killed predecessor's session to expire
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
    )
    from streams.web.attach import attach
    if live is None:
        live = live_processor(config)
    control_room = attach(app, bootstrap=config.bootstrap, topics=topics,
                          group_id=f"{config.app_id}-join",
                          web_host=config.web_host, web_token=config.web_token,
                          alertmanager_url=config.alertmanager_url,
                          watermark=lambda: live.watermark,
                          timezone=config.settings.timezone)
    live.opts.on_alert = control_room.alert           # the merge's alerts, in this process
    app.callstream_live = live

    async def stop_live(_app, **_kwargs) -> None:
        await live.stop()
    app.on_before_shutdown.connect(stop_live)

    @app.page("/health")
    async def health(web, request):
        return web.json({"status": "ok", **live.state.health()})

    return app


def preflight(config: WorkerConfig) -> None:
    """Fail fast, in one line, before Faust starts retrying forever."""
    from producers.kafka_io import ensure_topics
    ensure_topics(config.bootstrap, TopicNames.with_prefix(config.topic_prefix),
                  config.partitions)
    from streams.live import InternalTopics
    ensure_internal_topics(config.bootstrap, InternalTopics.with_prefix(config.topic_prefix))


def run_worker(config: WorkerConfig, loglevel: str = "info") -> int:
    import asyncio
    from streams.web.attach import check_options
    check_options(config.web_host, config.web_token, config.alertmanager_url)  # before Kafka
    preflight(config)
    # the merge's process starts now, before Faust is even imported: on a backlog the merge
    # is the last stage to finish, so its start-up must not wait for Faust's
    live = live_processor(config)
    level = logging.getLevelName(loglevel.upper())
    live.spawn_merge(level if isinstance(level, int) else logging.INFO)
    from faust import Worker
    app = build_app(config, live)

    class LiveWorker(Worker):
        async def on_first_start(self) -> None:
            # the processor needs only the event loop (its own Kafka clients), not the
            # app: started before the app's start-up (which waits a fixed second for
            # tables this worker does not have), and stopped by `stop_live`
            self._live_run = asyncio.ensure_future(live.run())
            # a failure is logged (and stops the worker) by the processor itself
            self._live_run.add_done_callback(lambda f: f.cancelled() or f.exception())
            await super().on_first_start()

    worker = LiveWorker(app, loglevel=loglevel, quiet=True)
    log.info("callstream worker consuming %s from %s", ", ".join(
        TopicNames.with_prefix(config.topic_prefix).inputs), config.bootstrap)
    worker.execute_from_commandline()
    return 0


def cli(args) -> int:
    from streams.replay import load_settings_and_rules
    if args.partitions < 1:
        raise CallstreamError("--partitions must be at least 1")
    idle = parse_duration_ms(args.idle_timeout, "--idle-timeout") / 1000.0
    every = parse_duration_ms(args.checkpoint_every, "--checkpoint-every") / 1000.0
    if idle <= 0 or every <= 0:
        raise CallstreamError("--idle-timeout and --checkpoint-every must be positive")
    settings, rules = load_settings_and_rules(args.config, None)
    config = WorkerConfig(bootstrap=args.bootstrap, topic_prefix=args.topic_prefix,
                          partitions=args.partitions, web_host=args.web_host,
                          web_port=args.web_port, data_dir=args.data_dir, settings=settings,
                          rules=rules, web_token=args.web_token,
                          alertmanager_url=args.alertmanager_url, idle_timeout_s=idle,
                          checkpoint_every_s=every)
    return run_worker(config, args.loglevel)
