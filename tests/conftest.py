"""Shared fixtures: a real Kafka broker for integration tests, started lazily once per session.

* ``kafka_bootstrap`` -- "HOST:PORT" of a broker: ``$CALLSTREAM_BOOTSTRAP`` if set, else a
  private single-node KRaft broker (own temp dir, free ports) started on first use and
  stopped at the end of the session. If none can be had, the test fails under ``CI=true``
  and is skipped (with the reason) elsewhere.
* ``topic_prefix`` -- a unique topic-name prefix per test ("t1a2b3c4d.").
* ``create_topics(names, partitions=6)`` -- create topics and wait until metadata shows
  every partition with a leader.

Tests that use ``kafka_bootstrap`` (directly or through another fixture) get the ``broker``
marker, so ``pytest -m "not broker"`` runs only what needs no Java.
"""

from __future__ import annotations

import os
import uuid

import pytest

BROKER_START_TIMEOUT = float(os.environ.get("CALLSTREAM_BROKER_TIMEOUT", "90"))
_broker_report: list[str] = []  # shown in the terminal summary (CI logs keep start times)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def broker_unavailable(reason: str):
    """Fail loudly in CI (a broker is part of the contract there); skip on a laptop."""
    if in_ci():
        pytest.fail(f"no Kafka broker for integration tests: {reason}", pytrace=False)
    pytest.skip(f"no Kafka broker: {reason}")


def pytest_configure(config):
    # kafka-python loads its protocol schemas with importlib.resources' legacy API, which
    # warns about a hundred times per process; the noise hides warnings that matter.
    for message in ("read_text is deprecated", "open_text is deprecated"):
        config.addinivalue_line("filterwarnings", f"ignore:{message}:DeprecationWarning")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if {"kafka_bootstrap", "kafka_jars"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.broker)


def pytest_terminal_summary(terminalreporter):
    for line in _broker_report:
        terminalreporter.write_line(f"kafka: {line}")


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory):
    external = os.environ.get("CALLSTREAM_BOOTSTRAP")
    if external:
        yield external
        return

    from streams.broker import LocalBroker, free_port
    from streams.errors import CallstreamError

    home = tmp_path_factory.mktemp("kafka-broker")
    port = free_port()
    controller_port = free_port()
    while controller_port == port:
        controller_port = free_port()
    broker = LocalBroker(home, port=port, controller_port=controller_port)
    try:
        # die_with_parent: a killed test run leaves no JVM behind.
        seconds = broker.start(timeout=BROKER_START_TIMEOUT, die_with_parent=True)
    except CallstreamError as exc:
        broker_unavailable(str(exc))
    _broker_report.append(f"session broker up at {broker.bootstrap} in {seconds:.1f} s "
                          f"(Kafka {(broker.status() or {}).get('kafka_version', '?')}, home {home})")
    try:
        yield broker.bootstrap
    finally:  # also runs on Ctrl-C: pytest tears session fixtures down on interruption
        broker.stop(timeout=20)


@pytest.fixture(scope="session")
def kafka_jars():
    """Java on PATH and the Kafka jars in the cache (fetched if needed), for tests that start
    their own broker; the same fail-in-CI / skip-on-a-laptop rule as ``kafka_bootstrap``."""
    from streams.broker import ensure_jars, find_java
    from streams.errors import CallstreamError

    try:
        find_java()
        return ensure_jars()
    except CallstreamError as exc:
        broker_unavailable(str(exc))


@pytest.fixture
def broker_report() -> list[str]:
    """Lines to show in the terminal summary (e.g. how long a broker took to start)."""
    return _broker_report


@pytest.fixture
def topic_prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}."


@pytest.fixture
def create_topics(kafka_bootstrap):
    """``create_topics(["a", "b"], partitions=6)``: create (idempotently) and wait for leaders."""
    from kafka import KafkaAdminClient
    from kafka.errors import TopicAlreadyExistsError

    admins = []

    def create(names, partitions: int = 6, timeout: float = 30.0) -> list[str]:
        names = [names] if isinstance(names, str) else list(names)
        if not admins:
            admins.append(KafkaAdminClient(bootstrap_servers=kafka_bootstrap,
                                           client_id="tests-create-topics"))
        admin = admins[0]
        from kafka.admin import NewTopic
        from producers.kafka_io import topic_configs
        try:
            # every test topic may carry event-time timestamps: keep them like inputs
            admin.create_topics([NewTopic(n, partitions, 1, topic_configs=topic_configs(True))
                                 for n in names], timeout_ms=int(timeout * 1000))
        except TopicAlreadyExistsError:
            pass
        admin.wait_for_topics(names, timeout_ms=int(timeout * 1000))
        return names

    yield create
    for admin in admins:
        admin.close()
