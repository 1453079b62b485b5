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

from taskq.config import redact_url
from taskq.errors import BackendError, BackendRefused
from taskq.results.base import RESTART_MARK, ResultBackend, ResultRecord, decode_chunk, last_attempt
from taskq.results.redis_listener import RECONNECT_PAUSE, ResultListener, raise_unless_unreachable_until, wait_on
from taskq.results.resp import Redis
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
        self.url = url
        self.expires = expires
        self.client = Redis(url, connect_timeout, read_timeout)
        self._waits = Redis(url, min(connect_timeout, WAIT_READ_TIMEOUT), WAIT_READ_TIMEOUT)
        self._listener: ResultListener | None = None
        self._listener_lock = threading.Lock()
        self._store_script = self.client.script(STORE_SCRIPT)  # EVALSHA, sent whole again if flushed
        self._store_unless_final_script = self.client.script(STORE_UNLESS_FINAL_SCRIPT)

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except BackendRefused as exc:  # the server answered no: the same command fails again
            raise BackendRefused(f"Redis at {redact_url(self.url)} refused to {what}: {exc}") from exc
        except BackendError as exc:
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
        """A worker opens the connections it needs while it joins its group, not while its first records
        wait on them."""
        try:
            self.client.open(count)
        except BackendError as exc:  # unreachable now: the first store reports it, and retries
            log.debug("Redis at %s: no connection opened ahead: %s", redact_url(self.url), exc)

    def any_stored(self, ids: list[str]) -> bool:
        """Whether any of ``ids`` has a record (one integer back instead of every value)."""
        keys = [RESULT_PREFIX + i for i in ids]
        return bool(ids) and bool(self._call("check results", self.client.call, "EXISTS", *keys))

    def get_many(self, ids: Iterable[str]) -> list[ResultRecord | None]:
        wanted = list(ids)
        if not wanted:
            return []
        values = self._call("read results", self.client.call, "MGET", *[RESULT_PREFIX + i for i in wanted])
        return [None if v is None else ResultRecord.decode(v, i) for i, v in zip(wanted, values)]

    def _read_waited(self, task_id: str) -> ResultRecord | None:
        """The record, read with the short socket timeout of a waiting caller."""
        value = self._call("read a result", self._waits.call, "GET", RESULT_PREFIX + task_id)
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

        commands: list[tuple[Any, ...]] = [("RPUSH", CHUNK_PREFIX + task_id, raw) for task_id, raw in encoded]
        for task_id in dict.fromkeys(task_id for task_id, _ in encoded):
            commands += (("PEXPIRE", CHUNK_PREFIX + task_id, px), ("PUBLISH", RESULT_PREFIX + task_id, "chunk"))
        self._call(what, self.client.pipeline, commands)

    def stream(self, task_id: str, timeout: float | None) -> Iterator[Any]:
        key = CHUNK_PREFIX + task_id
        deadline = self._deadline(timeout)
        pubsub = self._waits.pubsub()
        seen = 0
        try:
            self._call("subscribe", pubsub.subscribe, RESULT_PREFIX + task_id)
            while True:
                try:
                    chunks = self._call("read chunks", self._waits.call, "LRANGE", key, seen, -1)
                    seen += len(chunks)
                    for raw in (last_attempt(chunks) if seen == len(chunks) else chunks):
                        yield decode_chunk(raw)
                    record = self._read_waited(task_id)
                    if record is not None and record.ready:
                        tail = self._call("read chunks", self._waits.call, "LRANGE", key, seen, -1)
                        yield from (decode_chunk(raw) for raw in (last_attempt(tail) if not seen else tail))
                        return
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    self._call("wait for chunks", pubsub.get_message, min(left, 5.0))
                except BackendError as exc:  # Redis restarting or stalled: the pubsub reconnects, subscribes again
                    raise_unless_unreachable_until(exc, deadline)
                    time.sleep(RECONNECT_PAUSE)
        finally:
            pubsub.close()

    def forget(self, task_ids: Iterable[str]) -> None:
        keys = [p + i for i in task_ids for p in (RESULT_PREFIX, CHUNK_PREFIX)]
        if keys:
            self._call("delete results", self.client.call, "DEL", *keys)

    def claim(self, name: str, value: str, ttl: float) -> str | None:
        key = CLAIM_PREFIX + name  # SET NX then GET, atomically
        taken, holder = self._call("claim", self.client.pipeline,
                                   [("SET", key, value, "NX", "PX", max(1, int(ttl * 1000))), ("GET", key)], True)
        return None if taken else (holder or b"").decode()

    def extend(self, name: str, value: str, ttl: float) -> bool:
        return bool(self._call("extend a claim", self.client.call, "EVAL", EXTEND_SCRIPT, 1, CLAIM_PREFIX + name,
                               value, max(1, int(ttl * 1000))))

    def release(self, name: str, value: str) -> None:
        self._call("release a claim", self.client.call, "EVAL", RELEASE_SCRIPT, 1, CLAIM_PREFIX + name, value)

    # -- canvas bookkeeping: every key expires with the results ------------------------------------

    def save_chords(self, chords: list[dict[str, Any]]) -> None:
        px = self._px
        self._call("save chords", self.client.pipeline,
                   [("SET", CHORD_PREFIX + chord["id"], JSON.dumps(chord), "PX", px) for chord in chords])

    def get_chord(self, chord_id: str) -> dict[str, Any] | None:
        raw = self._call("read a chord", self.client.call, "GET", CHORD_PREFIX + chord_id)
        return None if raw is None else JSON.loads(raw)

    def chord_report(self, chord_id: str, index: int, value: bytes) -> int:
        key, px = PARTS_PREFIX + chord_id, self._px
        replies = self._call("report to a chord", self.client.pipeline,  # MULTI/EXEC: the count includes this part
                             [("HSET", key, str(index), value), ("PEXPIRE", key, px),
                              ("PEXPIRE", CHORD_PREFIX + chord_id, px),  # a chord outlasting the expiry stays known
                              ("HLEN", key)], True)
        return int(replies[-1])

    def chord_parts(self, chord_id: str) -> dict[int, bytes]:
        raw = self._call("read a chord", self.client.call, "HGETALL", PARTS_PREFIX + chord_id)
        return {int(k): v for k, v in zip(raw[::2], raw[1::2])}

    def chord_claim(self, chord_id: str, claim: str) -> str:
        key = CHORD_STATE_PREFIX + chord_id
        replies = self._call("claim a chord", self.client.pipeline,
                             [("SET", key, claim, "NX", "PX", self._px), ("GET", key)], True)
        return str(replies[-1].decode())

    def chord_set_state(self, chord_id: str, state: str) -> None:
        self._call("mark a chord", self.client.call, "SET", CHORD_STATE_PREFIX + chord_id, state, "PX", self._px)

    def add_children(self, children: dict[str, list[str]]) -> None:
        px = self._px
        commands = [c for parent, ids in children.items()
                    for c in (("RPUSH", CHILDREN_PREFIX + parent, *ids), ("PEXPIRE", CHILDREN_PREFIX + parent, px))]
        if commands:
            self._call("save children", self.client.pipeline, commands)

    def children(self, parent_id: str) -> list[str]:
        raw = self._call("read children", self.client.call, "LRANGE", CHILDREN_PREFIX + parent_id, 0, -1)
        return list(dict.fromkeys(v.decode() for v in raw))  # a re-sent follow-up adds an id twice

    def close(self) -> None:
        with self._listener_lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
        self._waits.close()
        self.client.close()
