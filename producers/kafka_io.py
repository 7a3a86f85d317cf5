"""kafka-python plumbing shared by every producer: a tuned idempotent producer, topic setup,
and one-line errors when the broker cannot be reached."""

from __future__ import annotations

from streams.errors import CallstreamError
from streams.topics import TopicNames

#: Large enough for a dead letter holding a 1 MB rejected record.
MAX_REQUEST_BYTES = 4 * 1024 * 1024


def _unreachable(bootstrap: str, exc: Exception) -> CallstreamError:
    return CallstreamError(f"cannot reach Kafka at {bootstrap} ({exc.__class__.__name__}); "
                           "start one with `callstream broker start` or set --bootstrap / "
                           "CALLSTREAM_BOOTSTRAP")


def make_producer(bootstrap: str, **overrides):
    """acks=all + idempotence: a retried send never duplicates or reorders within a key."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError
    options = dict(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                   linger_ms=10, batch_size=512 * 1024, max_request_size=MAX_REQUEST_BYTES,
                   max_in_flight_requests_per_connection=5, request_timeout_ms=30_000)
    options.update(overrides)
    try:
        return KafkaProducer(**options)
    except KafkaError as exc:
        raise _unreachable(bootstrap, exc) from None


def ensure_topics(bootstrap: str, topics: TopicNames, partitions: int) -> None:
    """Create missing topics (inputs with `partitions`, co-partitioned); refuse mismatches."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    except KafkaError as exc:
        raise _unreachable(bootstrap, exc) from None
    try:
        existing = set(admin.list_topics())
        wanted = [NewTopic(name, partitions, 1, topic_configs={"max.message.bytes": str(MAX_REQUEST_BYTES)})
                  for name in topics if name not in existing]
        if wanted:
            try:
                admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass
        check_input_partitions(admin, topics, partitions)
    finally:
        admin.close()


def check_input_partitions(admin, topics: TopicNames, partitions: int | None) -> None:
    """Input topics must be co-partitioned: the per-call join depends on it."""
    described = admin.describe_topics(list(topics.inputs))
    counts = {d.get("name", d.get("topic")): len(d["partitions"]) for d in described}
    if len(set(counts.values())) > 1 or (partitions is not None and
                                         any(c != partitions for c in counts.values())):
        detail = ", ".join(f"{t}={n}" for t, n in sorted(counts.items()))
        raise CallstreamError(f"input topics must all have {partitions or 'the same number of'} "
                              f"partitions (co-partitioned by call_id), found {detail}")
