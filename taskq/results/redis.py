"""Redis result backend: ``SET key value PX`` plus ``PUBLISH`` per result, one script call per batch.

Callers wait on a pub/sub channel per task (subscribe, then read, then wait), so ``get()`` never polls;
the subscriptions of all waiting ``get()`` calls share one connection per process
(:mod:`taskq.results.redis_listener`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import redis

from taskq.config import redact_url
from taskq.errors import BackendError, BackendRefused, ConfigError
from taskq.results.redis_listener import RECONNECT_PAUSE, ResultListener, raise_unless_unreachable_until, wait_on
from taskq.results.base import RESTART_MARK, ResultBackend, ResultRecord, decode_chunk, last_attempt
from taskq.serialization import JSON

log = logging.getLogger("taskq")

RESULT_PREFIX = "taskq-result:"
CHUNK_PREFIX = "taskq-chunks:"
CLAIM_PREFIX = "taskq-claim:"
#: compare-and-act scripts: extend or delete a claim only while the caller's value holds it
EXTEND_SCRIPT = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
RELEASE_SCRIPT = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
#: a batch of results: KEYS are the result keys, ARGV the expiry (ms) and per key its value and what to
#: publish on the key's channel ("" for nothing). One command and one reply for the whole batch: a
#: pipeline costs the client a packed command and a parsed reply per SET and per PUBLISH.
STORE_SCRIPT = """
local px = ARGV[1]
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[2 * i], 'PX', px)
  local note = ARGV[2 * i + 1]
  if note ~= '' then redis.call('PUBLISH', key, note) end
end
return #KEYS
"""

# store_unless_final: as STORE_SCRIPT, for keys holding no final result (a REVOKED one may be replaced)
STORE_UNLESS_FINAL_SCRIPT = """
local px = ARGV[1]
local written = {}
for i, key in ipairs(KEYS) do
  local old = redis.call('GET', key)
  local ok, stored = pcall(cjson.decode, old or 'null')
  local status = ok and type(stored) == 'table' and stored['status'] or nil
  if status ~= 'SUCCESS' and status ~= 'FAILURE' then
    redis.call('SET', key, ARGV[2 * i], 'PX', px)
    local note = ARGV[2 * i + 1]
    if note ~= '' then redis.call('PUBLISH', key, note) end
    table.insert(written, i)
  end
end
return written
"""

CHORD_PREFIX = "taskq-chord:"  # chord state (JSON)
PARTS_PREFIX = "taskq-chord-parts:"  # hash: header index -> result (JSON)
CHORD_STATE_PREFIX = "taskq-chord-state:"  # firing:<id> | fired | failing:<id> | failed
CHILDREN_PREFIX = "taskq-children:"  # list of child ids, in send order


#: the client's pool size: as many connections as Redis accepts by default (``maxclients``); redis-py 8 caps
#: a pool at 100 unless told, and the 101st concurrent get(), stream() or store fails with "Too many connections"
MAX_CONNECTIONS = 10_000
#: s a read or subscription made while a caller waits (get(), stream()) waits for Redis: a stopped or overloaded
#: Redis must not hold a get() past its timeout for the 30 s the worker's writes allow; a read is tried again
WAIT_READ_TIMEOUT = 1.0
READ_TIMEOUT = 30.0  # s a worker's or client's command waits for Redis's answer (a store of a large result)
PUBLISH_RECORD_MAX = 4096  # bytes: a final record up to this size is published whole, larger ones by status


def published_record(payload: bytes, task_id: str) -> ResultRecord | None:
    """The record of ``task_id`` a final result's message carries, or None for a status word, a chunk notice
    or what another client published on the channel (then the waiter reads the key)."""
    if not payload.startswith(b"{"):
        return None
    try:
        record = ResultRecord.decode(payload)
    except (ValueError, KeyError, TypeError):
        return None
    return record if record.id == task_id else None


class RedisBackend(ResultBackend):
    """Results in Redis at ``redis://host:port/db``."""

    def __init__(self, url: str, expires: float = 86400, connect_timeout: float = 5.0,
                 read_timeout: float = READ_TIMEOUT) -> None:
        """``read_timeout``: seconds a command waits for its answer (a frozen server raises after it)."""
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"bad Redis URL {redact_url(url)!r}: expected redis://host:port/db")
        self.url = url
        self.expires = expires
        self.client = redis.Redis.from_url(url, socket_connect_timeout=connect_timeout,
                                           socket_timeout=read_timeout,
                                           health_check_interval=30, max_connections=MAX_CONNECTIONS)
        self._waits = redis.Redis.from_url(url, socket_connect_timeout=min(connect_timeout, WAIT_READ_TIMEOUT),
                                           socket_timeout=WAIT_READ_TIMEOUT, health_check_interval=30,
                                           max_connections=MAX_CONNECTIONS)
        self._listener: ResultListener | None = None
        self._listener_lock = threading.Lock()
        self._store_script = self.client.register_script(STORE_SCRIPT)  # EVALSHA, loaded again if flushed
        self._store_unless_final_script = self.client.register_script(STORE_UNLESS_FINAL_SCRIPT)

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except redis.ResponseError as exc:  # the server answered no: the same command fails again
            raise BackendRefused(f"Redis at {redact_url(self.url)} refused to {what}: {exc}") from exc
        except redis.RedisError as exc:
            raise BackendError(f"Redis at {redact_url(self.url)} failed to {what}: {exc}") from exc

    @property
    def _px(self) -> int:
        """The expiry in milliseconds (``EX`` would round a sub-second expiry down to the refused 0)."""
        return max(1, round(self.expires * 1000))

    def store_many(self, records: list[ResultRecord]) -> None:
        if records:
            self._call("store results", self._store_script, *self._script_input(records))

    def store_unless_final(self, records: list[ResultRecord]) -> list[str]:
        if not records:
            return []
        written = self._call("store results", self._store_unless_final_script, *self._script_input(records))
        return [records[i - 1].id for i in written]

    def _script_input(self, records: list[ResultRecord]) -> tuple[list[str], list[Any]]:
        """Keys and arguments of the store scripts: the expiry, then each record and its note."""
        keys: list[str] = []
        args: list[Any] = [self._px]
        for rec in records:
            keys.append(RESULT_PREFIX + rec.id)
            value = rec.encode()
            # a small final record goes with the message: a waiting get() needs no second read
            note = (value if len(value) <= PUBLISH_RECORD_MAX else rec.status) if rec.ready else ""
            args += (value, note)
        return keys, args

    def open_connections(self, count: int) -> None:
        """A new connection takes five round trips (HELLO, PING, CLIENT ...): a worker opens the ones it
        needs while it joins its group, not while its first records wait on them."""
        pool = self.client.connection_pool
        opened = []
        try:
            for _ in range(count):
                opened.append(pool.get_connection())
        except redis.RedisError as exc:  # unreachable now: the first store reports it, and retries
            log.debug("Redis at %s: no connection opened ahead: %s", redact_url(self.url), exc)
        finally:
            for conn in opened:
                pool.release(conn)

    def any_stored(self, ids: list[str]) -> bool:
        """Whether any of ``ids`` has a record (one integer back instead of every value)."""
        return bool(ids) and bool(self._call("check results", self.client.exists, *[RESULT_PREFIX + i for i in ids]))

    def get_many(self, ids: Iterable[str]) -> list[ResultRecord | None]:
        wanted = list(ids)
        if not wanted:
            return []
        values = self._call("read results", self.client.mget, [RESULT_PREFIX + i for i in wanted])
        return [None if v is None else ResultRecord.decode(v, i) for i, v in zip(wanted, values)]

    def _read_waited(self, task_id: str) -> ResultRecord | None:
        """The record, read with the short socket timeout of a waiting caller."""
        value = self._call("read a result", self._waits.get, RESULT_PREFIX + task_id)
        return None if value is None else ResultRecord.decode(value, task_id)

    def listener(self) -> ResultListener:
        """This process's shared subscriber (started on first use, again after a fork or a close)."""
        with self._listener_lock:
            if self._listener is None or not self._listener.alive:
                self._listener = self._call("subscribe", ResultListener, self._waits)
            return self._listener

    def wait(self, task_id: str, timeout: float | None) -> ResultRecord | None:
        deadline = self._deadline(timeout)
        return self._call("wait for a result", wait_on, self.listener(), RESULT_PREFIX + task_id,
                          lambda: self._read_waited(task_id), deadline, 5.0,
                          lambda payload: published_record(payload, task_id))

    def append_chunk(self, task_id: str, chunk: Any) -> None:
        self._push_chunks([(task_id, JSON.dumps(chunk))], "append a chunk")

    def restart_chunks(self, task_id: str) -> None:
        self._push_chunks([(task_id, RESTART_MARK)], "mark a restart")

    def append_chunks(self, items: Sequence[tuple[str, Any]]) -> None:
        """One pipeline for all ``items``: RPUSH each, then one PEXPIRE and one PUBLISH per task."""
        dumps = JSON.dumps
        self._push_chunks([(task_id, RESTART_MARK if chunk is None else dumps(chunk)) for task_id, chunk in items],
                          "append chunks")

    def _push_chunks(self, encoded: Sequence[tuple[str, Any]], what: str) -> None:
        """RPUSH each encoded chunk, then one PEXPIRE and one PUBLISH per task, in one pipeline."""
        if not encoded:
            return
        px = self._px

        def write() -> None:
            pipe = self.client.pipeline(transaction=False)
            seen: dict[str, None] = {}
            for task_id, raw in encoded:
                pipe.rpush(CHUNK_PREFIX + task_id, raw)
                seen[task_id] = None
            for task_id in seen:
                pipe.pexpire(CHUNK_PREFIX + task_id, px)
                pipe.publish(RESULT_PREFIX + task_id, "chunk")
            pipe.execute()
        self._call(what, write)

    def stream(self, task_id: str, timeout: float | None) -> Iterator[Any]:
        key = CHUNK_PREFIX + task_id
        deadline = self._deadline(timeout)
        pubsub = self._waits.pubsub(ignore_subscribe_messages=True)
        seen = 0
        try:
            self._call("subscribe", pubsub.subscribe, RESULT_PREFIX + task_id)
            while True:
                try:
                    chunks = self._call("read chunks", self._waits.lrange, key, seen, -1)
                    seen += len(chunks)
                    for raw in (last_attempt(chunks) if seen == len(chunks) else chunks):
                        yield decode_chunk(raw)
                    record = self._read_waited(task_id)
                    if record is not None and record.ready:
                        tail = self._call("read chunks", self._waits.lrange, key, seen, -1)
                        yield from (decode_chunk(raw) for raw in (last_attempt(tail) if not seen else tail))
                        return
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    self._call("wait for chunks", pubsub.get_message, True, min(left, 5.0))
                except BackendError as exc:  # Redis restarting or stalled: the pubsub reconnects, subscribes again
                    raise_unless_unreachable_until(exc, deadline)
                    time.sleep(RECONNECT_PAUSE)
        finally:
            pubsub.close()

    def forget(self, task_ids: Iterable[str]) -> None:
        keys = [p + i for i in task_ids for p in (RESULT_PREFIX, CHUNK_PREFIX)]
        if keys:
            self._call("delete results", self.client.delete, *keys)

    def claim(self, name: str, value: str, ttl: float) -> str | None:
        def take() -> str | None:
            pipe = self.client.pipeline(transaction=True)  # SET NX then GET, atomically
            pipe.set(CLAIM_PREFIX + name, value, nx=True, px=max(1, int(ttl * 1000)))
            pipe.get(CLAIM_PREFIX + name)
            taken, holder = pipe.execute()
            return None if taken else (holder or b"").decode()
        holder: str | None = self._call("claim", take)
        return holder

    def extend(self, name: str, value: str, ttl: float) -> bool:
        return bool(self._call("extend a claim", self.client.eval, EXTEND_SCRIPT, 1, CLAIM_PREFIX + name, value,
                               max(1, int(ttl * 1000))))

    def release(self, name: str, value: str) -> None:
        self._call("release a claim", self.client.eval, RELEASE_SCRIPT, 1, CLAIM_PREFIX + name, value)

    # -- canvas bookkeeping: every key expires with the results ------------------------------------

    def save_chords(self, chords: list[dict[str, Any]]) -> None:
        def write() -> None:
            pipe = self.client.pipeline(transaction=False)
            for chord in chords:
                pipe.set(CHORD_PREFIX + chord["id"], JSON.dumps(chord), px=self._px)
            pipe.execute()
        self._call("save chords", write)

    def get_chord(self, chord_id: str) -> dict[str, Any] | None:
        raw = self._call("read a chord", self.client.get, CHORD_PREFIX + chord_id)
        return None if raw is None else JSON.loads(raw)

    def chord_report(self, chord_id: str, index: int, value: bytes) -> int:
        def write() -> int:
            key = PARTS_PREFIX + chord_id
            pipe = self.client.pipeline(transaction=True)  # MULTI/EXEC: the count includes this part
            pipe.hset(key, str(index), value)
            pipe.pexpire(key, self._px)
            pipe.pexpire(CHORD_PREFIX + chord_id, self._px)  # a chord outlasting the expiry stays known
            pipe.hlen(key)
            return int(pipe.execute()[-1])
        return self._call("report to a chord", write)

    def chord_parts(self, chord_id: str) -> dict[int, bytes]:
        raw = self._call("read a chord", self.client.hgetall, PARTS_PREFIX + chord_id)
        return {int(k): v for k, v in raw.items()}

    def chord_claim(self, chord_id: str, claim: str) -> str:
        def write() -> str:
            key = CHORD_STATE_PREFIX + chord_id
            pipe = self.client.pipeline(transaction=True)
            pipe.set(key, claim, nx=True, px=self._px)
            pipe.get(key)
            return pipe.execute()[-1].decode()
        return self._call("claim a chord", write)

    def chord_set_state(self, chord_id: str, state: str) -> None:
        self._call("mark a chord", lambda: self.client.set(CHORD_STATE_PREFIX + chord_id, state, px=self._px))

    def add_children(self, children: dict[str, list[str]]) -> None:
        def write() -> None:
            pipe = self.client.pipeline(transaction=False)
            for parent, ids in children.items():
                pipe.rpush(CHILDREN_PREFIX + parent, *ids)
                pipe.pexpire(CHILDREN_PREFIX + parent, self._px)
            pipe.execute()
        if children:
            self._call("save children", write)

    def children(self, parent_id: str) -> list[str]:
        raw = self._call("read children", self.client.lrange, CHILDREN_PREFIX + parent_id, 0, -1)
        return list(dict.fromkeys(v.decode() for v in raw))  # a re-sent follow-up adds an id twice

    def close(self) -> None:
        with self._listener_lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
        self._waits.close()
        self.client.close()
