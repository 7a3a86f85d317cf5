"""The local Kafka broker: config rendering and CLI errors (no Java), then the real thing."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streams import broker as B
from streams.errors import CallstreamError

REPO = Path(__file__).resolve().parent.parent


def callstream(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the `callstream` CLI as a subprocess (same interpreter, repo on the path)."""
    full_env = dict(os.environ if env is None else env)
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=REPO, env=full_env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("callstream: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------- no Java needed


def test_server_properties_single_node_kraft(tmp_path):
    text = B.render_server_properties(port=19092, controller_port=19093,
                                      data_dir=tmp_path / "data", partitions=4)
    props = dict(ln.split("=", 1) for ln in text.splitlines()
                 if ln.strip() and not ln.startswith("#"))
    assert "@" not in "".join(v for k, v in props.items() if k != "controller.quorum.voters")
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["log.dirs"] == str(tmp_path / "data")
    assert props["num.partitions"] == "4"
    assert props["auto.create.topics.enable"] == "true"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert int(props["group.min.session.timeout.ms"]) <= 1000
    assert props["message.max.bytes"] == "1048588"


def test_server_properties_rejects_nonsense(tmp_path):
    with pytest.raises(CallstreamError, match="partitions"):
        B.render_server_properties(9092, 9093, tmp_path, partitions=0)
    with pytest.raises(CallstreamError, match="differ"):
        B.render_server_properties(9092, 9092, tmp_path)


def test_cluster_id_is_22_url_safe_chars():
    ids = {B.new_cluster_id() for _ in range(20)}
    assert len(ids) == 20
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", i) for i in ids)


def test_cache_is_overridable(monkeypatch, tmp_path):
    monkeypatch.delenv("CALLSTREAM_CACHE", raising=False)
    assert B.jars_dir("3.9.2") == REPO / ".cache" / "kafka-3.9.2" / "libs"
    monkeypatch.setenv("CALLSTREAM_CACHE", str(tmp_path))
    assert B.jars_dir("3.9.2") == tmp_path / "kafka-3.9.2" / "libs"
    assert B.cached_jars() is None


def test_free_port_is_free():
    port = B.free_port()
    assert not B.port_in_use(port)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        assert B.port_in_use(port)


def test_start_without_java_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = str(tmp_path / "empty")
    proc = callstream("broker", "start", "--home", str(tmp_path / "home"),
                      "--port", str(B.free_port()), env=env)
    assert_one_line_error(proc, "java not found")


def test_fetch_without_maven_is_one_line(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path / "empty"), CALLSTREAM_CACHE=str(tmp_path / "cache"))
    proc = callstream("broker", "fetch", env=env)
    assert_one_line_error(proc, "mvn not found")


def test_start_on_taken_port_is_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = callstream("broker", "start", "--home", str(tmp_path / "home"), "--port", str(port))
    assert_one_line_error(proc, f"127.0.0.1:{port}", "already in use")


def test_bad_bootstrap_is_one_line(tmp_path):
    proc = callstream("broker", "start", "--home", str(tmp_path), "--bootstrap", "10.0.0.1:9092")
    assert_one_line_error(proc, "127.0.0.1")


def test_status_and_stop_when_nothing_runs(tmp_path):
    proc = callstream("broker", "status", "--home", str(tmp_path))
    assert proc.returncode == 3, proc
    assert proc.stdout.startswith("down")
    proc = callstream("broker", "stop", "--home", str(tmp_path))
    assert proc.returncode == 0, proc
    assert "nothing to stop" in proc.stdout
    assert proc.stderr == ""


def test_stale_pid_file_is_never_signalled(tmp_path):
    """A PID file naming some other live process (a recycled PID): not ours, not killed."""
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "broker.pid").write_text(f"{victim.pid}\n")
        broker = B.LocalBroker(tmp_path)
        assert broker.status() is None
        assert broker.stop(timeout=1) is None
        assert victim.poll() is None  # still alive
        assert not (tmp_path / "broker.pid").exists()
    finally:
        victim.kill()
        victim.wait()


# --------------------------------------------------------------------------- real broker


def test_produce_consume_round_trip(kafka_bootstrap, topic_prefix, create_topics):
    from kafka import KafkaConsumer, KafkaProducer

    topic = topic_prefix + "roundtrip"
    create_topics([topic], partitions=3)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    sent = [(f"call-{i}".encode(), f'{{"n": {i}}}'.encode()) for i in range(20)]
    for key, value in sent:
        producer.send(topic, key=key, value=value)
    producer.flush(timeout=30)
    producer.close()

    consumer = KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap,
                             group_id=topic_prefix + "group", auto_offset_reset="earliest",
                             session_timeout_ms=6000, heartbeat_interval_ms=1000,
                             consumer_timeout_ms=1000)
    got = []
    deadline = time.monotonic() + 60
    try:
        while len(got) < len(sent) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                got.extend((r.key, r.value) for r in records)
        consumer.commit()
    finally:
        consumer.close()
    assert sorted(got) == sorted(sent)


def test_cli_start_status_stop(tmp_path, kafka_jars, broker_report):
    home = str(tmp_path / "broker")
    port = B.free_port()
    try:
        proc = callstream("broker", "start", "--home", home, "--port", str(port))
        assert proc.returncode == 0, proc.stderr
        m = re.search(rf"broker up at 127\.0\.0\.1:{port} in (\d+\.\d) s", proc.stdout)
        assert m, proc.stdout
        broker_report.append(f"`callstream broker start` up at 127.0.0.1:{port} in {m.group(1)} s")

        proc = callstream("broker", "status", "--home", home)
        assert proc.returncode == 0, proc
        assert proc.stdout.startswith(f"up: 127.0.0.1:{port} (pid "), proc.stdout

        again = callstream("broker", "start", "--home", home, "--port", str(port))
        assert_one_line_error(again, "already running")
    finally:
        proc = callstream("broker", "stop", "--home", home)
    assert proc.returncode == 0, proc
    assert proc.stdout.startswith("stopped broker"), proc.stdout

    proc = callstream("broker", "status", "--home", home)
    assert proc.returncode == 3, proc
    assert proc.stdout.startswith("down")
    assert not B.port_in_use(port)


def test_broker_dying_during_startup_is_one_line(tmp_path, kafka_jars):
    """A data dir formatted for another node id makes Kafka exit at once: report, don't hang."""
    home = tmp_path / "broker"
    (home / "data").mkdir(parents=True)
    (home / "data" / "meta.properties").write_text(
        "version=1\ncluster.id=AAAAAAAAAAAAAAAAAAAAAA\nnode.id=7\n"
        "directory.id=AAAAAAAAAAAAAAAAAAAAAA\n")
    proc = callstream("broker", "start", "--home", str(home), "--port", str(B.free_port()))
    line = assert_one_line_error(proc, "exited during startup", str(home / "logs" / "server.log"))
    assert "node id" in line
    assert not (home / "broker.pid").exists()
