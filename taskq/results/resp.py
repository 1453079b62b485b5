"""A small Redis client: RESP2 over pooled sockets, replies parsed by hiredis.

The result backend, the rate limiter and the LLM stores need plain commands, pipelines, MULTI/EXEC,
Lua scripts and pub/sub, nothing more. redis-py 8 brings its asyncio client, cluster and sentinel
support, OpenTelemetry hooks and ``importlib.metadata`` along: importing it took a worker about 65 ms
of CPU, a third of its start-up on a small machine.

Every error is a :class:`~taskq.errors.BackendError`: :class:`ReplyError` when Redis answered with an
error (sending the command again gets the same answer), :class:`ConnectionLost` when it could not be
reached or did not answer within the read timeout.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from hashlib import sha1
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

from taskq.config import redact_url
from taskq.errors import BackendError, BackendRefused, ConfigError

Arg = bytes | str | int | float
Command = Sequence[Arg]

#: s idle after which a pooled connection is checked with a PING before it carries a command
HEALTH_CHECK_IDLE = 30.0
#: query parameters a rediss:// URL may carry
TLS_OPTIONS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")
NO_REPLY: Any = object()  # Connection.read(timeout): nothing came in time
CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


class ReplyError(BackendRefused):
    """Redis answered the command with an error (``ERR``, ``NOSCRIPT``, ``WRONGTYPE`` ...)."""


class ConnectionLost(BackendError):
    """Redis could not be reached, closed the connection, or did not answer within the read timeout."""

    answered = False  # whether some of the commands sent had their reply before it was lost


class Address:
    """Where and how to connect, read from a ``redis://``, ``rediss://`` or ``unix://`` URL."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password is not None else None
        self.tls: ssl.SSLContext | None = None
        self.path: str | None = None
        if parts.scheme == "unix":
            self.path, self.host, self.port = parts.path, "", 0
            db = query.pop("db", "0")
        elif parts.scheme in ("redis", "rediss"):
            try:
                self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 6379
            except ValueError as exc:
                raise ConfigError(f"bad Redis URL {redact_url(url)!r}: {exc}") from exc
            db = parts.path.strip("/") or query.pop("db", "0")
            if parts.scheme == "rediss":
                self.tls = _tls_context(query)
        else:
            raise ConfigError(f"bad Redis URL {redact_url(url)!r}: expected redis://host:port/db")
        unknown = set(query) - set(TLS_OPTIONS if self.tls else ())
        if unknown:
            raise ConfigError(f"Redis URL {redact_url(url)!r}: unknown option(s) {', '.join(sorted(unknown))}")
        if not db.isdigit():
            raise ConfigError(f"bad Redis URL {redact_url(url)!r}: the database must be a number, not {db!r}")
        self.db = int(db)


def _tls_context(query: dict[str, str]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=query.pop("ssl_ca_certs", None))
    reqs = query.pop("ssl_cert_reqs", "required").lower()
    if reqs not in CERT_REQS:
        raise ConfigError(f"ssl_cert_reqs={reqs!r}: use none, optional or required")
    context.check_hostname = reqs != "none" and query.pop("ssl_check_hostname", "true").lower() != "false"
    context.verify_mode = CERT_REQS[reqs]
    if "ssl_certfile" in query:
        context.load_cert_chain(query.pop("ssl_certfile"), query.pop("ssl_keyfile", None))
    return context


def pack(commands: Sequence[Command]) -> bytes:
    """The commands in RESP: ``*<n>`` then ``$<len>`` and the bytes of each argument."""
    out = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for arg in command:
            if isinstance(arg, bytes):
                data = arg
            elif isinstance(arg, str):
                data = arg.encode()
            elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
                data = repr(arg).encode()
            else:
                raise TypeError(f"a Redis argument must be bytes, str, int or float, not {type(arg).__name__}")
            out.append(b"$%d\r\n" % len(data))
            out.append(data)
            out.append(b"\r\n")
    return b"".join(out)


def _open_socket(address: Address, timeout: float) -> socket.socket:
    """A connected socket (TLS handshake done), closed again when connecting fails."""
    if address.path is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        sock = socket.create_connection((address.host, address.port), timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        if address.path is not None:
            sock.settimeout(timeout)
            sock.connect(address.path)
        return address.tls.wrap_socket(sock, server_hostname=address.host) if address.tls is not None else sock
    except BaseException:
        sock.close()
        raise


class Connection:
    """One socket to Redis, authenticated and on its database."""

    def __init__(self, address: Address, connect_timeout: float, read_timeout: float) -> None:
        self.address = address
        self.read_timeout = read_timeout
        self.reader = hiredis.Reader(replyError=ReplyError)
        self.used = time.monotonic()
        self.pid = os.getpid()
        try:
            sock = _open_socket(address, connect_timeout)
        except OSError as exc:
            where = address.path or f"{address.host}:{address.port}"
            raise ConnectionLost(f"cannot connect to Redis at {where}: {exc}") from exc
        sock.settimeout(read_timeout)
        self.sock = sock
        hello: list[Command] = []
        if address.password is not None:
            hello.append(("AUTH", address.username, address.password) if address.username else
                         ("AUTH", address.password))
        if address.db:
            hello.append(("SELECT", address.db))
        if hello:
            try:
                self.execute(hello)
            except BaseException:
                self.close()
                raise

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self.close()
            raise ConnectionLost(f"Redis connection lost while sending: {exc}") from exc

    def read(self, timeout: float | None = None) -> Any:
        """The next reply (an error reply is returned as a :class:`ReplyError`, not raised); with ``timeout``,
        :data:`NO_REPLY` when none came within it (a reply half read stays buffered for the next read)."""
        reply = self.reader.gets()
        if reply is not False:
            return reply
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            while reply is False:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionResetError("closed by Redis")
                self.reader.feed(data)
                reply = self.reader.gets()
        except TimeoutError as exc:
            if timeout is not None:
                return NO_REPLY
            self.close()  # its reply may still come: the connection is out of step
            raise ConnectionLost(f"Redis did not answer within {self.read_timeout:g} s") from exc
        except (OSError, hiredis.ProtocolError) as exc:
            self.close()
            raise ConnectionLost(f"Redis connection lost: {exc}") from exc
        finally:
            if timeout is not None and self.sock.fileno() != -1:
                self.sock.settimeout(self.read_timeout)
        return reply

    def execute(self, commands: Sequence[Command]) -> list[Any]:
        """Send the commands at once and read their replies, raising the first error reply."""
        self.send(pack(commands))
        replies: list[Any] = []
        try:
            for _ in commands:
                replies.append(self.read())
        except ConnectionLost as exc:
            exc.answered = bool(replies)
            raise
        self.used = time.monotonic()
        for reply in replies:
            if isinstance(reply, ReplyError):
                raise reply
        return replies

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class Redis:
    """A pool of connections to one Redis; safe to share between threads (not across a fork: a child
    opens its own connections)."""

    def __init__(self, url: str, connect_timeout: float = 5.0, read_timeout: float = 30.0) -> None:
        self.address = Address(url)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _connect(self) -> Connection:
        return Connection(self.address, self.connect_timeout, self.read_timeout)

    def _take(self) -> tuple[Connection, bool]:
        """An idle connection (True: it may have gone stale meanwhile) or a new one (False)."""
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's sockets are not ours to use
                self._pid, self._idle = os.getpid(), []
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            return self._connect(), False
        if time.monotonic() - conn.used > HEALTH_CHECK_IDLE:
            try:
                conn.execute([("PING",)])
            except ConnectionLost:
                self.discard_idle()
                return self._connect(), False
        return conn, True

    def _give_back(self, conn: Connection) -> None:
        with self._lock:
            if conn.pid == self._pid:
                self._idle.append(conn)

    def discard_idle(self) -> None:
        """Close the idle connections (after one was found broken, the others likely are too)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def open(self, count: int) -> None:
        """Have ``count`` connections ready, opened now rather than by the commands that need them."""
        with self._lock:
            missing = count - len(self._idle)
        opened = []
        try:
            for _ in range(missing):
                opened.append(self._connect())
        finally:
            for conn in opened:
                self._give_back(conn)

    def execute(self, commands: Sequence[Command]) -> list[Any]:
        """The replies of ``commands``, sent at once on one connection.

        A pooled connection that Redis closed while it sat idle (a restart, an idle ``timeout``) is
        replaced once, when it failed before any reply came back: Redis never ran what it was sent.
        """
        conn, reused = self._take()
        try:
            replies = conn.execute(commands)
        except ConnectionLost as exc:
            if not reused or exc.answered or not isinstance(exc.__cause__, (ConnectionResetError, BrokenPipeError)):
                raise
            self.discard_idle()
            conn = self._connect()
            replies = conn.execute(commands)
        except ReplyError:
            self._give_back(conn)  # the connection is fine: Redis answered
            raise
        self._give_back(conn)
        return replies

    def call(self, *args: Arg) -> Any:
        """One command's reply."""
        return self.execute([args])[0]

    def pipeline(self, commands: Sequence[Command], transaction: bool = False) -> list[Any]:
        """The replies of ``commands`` sent together; with ``transaction``, inside MULTI/EXEC."""
        if not transaction:
            return self.execute(commands)
        replies = self.execute([("MULTI",), *commands, ("EXEC",)])[-1]
        if replies is None:
            raise ReplyError("the transaction was aborted")
        for reply in replies:
            if isinstance(reply, ReplyError):
                raise reply
        return list(replies)

    def script(self, source: str) -> Script:
        return Script(self, source)

    def pubsub(self) -> PubSub:
        """A subscriber on a connection of its own (replaced, and its channels subscribed again, after a loss)."""
        return PubSub(self)

    def close(self) -> None:
        self.discard_idle()


class Script:
    """A Lua script run with EVALSHA, sent whole (EVAL) when Redis does not have it (a restart, a flush)."""

    def __init__(self, client: Redis, source: str) -> None:
        self.client = client
        self.source = source
        self.sha = sha1(source.encode()).hexdigest()

    def __call__(self, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()) -> Any:
        try:
            return self.client.call("EVALSHA", self.sha, len(keys), *keys, *args)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return self.client.call("EVAL", self.source, len(keys), *keys, *args)


class PubSub:
    """Subscriptions on one connection. Messages are ``(kind, channel, data)`` tuples: kind ``message``,
    ``subscribe`` or ``unsubscribe`` (``data`` is then the count of channels left). A lost connection
    raises once; the next call connects again and subscribes the channels again."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self.channels: set[bytes] = set()
        self._conn: Connection | None = None
        self._lock = threading.Lock()  # one reconnect at a time: the reading thread and a subscriber

    def _connection(self) -> Connection:
        """The connection; call with the lock held."""
        if self._conn is None or self._conn.sock.fileno() == -1:
            conn = self.client._connect()
            if self.channels:
                conn.send(pack([("SUBSCRIBE", *self.channels)]))
            self._conn = conn
        return self._conn

    def subscribe(self, *channels: bytes | str) -> None:
        names = [c.encode() if isinstance(c, str) else c for c in channels]
        with self._lock:
            self._connection().send(pack([("SUBSCRIBE", *names)]))
            self.channels.update(names)

    def unsubscribe(self, *channels: bytes | str) -> None:
        names = [c.encode() if isinstance(c, str) else c for c in channels]
        with self._lock:
            self.channels.difference_update(names)
            if self._conn is not None and self._conn.sock.fileno() != -1:
                self._conn.send(pack([("UNSUBSCRIBE", *names)]))

    def get_message(self, timeout: float) -> tuple[str, bytes, Any] | None:
        """The next message, or None when none came within ``timeout`` s."""
        with self._lock:
            conn = self._connection()
        reply = conn.read(timeout)
        if reply is NO_REPLY:
            return None
        if isinstance(reply, ReplyError):
            raise reply
        return reply[0].decode(), reply[1], reply[2]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
