"""A local stand-in for Anthropic's Messages API, for tests, demos and benchmarks.

The real ``anthropic`` SDK talks to it through ``base_url``::

    taskq llm-server --port 8765            # or: python -m taskq.devtools.llm_server --port 8765
    ANTHROPIC_BASE_URL=http://127.0.0.1:8765 ANTHROPIC_API_KEY=dev python my_app.py

What it serves:

* ``POST /v1/messages``: JSON, or Server-Sent Events when ``"stream": true`` (``message_start``,
  ``content_block_start``, ``ping``, ``content_block_delta`` with ``text_delta``, ``content_block_stop``,
  ``message_delta`` with usage, ``message_stop``; ``error`` events for mid-stream faults).
* ``POST /v1/messages/count_tokens``: ``{"input_tokens": n}``.
* The answer is deterministic for a prompt: the same words, the same token counts, every time.
  One output token is one word; input tokens are the words and punctuation marks of system + messages.
* ``latency`` (seconds before the first byte) and ``tokens_per_second`` (0 = as fast as possible) are
  server settings (CLI options, ``POST /_control/config``) and can be set per request by markers.

Errors on demand, two ways (both documented in the README):

1. **Markers in the prompt** (system or any message), e.g. ``[[fault:rate_limit times=1 retry_after=3]]``.
   ``times=N`` fails only the first N requests carrying exactly that prompt (so a retry of the same prompt
   succeeds after N failures); without ``times`` every such request fails. Markers are removed from the text
   the answer is made from. Also ``[[latency=1.5]]``, ``[[tps=20]]`` and ``[[tokens=30]]``.
2. **The control endpoint** ``POST /_control/faults`` with ``{"fault": ..., "times": N, "match": "text"}``:
   the next N requests whose prompt contains ``match`` (any request when empty) fail.

Faults (:data:`FAULTS`): ``rate_limit`` (429 ``rate_limit_error`` with ``retry-after``, default 1 s),
``overloaded`` (529 ``overloaded_error``), ``server_error`` (500 ``api_error``), ``invalid_request``
(400 ``invalid_request_error``), ``mid_stream_overloaded`` (an ``error`` event after ``after`` deltas),
``cut`` (the connection is closed after ``after`` deltas), ``end_early`` (the response ends cleanly after
``after`` deltas, with no ``message_delta`` or ``message_stop``, as a proxy cutting it short would), ``malformed`` (an event whose data is not JSON after
``after`` deltas), ``stall`` (nothing for ``seconds`` before the
response), ``stall_mid`` (nothing for ``seconds`` after ``after`` deltas).

Scripted answers: ``POST /_control/replies`` with ``{"text": ..., "match": "text", "times": N}`` makes the
next N requests whose prompt contains ``match`` (every such request without ``times``) answer ``text``
(one token per word, whitespace kept, cut at ``max_tokens``): a planner's plan, a tool's JSON.

``GET /_control/requests`` lists what arrived (time, model, ``metadata.user_id``, a fingerprint of the API
key, never the key, token counts, status, fault); ``POST /_control/reset`` clears faults, replies, counters
and log.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import random
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from aiohttp import web

FAULTS = {
    # name: (HTTP status, API error type, message)
    "rate_limit": (429, "rate_limit_error", "Number of request tokens has exceeded your rate limit."),
    "overloaded": (529, "overloaded_error", "Overloaded"),
    "server_error": (500, "api_error", "Internal server error"),
    "invalid_request": (400, "invalid_request_error", "prompt is malformed (requested by a fault marker)"),
    "mid_stream_overloaded": (529, "overloaded_error", "Overloaded"),
    "cut": (0, "", ""),
    "end_early": (0, "", ""),
    "malformed": (0, "", ""),
    "stall": (0, "", ""),
    "stall_mid": (0, "", ""),
}
MID_STREAM = frozenset({"mid_stream_overloaded", "cut", "end_early", "malformed", "stall_mid"})
WORDS = ("Kafka", "keeps", "each", "user's", "tasks", "in", "order", "while", "workers", "share", "partitions",
         "and", "results", "land", "in", "the", "store", "quickly", "tokens", "stream", "to", "callers")
MARKER = re.compile(r"\[\[(fault:\w+|latency|tps|tokens)((?:\s*[=\s]\s*[\w.=]+)*)\s*\]\]")
TOKEN = re.compile(r"\w+|[^\w\s]")
LOG_LIMIT = 200_000


@dataclass(slots=True)
class Fault:
    """One error to inject; ``times`` None means every matching request."""

    fault: str
    times: int | None = None
    retry_after: float = 1.0
    after: int = 2
    seconds: float = 60.0
    match: str = ""

    @classmethod
    def parse(cls, spec: dict[str, Any]) -> Fault:
        if spec.get("fault") not in FAULTS:
            raise ValueError(f"unknown fault {spec.get('fault')!r}; one of {sorted(FAULTS)}")
        unknown = set(spec) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fault option(s) {sorted(unknown)}")
        fault = cls(**spec)
        fault.times = None if fault.times is None else int(fault.times)
        fault.retry_after, fault.seconds = float(fault.retry_after), seconds("seconds", fault.seconds)
        fault.after = int(fault.after)
        return fault


@dataclass(slots=True)
class Prompt:
    """What the server reads from one request body."""

    text: str
    clean: str
    faults: list[Fault] = field(default_factory=list)
    latency: float | None = None
    tps: float | None = None
    tokens: int | None = None


def prompt_text(body: dict[str, Any]) -> str:
    """System and message text of a Messages API request body, in order."""
    parts: list[str] = []

    def add(content: Any) -> None:
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")

    add(body.get("system"))
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            add(message.get("content"))
    return "\n".join(parts)


def parse_prompt(body: dict[str, Any]) -> Prompt:
    """The prompt text, its markers (faults, latency, tps, tokens) and the text without them."""
    text = prompt_text(body)
    prompt = Prompt(text, MARKER.sub("", text).strip())
    for match in MARKER.finditer(text):
        name, rest = match.group(1), match.group(2)
        options = dict(re.findall(r"(\w+)\s*=\s*([\w.]+)", rest))
        if name.startswith("fault:"):
            prompt.faults.append(Fault.parse({"fault": name[6:], **options}))
        else:
            value = rest.strip().lstrip("=").strip()
            if name == "tokens":
                prompt.tokens = int(value)
            else:
                setattr(prompt, name, seconds(name, value))
    return prompt


def seconds(name: str, value: Any) -> float:
    """A marker's or fault's number that the server sleeps by: NaN or infinity would hang the request."""
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{name}={value} must be a finite number >= 0")
    return number


def count_tokens(text: str) -> int:
    """Input tokens of ``text``: words and punctuation marks (at least 1)."""
    return max(1, len(TOKEN.findall(text)))


def answer(clean: str, max_tokens: int, length: int | None = None) -> tuple[list[str], str]:
    """Deterministic output tokens for a prompt and the stop reason."""
    seed = int(hashlib.sha256(clean.encode()).hexdigest()[:8], 16)
    rng = random.Random(seed)
    natural = length if length is not None else 8 + seed % 12
    words = [rng.choice(WORDS) for _ in range(min(natural, max_tokens))]
    tokens = [(w if i == 0 else " " + w) for i, w in enumerate(words)]
    return tokens, ("max_tokens" if max_tokens < natural else "end_turn")


def scripted(text: str, max_tokens: int) -> tuple[list[str], str]:
    """Output tokens of a scripted answer (a word with the whitespace before it) and the stop reason."""
    tokens = re.findall(r"\s*\S+", text) or [text]
    return tokens[:max_tokens], ("max_tokens" if max_tokens < len(tokens) else "end_turn")


@dataclass
class Reply:
    """A scripted answer for requests whose prompt contains ``match`` (``times`` left; None: always)."""

    text: str
    match: str = ""
    times: int | None = None

    @classmethod
    def parse(cls, spec: dict[str, Any]) -> Reply:
        if not isinstance(spec.get("text"), str):
            raise ValueError("a scripted reply needs \"text\" (a string)")
        times = spec.get("times")
        if times is not None and (not isinstance(times, int) or times < 1):
            raise ValueError("times must be an integer >= 1")
        return cls(spec["text"], str(spec.get("match") or ""), times)


T = TypeVar("T", Fault, Reply)


def take_matching(items: list[T], text: str) -> T | None:
    """The first of ``items`` whose ``match`` is in ``text`` and has ``times`` left, one time used."""
    for item in items:
        if item.match in text and (item.times is None or item.times > 0):
            if item.times is not None:
                item.times -= 1
            return item
    return None


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _error_body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": _request_id()}


def _request_id() -> str:
    return "req_" + uuid.uuid4().hex[:24]


class StandIn:
    """The server's settings and state, and the aiohttp application serving them."""

    def __init__(self, latency: float = 0.0, tokens_per_second: float = 0.0, ping_every: int = 0) -> None:
        self.latency = latency
        self.tokens_per_second = tokens_per_second
        self.ping_every = ping_every  # a ping event every N deltas (0: only after content_block_start)
        self.faults: list[Fault] = []  # from POST /_control/faults, consumed in order
        self.replies: list[Reply] = []  # from POST /_control/replies, the first match answers
        self.hits: dict[str, int] = {}  # prompt-marker fault -> requests failed so far
        self.log: deque[dict[str, Any]] = deque(maxlen=LOG_LIMIT)
        self.active = 0
        self.peak_active = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.add_routes([
            web.post("/v1/messages", self.messages),
            web.post("/v1/messages/count_tokens", self.count_tokens),
            web.get("/_control/health", self.health),
            web.post("/_control/faults", self.add_fault),
            web.post("/_control/replies", self.add_reply),
            web.delete("/_control/faults", self.clear_faults),
            web.get("/_control/requests", self.requests),
            web.post("/_control/reset", self.reset),
            web.post("/_control/config", self.config),
        ])
        return app

    # -- faults -----------------------------------------------------------------------------------

    def _fault_for(self, prompt: Prompt) -> Fault | None:
        for fault in prompt.faults:
            if fault.times is None:
                return fault
            key = f"{fault.fault}\x00{prompt.text}"
            if self.hits.get(key, 0) < fault.times:
                self.hits[key] = self.hits.get(key, 0) + 1
                return fault
        return take_matching(self.faults, prompt.text)

    def _reply_for(self, prompt: Prompt) -> Reply | None:
        return take_matching(self.replies, prompt.text)

    # -- API --------------------------------------------------------------------------------------

    async def _body(self, request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self._error(400, "invalid_request_error", "request body is not valid JSON")
        if not isinstance(body, dict):
            return self._error(400, "invalid_request_error", "request body must be a JSON object")
        for name, kind in (("model", str), ("messages", list)):
            if not isinstance(body.get(name), kind):
                return self._error(400, "invalid_request_error", f"{name}: Field required")
        if not body["messages"]:
            return self._error(400, "invalid_request_error", "messages: at least one message is required")
        return body

    @staticmethod
    def _error(status: int, kind: str, message: str, retry_after: float | None = None) -> web.Response:
        headers = {"request-id": _request_id()}
        if retry_after is not None:
            headers["retry-after"] = f"{retry_after:g}"
        return web.json_response(_error_body(kind, message), status=status, headers=headers)

    async def count_tokens(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        return web.json_response({"input_tokens": count_tokens(parse_prompt(body).clean)})

    async def messages(self, request: web.Request) -> web.StreamResponse:
        arrived = time.time()
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return self._error(400, "invalid_request_error", "max_tokens: must be an integer >= 1")
        try:
            prompt = parse_prompt(body)
        except ValueError as exc:
            return self._error(400, "invalid_request_error", f"bad stand-in marker: {exc}")
        fault = self._fault_for(prompt)
        script = self._reply_for(prompt) if fault is None else None
        tokens, stop_reason = (scripted(script.text, max_tokens) if script is not None
                               else answer(prompt.clean, max_tokens, prompt.tokens))
        input_tokens = count_tokens(prompt.clean)
        key = request.headers.get("x-api-key") or request.headers.get("authorization") or ""
        entry = {"ts": arrived, "model": body["model"], "user_id": (body.get("metadata") or {}).get("user_id"),
                 "key": hashlib.sha256(key.encode()).hexdigest()[:12] if key else None,
                 "stream": bool(body.get("stream")), "input_tokens": input_tokens, "output_tokens": len(tokens),
                 "status": 200, "fault": fault.fault if fault else None}
        self.log.append(entry)
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        try:
            latency = self.latency if prompt.latency is None else prompt.latency
            tps = self.tokens_per_second if prompt.tps is None else prompt.tps
            if fault is not None and fault.fault == "stall":
                await asyncio.sleep(fault.seconds)
            if fault is not None and fault.fault not in MID_STREAM and FAULTS[fault.fault][0]:
                status, kind, message = FAULTS[fault.fault]
                entry["status"] = status
                await asyncio.sleep(latency)
                return self._error(status, kind, message, fault.retry_after if status == 429 else None)
            reply: dict[str, Any] = {
                "id": "msg_" + uuid.uuid4().hex[:24], "type": "message", "role": "assistant",
                "model": body["model"], "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": input_tokens, "output_tokens": 0}}
            if body.get("stream"):
                return await self._stream(request, reply, tokens, stop_reason, latency, tps, fault, entry)
            await asyncio.sleep(latency + (len(tokens) / tps if tps > 0 else 0.0))
            if fault is not None and fault.fault in MID_STREAM:
                return await self._fail_plain(request, fault, entry)
            reply.update(content=[{"type": "text", "text": "".join(tokens)}], stop_reason=stop_reason,
                         usage={"input_tokens": input_tokens, "output_tokens": len(tokens)})
            return web.json_response(reply, headers={"request-id": _request_id()})
        finally:
            self.active -= 1

    async def _fail_plain(self, request: web.Request, fault: Fault, entry: dict[str, Any]) -> web.StreamResponse:
        """A mid-stream fault on a non-streaming request: 529, a cut connection, or a stall."""
        if fault.fault == "mid_stream_overloaded":
            entry["status"] = 529
            return self._error(529, "overloaded_error", "Overloaded")
        if fault.fault == "stall_mid":
            await asyncio.sleep(fault.seconds)
        _cut(request)
        return web.Response(status=500)

    async def _stream(self, request: web.Request, message: dict[str, Any], tokens: list[str], stop_reason: str,
                      latency: float, tps: float, fault: Fault | None, entry: dict[str, Any]) -> web.StreamResponse:
        await asyncio.sleep(latency)
        response = web.StreamResponse(headers={"content-type": "text/event-stream; charset=utf-8",
                                               "cache-control": "no-cache", "request-id": _request_id()})
        try:
            await response.prepare(request)
            await response.write(_sse("message_start", {"type": "message_start", "message": message})
                                 + _sse("content_block_start", {"type": "content_block_start", "index": 0,
                                                                "content_block": {"type": "text", "text": ""}})
                                 + _sse("ping", {"type": "ping"}))
            started = time.monotonic()
            for i, token in enumerate(tokens):
                if fault is not None and fault.fault in MID_STREAM and i == min(fault.after, len(tokens) - 1):
                    return await self._fail_stream(request, response, fault, entry)
                if tps > 0:
                    await asyncio.sleep(max(0.0, started + (i + 1) / tps - time.monotonic()))
                chunk = _sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                     "delta": {"type": "text_delta", "text": token}})
                if self.ping_every and i and i % self.ping_every == 0:
                    chunk += _sse("ping", {"type": "ping"})
                await response.write(chunk)
            await response.write(
                _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
                + _sse("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                         "usage": {"output_tokens": len(tokens)}})
                + _sse("message_stop", {"type": "message_stop"}))
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            entry["status"] = 499  # the client went away
        return response

    async def _fail_stream(self, request: web.Request, response: web.StreamResponse, fault: Fault,
                           entry: dict[str, Any]) -> web.StreamResponse:
        if fault.fault == "mid_stream_overloaded":
            entry["status"] = 529
            await response.write(_sse("error", _error_body("overloaded_error", "Overloaded")))
            await response.write_eof()
            return response
        if fault.fault == "stall_mid":
            await asyncio.sleep(fault.seconds)
        entry["status"] = 0
        if fault.fault == "malformed":
            await response.write(b"event: content_block_delta\ndata: {not json\n\n")
        if fault.fault in ("end_early", "malformed"):
            await response.write_eof()
            return response
        _cut(request)
        return response

    # -- control ----------------------------------------------------------------------------------

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "active": self.active, "peak_active": self.peak_active})

    async def _specs(self, request: web.Request, parse: Any) -> list[Any] | web.Response:
        """``parse`` applied to the JSON body (an object or a list of them); a 400 when it is malformed."""
        try:
            spec = await request.json()
            return [parse(s) for s in (spec if isinstance(spec, list) else [spec])]
        except (ValueError, TypeError, AttributeError) as exc:
            return self._error(400, "invalid_request_error", str(exc))

    async def add_fault(self, request: web.Request) -> web.Response:
        faults = await self._specs(request, Fault.parse)
        if isinstance(faults, web.Response):
            return faults
        self.faults.extend(faults)
        return web.json_response({"faults": [asdict(f) for f in self.faults]})

    async def add_reply(self, request: web.Request) -> web.Response:
        replies = await self._specs(request, Reply.parse)
        if isinstance(replies, web.Response):
            return replies
        self.replies.extend(replies)
        return web.json_response({"replies": len(self.replies)})

    async def clear_faults(self, _request: web.Request) -> web.Response:
        self.faults.clear()
        return web.json_response({"faults": []})

    async def requests(self, request: web.Request) -> web.Response:
        since = float(request.query.get("since", "0"))
        return web.json_response([e for e in self.log if e["ts"] >= since])

    async def reset(self, _request: web.Request) -> web.Response:
        self.faults.clear()
        self.replies.clear()
        self.hits.clear()
        self.log.clear()
        self.peak_active = self.active
        return web.json_response({"ok": True})

    async def config(self, request: web.Request) -> web.Response:
        spec = await request.json()
        for name in ("latency", "tokens_per_second", "ping_every"):
            if name in spec:
                setattr(self, name, type(getattr(self, name))(seconds(name, spec[name])))
        return web.json_response({"latency": self.latency, "tokens_per_second": self.tokens_per_second,
                                  "ping_every": self.ping_every})


def _cut(request: web.Request) -> None:
    """Close the TCP connection without finishing the response."""
    transport = request.transport
    if transport is not None:
        transport.abort()


class LLMServer:
    """The stand-in running on its own event loop in a background thread.

    >>> with LLMServer(latency=0.0) as server:   # doctest: +SKIP
    ...     anthropic.Anthropic(base_url=server.url, api_key="dev")
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, latency: float = 0.0,
                 tokens_per_second: float = 0.0) -> None:
        self.host = host
        self.port = port or _free_port(host)
        self.standin = StandIn(latency, tokens_per_second)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> LLMServer:
        self._thread = threading.Thread(target=self._run, name="llm-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"the LLM stand-in did not start on {self.url}: {self._error}")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        runner = await start_site(self.standin, self.host, self.port)
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    def __enter__(self) -> LLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LLMServerClient:
    """Control a running stand-in over HTTP (standard library only): faults, request log, settings."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _call(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - our own loopback server
            return json.loads(resp.read())

    def health(self, timeout: float = 2.0) -> dict[str, Any]:
        return self._call("GET", "/_control/health", timeout=timeout)

    def add_fault(self, fault: str, **options: Any) -> None:
        """Fail the next requests: ``add_fault("overloaded", times=2, match="hello")``."""
        self._call("POST", "/_control/faults", {"fault": fault, **options})

    def clear_faults(self) -> None:
        self._call("DELETE", "/_control/faults")

    def add_reply(self, text: str, **options: Any) -> None:
        """Answer ``text`` to the next requests: ``add_reply("research: X", match="planner", times=1)``."""
        self._call("POST", "/_control/replies", {"text": text, **options})

    def requests(self, since: float = 0.0) -> list[dict[str, Any]]:
        return self._call("GET", f"/_control/requests?since={since}")

    def configure(self, **settings: float) -> dict[str, Any]:
        """Server-wide ``latency``, ``tokens_per_second``, ``ping_every``."""
        return self._call("POST", "/_control/config", settings)

    def reset(self) -> None:
        self._call("POST", "/_control/reset", {})


async def start_site(standin: StandIn, host: str, port: int) -> web.AppRunner:
    """Start serving ``standin`` on ``host:port``; the caller cleans up the returned runner."""
    runner = web.AppRunner(standin.app(), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=4096).start()
    return runner


def serve(host: str = "127.0.0.1", port: int = 8765, latency: float = 0.0, tokens_per_second: float = 0.0) -> None:
    """Serve until interrupted (the ``taskq llm-server`` command)."""
    web.run_app(StandIn(latency, tokens_per_second).app(), host=host, port=port, access_log=None,
                backlog=4096, print=None)


class LLMServerProcess(LLMServerClient):
    """The stand-in in a child process (its own interpreter, so a busy caller does not slow it down)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, latency: float = 0.0,
                 tokens_per_second: float = 0.0) -> None:
        self.host = host
        self.port = port or _free_port(host)
        super().__init__(f"http://{host}:{self.port}")
        self.argv = [sys.executable, "-m", "taskq.devtools.llm_server", "--host", host, "--port", str(self.port),
                     "--latency", str(latency), "--tokens-per-second", str(tokens_per_second)]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> LLMServerProcess:
        self.process = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise RuntimeError(f"the LLM stand-in exited with code {self.process.returncode}: {err[-2000:]}")
            try:
                self.health(timeout=1.0)
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the LLM stand-in did not answer on {self.url} within {timeout} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()

    def __enter__(self) -> LLMServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m taskq.devtools.llm_server", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before the first byte")
    parser.add_argument("--tokens-per-second", type=float, default=0.0, help="0: as fast as possible")
    args = parser.parse_args(argv)
    print(f"Messages API stand-in on http://{args.host}:{args.port}", flush=True)
    serve(args.host, args.port, args.latency, args.tokens_per_second)


if __name__ == "__main__":  # pragma: no cover
    main()
