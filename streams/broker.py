"""A real local Apache Kafka for development and tests: no Docker, just Java and Maven.

Kafka 3.9 in KRaft mode (one JVM is both broker and controller) runs from the jars that
Maven resolves from Maven Central into a git-ignored cache:

    callstream broker fetch     # download the jars once (idempotent)
    callstream broker start     # format the data dir, start, wait until it answers metadata
    callstream broker status    # "up: 127.0.0.1:9092 (pid N, data DIR)" (exit 0) or "down" (exit 3)
    callstream broker stop      # SIGTERM to that PID only, SIGKILL after a timeout

Python API (tests use it): :func:`ensure_jars`, :class:`LocalBroker`, :func:`free_port`.

Layout of a broker home (``--home``, default ``$CALLSTREAM_HOME`` or ``./var/broker``)::

    server.properties  log4j.properties  data/  logs/server.log  logs/stdout.log
    broker.pid  state.json  cluster.id
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from streams.childproc import die_with_parent as _die_with_parent
from streams.errors import CallstreamError

#: Tried in order: the first one Maven Central can resolve is used.
KAFKA_VERSIONS = ("3.9.2", "3.9.1")
DEFAULT_PORT = 9092
DEFAULT_PARTITIONS = 6
HOST = "127.0.0.1"
#: A fixed heap (no resizing) with 16 MB regions, as Kafka's own production settings have
#: it: with the JVM's default 1 MB regions every produce request over 512 KB (a batch of
#: reports, a snapshot) is a humongous object allocated in the old generation, and G1 ran
#: concurrent marking cycles back to back: 7.7 s of the broker's 18.6 s of CPU in a live
#: benchmark run, against ~0.1 s with these settings.
HEAP = ("-Xmx1g", "-Xms1g", "-XX:G1HeapRegionSize=16m")
MAIN_CLASS = "kafka.Kafka"

_PACKAGE_DIR = Path(__file__).resolve().parent
_TEMPLATES = _PACKAGE_DIR / "kafka"
#: The repository root (the parent of the ``streams`` package directory).
REPO_ROOT = _PACKAGE_DIR.parent
_MARKER = "FETCH_COMPLETE"
#: Fully qualified, so Maven needs no plugin-prefix lookup (clearer errors when offline).
_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"


# --------------------------------------------------------------------------- tools


def cache_root() -> Path:
    """Where jars and the private Maven repository live (``$CALLSTREAM_CACHE`` or ``<repo>/.cache``)."""
    env = os.environ.get("CALLSTREAM_CACHE")
    return Path(env).expanduser().resolve() if env else REPO_ROOT / ".cache"


def default_home() -> Path:
    return Path(os.environ.get("CALLSTREAM_HOME") or "var/broker").expanduser().resolve()


def find_java() -> str:
    """Path of the ``java`` executable ($JAVA_HOME/bin/java, else the one on PATH)."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("java")
    if not found:
        raise CallstreamError(
            "java not found (JAVA_HOME unset and no `java` on PATH): install a Java 17 runtime, "
            "e.g. `apt-get install openjdk-17-jre-headless`, or set JAVA_HOME")
    return found


def find_mvn() -> str:
    found = shutil.which("mvn")
    if not found:
        raise CallstreamError(
            "mvn not found on PATH: Maven is needed once to fetch the Kafka jars; install it "
            "(e.g. `apt-get install maven`) or point CALLSTREAM_CACHE at a cache that has them")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = HOST) -> bool:
    """True when a listener already holds ``host:port`` (the check Java's bind would fail)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the JVM does
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _accepts(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- jars


def jars_dir(version: str) -> Path:
    return cache_root() / f"kafka-{version}" / "libs"


def cached_jars() -> Path | None:
    """The libs directory of a complete earlier fetch, if any (preferred version first)."""
    for version in KAFKA_VERSIONS:
        libs = jars_dir(version)
        if (libs.parent / _MARKER).is_file():
            return libs
    return None


def kafka_version(libs: Path) -> str:
    return libs.parent.name.removeprefix("kafka-")


def ensure_jars(log=None) -> Path:
    """Return the directory of the Kafka runtime jars, fetching them with Maven if needed.

    Idempotent: a marker file is written after a complete fetch. Concurrent fetches are
    serialised by a lock file and each one resolves into a temp dir that is renamed into
    place, so a crash or a race never leaves a half-filled ``libs``."""
    libs = cached_jars()
    if libs:
        return libs
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        libs = cached_jars()  # another process may have finished while we waited
        if libs:
            return libs
        mvn = find_mvn()
        problems = []
        for version in KAFKA_VERSIONS:
            if log:
                log(f"fetching Apache Kafka {version} jars from Maven Central into {jars_dir(version)} ...")
            problem = _fetch(mvn, version, root)
            if problem is None:
                return jars_dir(version)
            problems.append(f"{version}: {problem}")
            if f"kafka_2.13:jar:{version}" not in problem:
                break  # not "no such version": the next version would fail the same way
        raise CallstreamError(
            "could not fetch the Kafka jars with Maven (" + "; ".join(problems) + "); check network "
            "access to Maven Central and retry `callstream broker fetch`")


def _fetch(mvn: str, version: str, root: Path) -> str | None:
    """Resolve one version into ``<root>/kafka-<version>``; None on success, else the reason."""
    final = root / f"kafka-{version}"
    work = Path(tempfile.mkdtemp(prefix=f".kafka-{version}-", dir=root))
    try:
        pom = (_TEMPLATES / "pom.xml").read_text().replace("@KAFKA_VERSION@", version)
        (work / "pom.xml").write_text(pom)
        cmd = [mvn, "-q", "-B", "-f", str(work / "pom.xml"),
               f"-Dmaven.repo.local={root / 'm2'}",
               f"{_DEPENDENCY_PLUGIN}:copy-dependencies", "-DincludeScope=runtime",
               f"-DoutputDirectory={work / 'libs'}"]
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=900)
        except subprocess.TimeoutExpired:
            return "mvn timed out after 15 min"
        if proc.returncode != 0:
            return _maven_error(proc.stdout + proc.stderr) or f"mvn exit {proc.returncode}"
        names = {p.name for p in (work / "libs").glob("*.jar")}
        for need in (f"kafka_2.13-{version}.jar", f"kafka-clients-{version}.jar",
                     "slf4j-reload4j-1.7.36.jar", "reload4j-1.2.25.jar"):
            if need not in names:
                return f"mvn finished but {need} is missing"
        (work / _MARKER).write_text(f"{version}\n{len(names)} jars\n")
        if final.exists():  # a stale, incomplete directory (no marker): replace it
            shutil.rmtree(final)
        os.rename(work, final)
        return None
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_MAVEN_NOISE = re.compile(r"\[ERROR\]\s*(->|\[Help|Re-run|For more|To see|$)")


def _maven_error(output: str) -> str:
    """The line of Maven's output that names the problem, without its boilerplate."""
    for ln in _ANSI.sub("", output).splitlines():
        ln = ln.strip()
        if ln.startswith("[ERROR]") and not _MAVEN_NOISE.match(ln):
            ln = ln.removeprefix("[ERROR]").strip()
            ln = re.sub(r"^Failed to execute goal on project [^:]+: ", "", ln)
            ln = re.sub(r"^Could not resolve dependencies for project \S+: ", "", ln)
            return re.sub(r"\s*-> \[Help \d+\]$", "", ln)[:700]
    return _last_meaningful(output)


def _last_meaningful(text: str) -> str:
    """The last line of a log or tool output that says something (errors preferred)."""
    lines = [_ANSI.sub("", ln).strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(("at ", "..."))]
    for ln in reversed(lines):
        if any(w in ln for w in ("ERROR", "FATAL", "Exception", "Error", "error")):
            return ln[:400]
    return lines[-1][:400] if lines else ""


# --------------------------------------------------------------------------- config


def render_server_properties(port: int, controller_port: int, data_dir: Path,
                             partitions: int = DEFAULT_PARTITIONS, node_id: int = 1) -> str:
    """server.properties for a single-node KRaft broker+controller on 127.0.0.1."""
    if partitions < 1:
        raise CallstreamError(f"--partitions must be at least 1, not {partitions}")
    if port == controller_port:
        raise CallstreamError(f"broker and controller ports must differ (both {port})")
    text = (_TEMPLATES / "server.properties").read_text()
    for key, value in {"NODE_ID": node_id, "PORT": port, "CONTROLLER_PORT": controller_port,
                       "DATA_DIR": data_dir, "PARTITIONS": partitions}.items():
        text = text.replace(f"@{key}@", str(value))
    return text


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (22 chars)."""
    while True:   # a leading "-" would be read as an option by kafka-storage's parser
        cid = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


# --------------------------------------------------------------------------- process


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited; it only waits to be reaped
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class LocalBroker:
    """One single-node KRaft Kafka whose state lives in ``home``.

    ``start()`` returns the seconds from launch to ready; ``status()`` returns the state
    dict (pid, bootstrap, controller_port, data_dir, started_at, ...) or None when down."""

    def __init__(self, home: Path | str, port: int = DEFAULT_PORT, controller_port: int | None = None,
                 partitions: int = DEFAULT_PARTITIONS, node_id: int = 1):
        self.home = Path(home).expanduser().resolve()
        self.port = port
        self.controller_port = controller_port
        self.partitions = partitions
        self.node_id = node_id
        self._proc: subprocess.Popen | None = None

    # paths
    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def log_path(self) -> Path:
        return self.logs_dir / "server.log"

    @property
    def stdout_path(self) -> Path:
        return self.logs_dir / "stdout.log"

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"

    @property
    def state_file(self) -> Path:
        return self.home / "state.json"

    # state
    def _read_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def _is_ours(self, pid: int) -> bool:
        """The PID runs kafka.Kafka with this home's server.properties (never a recycled PID)."""
        args = _cmdline(pid)
        if args is None:
            return False
        return MAIN_CLASS in args and str(self.home / "server.properties") in args and _alive(pid)

    def _read_state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _clear(self) -> None:
        for p in (self.pid_file, self.state_file):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def status(self) -> dict | None:
        pid = self._read_pid()
        if pid is None or not self._is_ours(pid):
            return None
        state = self._read_state()
        state.setdefault("bootstrap", self.bootstrap)
        state["pid"] = pid
        state.setdefault("data_dir", str(self.data_dir))
        return state

    # start
    def start(self, timeout: float = 60.0, die_with_parent: bool = False, log=None) -> float:
        """Launch the broker, wait until it serves metadata; return seconds to ready.

        ``die_with_parent`` (Linux) ends the broker when the starting process dies, so a
        test run that is killed leaves no JVM behind; the CLI leaves it False."""
        running = self.status()
        if running:
            raise CallstreamError(
                f"a broker is already running from {self.home} at {running['bootstrap']} "
                f"(pid {running['pid']}); stop it with `callstream broker stop --home {self.home}`")
        self._clear()  # stale PID/state of a broker that is gone
        if self.controller_port is None:
            self.controller_port = free_port()
            while self.controller_port == self.port:
                self.controller_port = free_port()
        for what, port in (("broker", self.port), ("controller", self.controller_port)):
            if port_in_use(port):
                raise CallstreamError(
                    f"port {HOST}:{port} ({what}) is already in use by another program: stop it "
                    f"or choose another port with --port / --bootstrap")
        java = find_java()
        libs = ensure_jars(log=log)
        classpath = str(libs / "*")

        self.home.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        props = self.home / "server.properties"
        props.write_text(render_server_properties(self.port, self.controller_port, self.data_dir,
                                                  self.partitions, self.node_id))
        log4j = self.home / "log4j.properties"
        shutil.copyfile(_TEMPLATES / "log4j.properties", log4j)
        jvm_logging = [f"-Dlog4j.configuration=file:{log4j}", f"-Dkafka.logs.dir={self.logs_dir}"]
        self._format(java, classpath, props, jvm_logging)

        cmd = [java, *HEAP, "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
               "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent",
               "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true", *jvm_logging,
               "-cp", classpath, MAIN_CLASS, str(props)]
        t0 = time.monotonic()
        with open(self.stdout_path, "ab") as out:
            self._proc = subprocess.Popen(
                cmd, cwd=self.home, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=partial(_die_with_parent, signal.SIGTERM) if die_with_parent else None)
        pid = self._proc.pid
        self.pid_file.write_text(f"{pid}\n")
        state = {"pid": pid, "bootstrap": self.bootstrap, "controller_port": self.controller_port,
                 "data_dir": str(self.data_dir), "log": str(self.log_path),
                 "kafka_version": kafka_version(libs), "partitions": self.partitions,
                 "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.state_file.write_text(json.dumps(state, indent=2) + "\n")
        try:
            self._wait_ready(t0, timeout)
        except BaseException:
            self._terminate(pid, grace=10)
            self._clear()
            raise
        ready = time.monotonic() - t0
        state["ready_s"] = round(ready, 2)
        self.state_file.write_text(json.dumps(state, indent=2) + "\n")
        return ready

    def _format(self, java: str, classpath: str, props: Path, jvm_logging: list[str]) -> None:
        if (self.data_dir / "meta.properties").is_file():
            return
        id_file = self.home / "cluster.id"
        if not id_file.is_file():
            id_file.write_text(new_cluster_id() + "\n")
        cluster_id = id_file.read_text().strip()
        cmd = [java, "-Xmx256m", "-XX:TieredStopAtLevel=1", *jvm_logging, "-cp", classpath,
               "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props),
               "--ignore-formatted"]
        proc = subprocess.run(cmd, cwd=self.home, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=120)
        if proc.returncode != 0:
            raise CallstreamError(
                f"formatting the Kafka data dir {self.data_dir} failed: "
                f"{_last_meaningful(proc.stdout + proc.stderr) or f'exit {proc.returncode}'}; "
                f"remove {self.home} to start afresh")

    def _wait_ready(self, t0: float, timeout: float) -> None:
        deadline = t0 + timeout
        assert self._proc is not None
        last_error = "the port never accepted a connection"
        while True:
            code = self._proc.poll()
            if code is not None:
                raise CallstreamError(
                    f"the broker exited during startup (exit {code}): {self._last_log_line()} "
                    f"(log: {self.log_path}, output: {self.stdout_path})")
            if _accepts(self.port):
                problem = self._metadata_problem(max(1.0, min(10.0, deadline - time.monotonic())))
                if problem is None:
                    return
                last_error = problem
            if time.monotonic() >= deadline:
                raise CallstreamError(
                    f"the broker at {self.bootstrap} was not ready after {timeout:.0f} s "
                    f"({last_error}); see {self.log_path}; it was stopped")
            time.sleep(0.2)

    def _metadata_problem(self, budget: float) -> str | None:
        """None when a real Kafka metadata request succeeds, else why not."""
        from kafka import KafkaAdminClient  # lazy: the CLI's other commands skip the import

        ms = int(budget * 1000)
        try:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="callstream-ready",
                                     request_timeout_ms=ms, bootstrap_timeout_ms=ms,
                                     reconnect_backoff_ms=100, reconnect_backoff_max_ms=500)
        except Exception as exc:  # NoBrokersAvailable, timeouts while the broker comes up
            return f"metadata request failed: {type(exc).__name__}: {exc}"
        try:
            admin.list_topics()
            return None
        except Exception as exc:
            return f"metadata request failed: {type(exc).__name__}: {exc}"
        finally:
            with contextlib.suppress(Exception):
                admin.close()

    def _last_log_line(self) -> str:
        text = ""
        for p in (self.stdout_path, self.log_path):
            with contextlib.suppress(OSError):
                with open(p, "rb") as f:
                    f.seek(0, os.SEEK_END)
                    f.seek(max(0, f.tell() - 64 * 1024))
                    text += f.read().decode(errors="replace") + "\n"
        return _last_meaningful(text) or "no log output"

    # stop
    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the broker of this home (SIGKILL after ``timeout``); return its PID or None."""
        pid = self._read_pid()
        if pid is None:
            self._clear()
            return None
        if not self._is_ours(pid):
            self._clear()  # stale: that PID is gone or now belongs to something else
            if self._proc is not None and self._proc.pid == pid:
                self._proc.poll()
            return None
        self._terminate(pid, grace=timeout)
        self._clear()
        return pid

    def _terminate(self, pid: int, grace: float) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not self._wait_exit(pid, grace):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_exit(pid, 10)

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.pid == pid:
                if self._proc.poll() is not None:  # our child: reap it
                    return True
            elif not _alive(pid):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)


# --------------------------------------------------------------------------- CLI


def _port_from_args(args) -> int:
    port = getattr(args, "port", None)
    bootstrap = getattr(args, "bootstrap", None)
    if bootstrap:
        host, sep, p = bootstrap.rpartition(":")
        if not sep or not p.isdigit():
            raise CallstreamError(f"--bootstrap must look like 127.0.0.1:9092, not {bootstrap!r}")
        if host not in ("127.0.0.1", "localhost"):
            raise CallstreamError(
                f"the local broker only listens on 127.0.0.1, not {host!r}: use --bootstrap 127.0.0.1:{p}")
        if port is not None and port != int(p):
            raise CallstreamError(f"--port {port} and --bootstrap {bootstrap} disagree: give one")
        port = int(p)
    port = DEFAULT_PORT if port is None else port
    if not 0 < port < 65536:
        raise CallstreamError(f"--port must be between 1 and 65535, not {port}")
    return port


def cli(args) -> int:
    """``callstream broker start|stop|status|fetch``."""
    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.action == "fetch":
        libs = ensure_jars(log=say)
        print(f"Apache Kafka {kafka_version(libs)}: {len(list(libs.glob('*.jar')))} jars in {libs}")
        return 0

    home = Path(args.home).expanduser().resolve() if args.home else default_home()
    if args.action == "status":
        state = LocalBroker(home).status()
        if state is None:
            print(f"down (no broker running from {home})")
            return 3
        print(f"up: {state['bootstrap']} (pid {state['pid']}, data {state['data_dir']})")
        return 0
    if args.action == "stop":
        pid = LocalBroker(home).stop()
        if pid is None:
            print(f"no broker running from {home}; nothing to stop")
        else:
            print(f"stopped broker (pid {pid})")
        return 0
    if args.action == "start":
        broker = LocalBroker(home, port=_port_from_args(args), partitions=args.partitions)
        seconds = broker.start(log=say)
        print(f"broker up at {broker.bootstrap} in {seconds:.1f} s "
              f"(Kafka {broker._read_state().get('kafka_version', '?')}, pid {broker._read_pid()}, "
              f"home {broker.home})")
        return 0
    raise CallstreamError(f"unknown broker action {args.action!r}")
