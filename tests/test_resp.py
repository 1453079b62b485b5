"""taskq's Redis client (taskq/results/resp.py) against a real redis-server: URLs, replies, errors,
pipelines and transactions, scripts, a Redis that restarts, freezes or wants a password, pub/sub."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from services import RedisServer, free_ports  # scripts/services.py, on the path through tests/conftest.py

from taskq.errors import BackendError, BackendRefused, ConfigError
from taskq.results.resp import Address, ConnectionLost, Redis, ReplyError, pack


def test_urls_are_read_as_redis_py_reads_them_and_bad_ones_are_refused() -> None:
    a = Address("redis://:s%40cret@db.internal:6380/3")
    assert (a.host, a.port, a.db, a.username, a.password, a.tls) == ("db.internal", 6380, 3, None, "s@cret", None)
    a = Address("redis://app:pw@localhost")
    assert (a.port, a.db, a.username, a.password) == (6379, 0, "app", "pw")
    a = Address("unix:///run/redis.sock?db=2")
    assert (a.path, a.db) == ("/run/redis.sock", 2)
    a = Address("rediss://cache:6390/0?ssl_cert_reqs=none")
    assert a.tls is not None and not a.tls.check_hostname
    for bad in ("http://localhost:6379", "redis://localhost:6379/zero", "redis://localhost:99999/0",
                "redis://localhost:6379/0?socket_timeout=5"):
        with pytest.raises(ConfigError):
            Address(bad)
    with pytest.raises(ConfigError) as info:
        Address("redis://:hunter2@localhost:6379/x")
    assert "hunter2" not in str(info.value)  # the password never lands in an error message


def test_arguments_are_packed_as_resp_bulk_strings() -> None:
    assert pack([("SET", "k", b"\x00\r\n", 5, 0.25)]) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\n\x00\r\n\r\n$1\r\n5\r\n$4\r\n0.25\r\n")
    with pytest.raises(TypeError):
        pack([("SET", "k", True)])
    with pytest.raises(TypeError):
        pack([("SET", "k", None)])  # type: ignore[list-item]


def test_replies_errors_pipelines_and_transactions(redis_url: str) -> None:
    client = Redis(redis_url)
    key = f"resp-test:{uuid.uuid4().hex}"
    try:
        big = os.urandom(3 * 1024 * 1024)  # several reads of the socket
        assert client.call("SET", key, big, "PX", 60_000) == b"OK"
        assert client.call("GET", key) == big
        assert client.call("GET", key + ":missing") is None
        assert client.call("EXISTS", key, key + ":missing") == 1
        with pytest.raises(ReplyError, match="WRONGTYPE") as info:
            client.call("LPUSH", key, "x")
        assert isinstance(info.value, BackendRefused)
        assert client.call("PING") == b"PONG"  # the connection survived the error reply
        with pytest.raises(ReplyError, match="unknown command"):
            client.pipeline([("SET", key, "1"), ("NOSUCHCOMMAND",)])
        assert client.call("GET", key) == b"1"  # the commands before the bad one ran
        assert client.pipeline([("INCR", key), ("INCR", key), ("GET", key)], transaction=True) == [2, 3, b"3"]
        with pytest.raises(ReplyError):
            client.pipeline([("INCR", key), ("LPUSH", key, "x")], transaction=True)
        assert client.call("GET", key) == b"4"  # MULTI/EXEC runs the rest; the error is reported
    finally:
        client.call("DEL", key)
        client.close()


def test_a_script_is_sent_whole_again_after_redis_forgot_it(redis_url: str) -> None:
    client = Redis(redis_url)
    script = client.script("return {KEYS[1], ARGV[1], tonumber(ARGV[2]) * 2}")
    try:
        assert script(["k"], ["v", 21]) == [b"k", b"v", 42]
        client.call("SCRIPT", "FLUSH")
        assert script(["k"], ["w", 1]) == [b"k", b"w", 2]
        with pytest.raises(ReplyError):
            client.script("return redis.call('NOSUCHCOMMAND')")()
    finally:
        client.close()


def test_a_password_and_a_database_are_used_on_every_connection(own_redis: RedisServer) -> None:
    admin = Redis(own_redis.url)
    admin.call("CONFIG", "SET", "requirepass", "p@ss word")
    try:
        with pytest.raises(ReplyError, match="NOAUTH|Authentication"):
            Redis(own_redis.url).call("PING")
        client = Redis(f"redis://:p%40ss%20word@127.0.0.1:{own_redis.port}/5")
        client.open(3)
        assert client.pipeline([("SET", "k", "in five"), ("CLIENT", "INFO")])[1].count(b" db=5 ") == 1
        wrong = Redis(f"redis://:nope@127.0.0.1:{own_redis.port}/0")
        with pytest.raises(ReplyError, match="WRONGPASS|invalid"):
            wrong.call("PING")
    finally:
        Redis(f"redis://:p%40ss%20word@127.0.0.1:{own_redis.port}/0").call("CONFIG", "SET", "requirepass", "")
        admin.close()


def test_a_restart_while_connections_sit_idle_costs_no_error(own_redis: RedisServer) -> None:
    """Redis restarted (or closed idle clients): the pooled connections are dead. The next command goes
    through on a new connection, as nothing it sent had been run."""
    client = Redis(own_redis.url)
    client.open(4)
    client.call("SET", "before", "1")
    port = own_redis.port
    own_redis.stop()
    own_redis.start(port=port)
    assert client.call("SET", "after", "2") == b"OK"
    assert client.call("GET", "before") is None  # no persistence: it is a new server
    client.close()


def test_an_unreachable_or_frozen_redis_fails_within_the_timeouts(own_redis: RedisServer) -> None:
    client = Redis(own_redis.url, connect_timeout=1, read_timeout=0.5)
    client.call("PING")
    pid = own_redis.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionLost, match="did not answer within 0.5 s"):
            client.call("PING")
        assert time.monotonic() - started < 3
    finally:
        os.kill(pid, signal.SIGCONT)
    assert client.call("PING") == b"PONG"  # the timed-out connection was dropped, not reused out of step
    own_redis.stop()
    with pytest.raises(BackendError, match="cannot connect"):
        Redis(own_redis.url, connect_timeout=1).call("PING")


def test_pubsub_delivers_and_subscribes_again_after_a_restart(own_redis: RedisServer) -> None:
    client = Redis(own_redis.url)
    sub = client.pubsub()
    sub.subscribe("news")
    assert sub.get_message(2) == ("subscribe", b"news", 1)
    assert sub.get_message(0.05) is None  # nothing yet: no error, the subscription stays
    client.call("PUBLISH", "news", "one")
    assert sub.get_message(2) == ("message", b"news", b"one")
    port = own_redis.port
    own_redis.stop()
    with pytest.raises(ConnectionLost):
        sub.get_message(2)
    own_redis.start(port=port)
    assert sub.get_message(2) == ("subscribe", b"news", 1)  # connected again, subscribed again
    client.call("PUBLISH", "news", "two")
    assert sub.get_message(2) == ("message", b"news", b"two")
    sub.unsubscribe("news")
    assert sub.get_message(2) == ("unsubscribe", b"news", 0)
    sub.close()
    client.close()


def test_a_forked_child_opens_its_own_connections(redis_url: str) -> None:
    client = Redis(redis_url)
    client.open(2)
    mine = client.call("CLIENT", "ID")
    pid = os.fork()
    if pid == 0:  # the child: a connection of its own, never one of the parent's sockets
        code = 0 if client.call("CLIENT", "ID") != mine else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert client.call("CLIENT", "ID") == mine  # the parent's connection still works, in step
    client.close()


def test_the_worker_does_not_load_redis_py() -> None:
    """What the client is for: a worker's start-up imports neither redis-py nor what it drags along."""
    code = ("import sys, taskq.cli, taskq.worker, taskq.results.redis, taskq.brokers.kafka, taskq.ratelimit; "
            "print(sorted(m for m in ('redis', 'opentelemetry', 'importlib.metadata') if m in sys.modules))")
    out = subprocess.run([os.sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_threads_sharing_a_client_each_get_their_own_replies(redis_url: str) -> None:
    """One client in many threads (a worker's finisher, pool threads, the events thread): every reply reaches
    the caller whose command it answers, pipelines included, with connections reused from the pool."""
    client = Redis(redis_url)
    prefix = f"resp-threads:{uuid.uuid4().hex}:"
    wrong: list[str] = []

    def work(n: int) -> None:
        for i in range(300):
            key = f"{prefix}{n}:{i}"
            value = os.urandom(1 + (n * 7919 + i) % 3000)
            replies = client.pipeline([("SET", key, value, "PX", 60_000), ("GET", key), ("STRLEN", key)])
            if replies != [b"OK", value, len(value)] or client.call("GET", key) != value:
                wrong.append(key)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert not wrong, wrong[:5]
        assert len(client._idle) <= 16  # connections came back to the pool, at most one per thread
    finally:
        keys = [f"{prefix}{n}:{i}" for n in range(16) for i in range(300)]
        client.pipeline([("DEL", *keys[i:i + 1000]) for i in range(0, len(keys), 1000)])
        client.close()


def test_rediss_verifies_the_server_certificate_unless_told_not_to(tmp_path: Path) -> None:
    """``rediss://`` against a redis-server serving TLS with a self-signed certificate: trusted through
    ``ssl_ca_certs``, refused without it, taken unchecked with ``ssl_cert_reqs=none``."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    port = free_ports(1)[0]
    tls = ["--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
           "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
    server = subprocess.Popen(["redis-server", "--port", "0", *tls, "--save", "", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        url = f"rediss://127.0.0.1:{port}/0"
        trusted = Redis(f"{url}?ssl_ca_certs={cert}", connect_timeout=2)
        deadline = time.monotonic() + 10
        while True:
            try:
                assert trusted.call("PING") == b"PONG"
                break
            except ConnectionLost:
                assert time.monotonic() < deadline, "redis-server with TLS did not start"
                time.sleep(0.05)
        with pytest.raises(ConnectionLost, match="CERTIFICATE_VERIFY_FAILED"):
            Redis(url, connect_timeout=2).call("PING")
        assert Redis(f"{url}?ssl_cert_reqs=none", connect_timeout=2).call("PING") == b"PONG"
    finally:
        server.terminate()
        server.wait(10)
