"""How canvas elements become task messages, and what a finished canvas task sets in motion.

This module owns the ``canvas`` header (JSON, on every message sent as part of a workflow)::

    {"chain": [element, ...],              # what runs after this task, given its result
     "chord": {"id": chord_id, "index": i}, # reached the end of the chain: report to this chord
     "link": [element, ...], "link_error": [element, ...]}   # this task's own callbacks

Elements are :meth:`taskq.canvas.Canvas.to_dict` data. A chord's header tasks carry only its id; the
chord's body, its size and what follows it are saved in the result backend (``save_chords``) before
any header task is sent, and expire with the results.

Exactly-once bookkeeping for chords, across worker crashes (a task's offset is committed only after
:func:`settle` returned, so a crash re-runs the task and its follow-ups):

* a finished header task's result is written into the chord's parts at its index (idempotent), and
  the number of parts returned in the same atomic step;
* whoever sees every part present claims the chord (``firing:<reporter>``, set if absent), sends the
  body with its pre-assigned id, waits for the acknowledgement and only then marks it ``fired``.
  A crash in between re-runs the same reporter, which finds its own claim and sends again (same id:
  the worker skips a duplicate whose result is final or which is already running); anyone else
  finding a claim does nothing;
* a failed header task claims the chord the same way (``failing:<task>`` then ``failed``): the body
  is not run, the chord's result and everything after it store the failure, the chord's
  ``link_error`` callbacks run once.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from taskq.errors import TaskqError
from taskq.execution import Kind, Outcome, qualname
from taskq.message import H_CANVAS, H_ID, H_ROOT_ID, TaskMessage
from taskq.results.base import FAILURE, SUCCESS, ResultRecord
from taskq.serialization import JSON
from taskq.task import Task

if TYPE_CHECKING:
    from taskq.app import Taskq

log = logging.getLogger("taskq.canvas")
Element = dict[str, Any]
Continuation = dict[str, Any]
Outgoing = tuple[TaskMessage, str, int, str]  # message, topic, partitions, serializer
Deliver = Callable[[list[Outgoing]], list[Outgoing]]  # sends; returns those refused as too large
Retrying = Callable[[str, Callable[[], Any]], Any]
FIRED = "fired"
FAILED = "failed"


@dataclass
class Report:
    """A header task (or a nested chord) of chord ``chord_id`` finished with ``value``."""

    chord_id: str
    index: int
    value: Any
    root_id: str
    reporter: str  # the task (or nested chord) id reporting: its claim on the chord


@dataclass
class ChordFailure:
    chord_id: str
    failed_id: str  # the task that failed
    error: str
    traceback: str | None
    root_id: str
    reporter: str
    index: int  # the failed header task's place in the chord


@dataclass
class Plan:
    """What to make durable, in this order: chord state and children, records, then messages; then
    chord reports and failures (which may make a next plan)."""

    chords: list[dict[str, Any]] = field(default_factory=list)
    children: dict[str, list[str]] = field(default_factory=dict)
    records: list[ResultRecord] = field(default_factory=list)
    messages: list[Outgoing] = field(default_factory=list)
    reports: list[Report] = field(default_factory=list)
    failures: list[ChordFailure] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.chords or self.children or self.records or self.messages or self.reports
                    or self.failures)


# -- element data ----------------------------------------------------------------------------------

def result_id(element: Element) -> str:
    """The id holding ``element``'s result: a chain's last, a group's or body-less chord's own, a chord's body."""
    if "task" in element:
        return element["options"]["task_id"]
    if "chain" in element:
        return result_id(element["chain"][-1])
    if "group" in element:
        return element["id"]
    chord = element["chord"]
    return result_id(chord["body"]) if chord.get("body") is not None else chord["id"]


def first_id(element: Element) -> str:
    """The id of what is sent first (a workflow's root)."""
    if "task" in element:
        return element["options"]["task_id"]
    if "chain" in element:
        return first_id(element["chain"][0])
    return element["id"] if "group" in element else element["chord"]["id"]


def all_ids(element: Element) -> list[str]:
    """Every id in ``element`` that will get a result (to fail them all when a failure stops it)."""
    if "task" in element:
        return [element["options"]["task_id"]]
    if "chain" in element:
        return [i for e in element["chain"] for i in all_ids(e)]
    if "group" in element:
        return [element["id"], *(i for e in element["group"] for i in all_ids(e))]
    chord = element["chord"]
    body = all_ids(chord["body"]) if chord.get("body") is not None else []
    return [chord["id"], *(i for e in chord["header"] for i in all_ids(e)), *body]


def following_ids(cont: Continuation) -> list[str]:
    """Every id after a task in its chain: a failure of the task fails them all (a replay forgets them)."""
    return [i for element in cont.get("chain", []) for i in all_ids(element)]


def with_kwargs(element: Element, kwargs: dict[str, Any]) -> Element:
    """``element`` with ``kwargs`` merged into the tasks that run first."""
    if "task" in element:
        return {**element, "kwargs": {**element.get("kwargs", {}), **kwargs}}
    if "chain" in element:
        return {"chain": [with_kwargs(element["chain"][0], kwargs), *element["chain"][1:]]}
    if "group" in element:
        return {**element, "group": [with_kwargs(e, kwargs) for e in element["group"]]}
    chord = element["chord"]
    return {"chord": {**chord, "header": [with_kwargs(e, kwargs) for e in chord["header"]]}}


def parse(header: bytes | str | None) -> Continuation:
    """The ``canvas`` header as a dict (empty when absent)."""
    if not header:
        return {}
    data = JSON.loads(header if isinstance(header, bytes) else header.encode())
    return data if isinstance(data, dict) else {}


def problem(header: bytes | str) -> str | None:
    """What makes ``header`` no ``canvas`` header a worker can follow, or None. Any Kafka client can
    send one: the worker rejects a bad one before the run (found after it, it stopped the finisher)."""
    try:
        return _continuation_problem(JSON.loads(header if isinstance(header, bytes) else header.encode()))
    except (ValueError, RecursionError) as exc:  # not JSON, or nested too deep
        return str(exc) or type(exc).__name__


def _continuation_problem(cont: Any) -> str | None:
    if not isinstance(cont, dict):
        return "not a JSON object"
    chord = cont.get("chord")
    if chord is not None and not (isinstance(chord, dict) and isinstance(chord.get("id"), str)
                                  and type(chord.get("index")) is int):
        return "'chord' needs a text 'id' and an integer 'index'"
    return _elements_problem(cont, ("chain", "link", "link_error"))


def _elements_problem(data: dict[str, Any], names: Sequence[str]) -> str | None:
    """The first problem of the element lists ``data[name]`` (each optional)."""
    for name in names:
        items = data.get(name, [])
        if not isinstance(items, list):
            return f"{name!r} is not a list"
        for item in items:
            if problem := _element_problem(item):
                return problem
    return None


def _element_problem(el: Any) -> str | None:
    """What makes ``el`` no canvas element (see :meth:`taskq.canvas.Canvas.to_dict`), or None."""
    if not isinstance(el, dict):
        return f"element {el!r} is not an object"
    if "task" in el:
        options = el.get("options")
        if not (isinstance(el["task"], str) and isinstance(el.get("args", []), list)
                and isinstance(el.get("kwargs") or {}, dict) and isinstance(options, dict)
                and isinstance(options.get("task_id"), str)):
            return f"task element {el.get('task')!r} needs a name, a list of args, a dict of kwargs and a task_id"
        return _elements_problem(options, ("link", "link_error"))
    if "chain" in el:
        return _elements_problem(el, ("chain",)) if el["chain"] else "a chain needs at least one task"
    if "group" in el:
        return _elements_problem(el, ("group",)) if isinstance(el.get("id"), str) else "a group needs an id"
    chord = el.get("chord")
    if not (isinstance(chord, dict) and isinstance(chord.get("id"), str) and "header" in chord):
        return f"element with keys {sorted(el)} is no task, chain, group or chord with an id and a header"
    body = chord.get("body")
    return _elements_problem(chord, ("header", "link_error")) or (_element_problem(body) if body is not None else None)


# -- expansion -------------------------------------------------------------------------------------

class Expander:
    """Turns elements into messages (and chord state) in a :class:`Plan`."""

    def __init__(self, app: Taskq, plan: Plan, in_worker: bool = True) -> None:
        self.app = app
        self.plan = plan
        self.in_worker = in_worker  # a refused send (a task's send check) fails that task, not the worker

    def expand(self, element: Element, prefix: Sequence[Any], cont: Continuation, root: str,
               parent: str | None) -> None:
        """Send ``element`` with ``prefix`` before its first tasks' arguments, followed by ``cont``."""
        if "task" in element:
            self._task(element, prefix, cont, root, parent)
        elif "chain" in element:
            items = element["chain"]
            rest = {"chain": [*items[1:], *cont.get("chain", [])], "chord": cont.get("chord")}
            self.expand(items[0], prefix, rest, root, parent)
        elif "group" in element:
            if cont.get("chain") or cont.get("chord"):  # something waits for the group: a body-less chord
                self.expand({"chord": {"header": element["group"], "body": None, "id": element["id"]}},
                            prefix, cont, root, parent)
                return
            self._child(parent, element["id"])
            for member in element["group"]:
                self.expand(member, prefix, {}, root, element["id"])
        else:
            self._chord(element["chord"], prefix, cont, root, parent)

    def proceed(self, cont: Continuation, value: Any, root: str, done_id: str) -> None:
        """``done_id`` finished with ``value``: run the rest of its chain, or report to its chord."""
        chain = cont.get("chain")
        if chain:
            self.expand(chain[0], (value,), {"chain": chain[1:], "chord": cont.get("chord")}, root, done_id)
        elif cont.get("chord"):
            chord = cont["chord"]
            self.plan.reports.append(Report(chord["id"], chord["index"], value, root, done_id))

    def fail(self, cont: Continuation, failed_id: str, error: str, tb: str | None, root: str,
             reporter: str) -> None:
        """A failure stops ``cont``: every result after it is that failure; its chord fails."""
        now = time.time()
        self.plan.records.extend(ResultRecord(i, FAILURE, None, error, tb, date_done=now, meta={"failed_by": failed_id})
                                 for i in following_ids(cont))
        if cont.get("chord"):
            chord = cont["chord"]
            self.plan.failures.append(ChordFailure(chord["id"], failed_id, error, tb, root, reporter, chord["index"]))

    def _task(self, element: Element, prefix: Sequence[Any], cont: Continuation, root: str,
              parent: str | None) -> None:
        app = self.app
        name = element["task"]
        task = app.tasks.get(name) or Task(app, _unregistered, name)  # routing only: the worker knows it
        options = element.get("options") or {}
        args = list(element.get("args", ())) if element.get("immutable") else [*prefix, *element.get("args", ())]
        header = {k: v for k, v in (("chain", cont.get("chain")), ("chord", cont.get("chord")),
                                    ("link", options.get("link")), ("link_error", options.get("link_error")))
                  if v}
        try:
            message = task.message(args, element.get("kwargs") or {}, key=options.get("key"),
                                   task_id=options.get("task_id"), headers=options.get("headers"),
                                   countdown=options.get("countdown"), eta=options.get("eta"), root_id=root,
                                   parent_id=parent, canvas=JSON.dumps(header).decode() if header else None)
            topic = task.topic_of(options.get("priority") or 0)
            serializer = options.get("serializer") or task.serializer
            app.serializers.get(serializer)  # an unknown one fails this step here, not the worker's send
        except (TaskqError, TypeError) as exc:  # a send check refused it, or an argument or option is bad
            if not self.in_worker:
                raise
            task_id, error = options["task_id"], f"{qualname(exc)}: {exc}"
            self.plan.records.append(ResultRecord(task_id, FAILURE, None, error, None, name, date_done=time.time(),
                                                  root_id=root, parent_id=parent))
            self.fail({k: v for k, v in cont.items() if k in ("chain", "chord")}, task_id, error, None, root,
                      task_id)
            return
        self._child(parent, message.id)
        self.plan.messages.append((message, topic, task.partitions, serializer))

    def _chord(self, chord: dict[str, Any], prefix: Sequence[Any], cont: Continuation, root: str,
               parent: str | None) -> None:
        chord_id = chord["id"]
        if not chord["header"]:  # an empty group waited on: no header task will report, so it is done now
            self._child(parent, chord_id)
            self.plan.records.append(ResultRecord(chord_id, SUCCESS, [], task="chord", date_done=time.time(),
                                                  root_id=root, parent_id=parent))
            if chord.get("body") is not None:
                self.expand(chord["body"], ([],), cont, root, chord_id)
            else:
                self.proceed(cont, [], root, chord_id)
            return
        self.plan.chords.append({
            "id": chord_id, "size": len(chord["header"]), "body": chord.get("body"),
            "then": {k: v for k, v in (("chain", cont.get("chain")), ("chord", cont.get("chord"))) if v},
            "link_error": chord.get("link_error", []), "root_id": root, "parent_id": parent,
            "allow_error": bool(chord.get("allow_error")),
        })
        self._child(parent, chord_id)
        for index, member in enumerate(chord["header"]):
            self.expand(member, prefix, {"chord": {"id": chord_id, "index": index}}, root, chord_id)

    def _child(self, parent: str | None, child: str) -> None:
        if parent is not None:
            self.plan.children.setdefault(parent, []).append(child)


def _unregistered(*_args: Any, **_kwargs: Any) -> None:
    raise AssertionError("a routing-only task stand-in is never run")


# -- sending ---------------------------------------------------------------------------------------

def send(app: Taskq, element: Element, prefix: Sequence[Any] = (), root_id: str | None = None,
         parent_id: str | None = None) -> None:
    """Send a frozen element from the caller (or from inside a running task, which becomes its parent)."""
    current = app.current_request.get()
    if current is not None:
        parent_id = parent_id or current.id
        root_id = root_id or current.root
    plan = Plan()
    Expander(app, plan, in_worker=False).expand(element, prefix, {}, root_id or first_id(element), parent_id)

    def deliver(messages: list[Outgoing]) -> list[Outgoing]:
        for message, topic, partitions, serializer in messages:
            app.send(message, topic, partitions, serializer)  # raises MessageTooLarge at the call
        return []

    settle(app, plan, deliver)


def after_success(app: Taskq, plan: Plan, task_id: str, root: str, header: bytes | str | None, value: Any) -> None:
    """Add to ``plan`` what follows task ``task_id`` that succeeded with ``value``."""
    cont = parse(header)
    expander = Expander(app, plan)
    for callback in cont.get("link", []):
        expander.expand(callback, (value,), {}, root, task_id)
    expander.proceed(cont, value, root, task_id)


def after_failure(app: Taskq, plan: Plan, task_id: str, root: str, header: bytes | str | None, error: str,
                  tb: str | None) -> None:
    """Add to ``plan`` what follows task ``task_id`` that failed for good with ``error``."""
    cont = parse(header)
    expander = Expander(app, plan)
    for errback in cont.get("link_error", []):
        expander.expand(errback, (task_id, error), {}, root, task_id)
    expander.fail(cont, task_id, error, tb, root, task_id)


def after_replace(app: Taskq, plan: Plan, task_id: str, root: str, header: bytes | str | None,
                  element: Element) -> None:
    """Task ``task_id`` replaced itself by ``element``: send it, with ids derived from ``task_id`` and its
    result under ``task_id``; what followed the task follows the element."""
    cont = parse(header)
    then = {k: v for k, v in (("chain", cont.get("chain")), ("chord", cont.get("chord"))) if v}
    Expander(app, plan).expand(reid(element, task_id), (), then, root, task_id)


def reid(element: Element, seed: str) -> Element:
    """``element`` with every id derived from ``seed`` (the same each time) and its result id ``seed``."""
    counter = itertools.count()

    def fresh() -> str:
        return hashlib.sha256(f"{seed}/{next(counter)}".encode()).hexdigest()[:32]

    def walk(el: Element, result: str | None) -> Element:
        if "task" in el:
            options = dict(el.get("options") or {})
            options["task_id"] = result or fresh()
            for name in ("link", "link_error"):
                if options.get(name):
                    options[name] = [walk(c, None) for c in options[name]]
            return {**el, "options": options}
        if "chain" in el:
            items = el["chain"]
            return {"chain": [*(walk(e, None) for e in items[:-1]), walk(items[-1], result)]}
        if "group" in el:
            group_id = result or fresh()
            return {**el, "id": group_id, "group": [walk(e, None) for e in el["group"]]}
        chord = dict(el["chord"])
        chord["id"] = fresh() if chord.get("body") is not None or result is None else result
        chord["header"] = [walk(e, None) for e in chord["header"]]
        chord["link_error"] = [walk(e, None) for e in chord.get("link_error", [])]
        if chord.get("body") is not None:
            chord["body"] = walk(chord["body"], result)
        return {"chord": chord}

    return walk(element, seed)


def settle(app: Taskq, plan: Plan, deliver: Deliver, retrying: Retrying | None = None) -> None:
    """Make ``plan`` durable, then follow its chord reports and failures until nothing is left.

    ``deliver`` must return only once every message is acknowledged (the worker's sender); chords
    are marked fired or failed at the very end, so a crash anywhere before re-runs all of it. A
    message the broker refuses as too large (a chord body given many large results, say) fails
    its task: FAILURE stored, its error callbacks run and what follows it fails.
    """
    call: Retrying = retrying or (lambda _what, fn: fn())
    backend = app.backend
    done: list[tuple[str, str]] = []  # (chord id, final state)
    while plan:
        current = plan
        if current.chords:
            call("save chords", lambda: backend.save_chords(current.chords))
        if current.children:
            call("save children", lambda: backend.add_children(current.children))
        if current.records:
            call("store results", lambda: backend.store_many(current.records))
        refused = deliver(current.messages) if current.messages else []
        plan = Plan()
        expander = Expander(app, plan)
        for message, *_ in refused:
            _too_large(app, plan, message)
        for report in current.reports:
            _report(app, expander, report, done, call)
        for failure in current.failures:
            _chord_failed(app, expander, failure, done, call)
    for chord_id, state in done:
        call("mark chords", lambda: backend.chord_set_state(chord_id, state))


def _too_large(app: Taskq, plan: Plan, message: TaskMessage) -> None:
    error = (f"taskq.errors.MessageTooLarge: the message of {message.task} is larger than the broker takes "
             "(its arguments: pass a reference to large data instead)")
    root = message.root_id or message.id
    plan.records.append(ResultRecord(message.id, FAILURE, None, error, None, message.task, date_done=time.time(),
                                     root_id=root, parent_id=message.parent_id))
    after_failure(app, plan, message.id, root, message.canvas, error, None)


def _report(app: Taskq, expander: Expander, report: Report, done: list[tuple[str, str]], call: Retrying) -> None:
    backend = app.backend
    meta = call("read a chord", lambda: backend.get_chord(report.chord_id))
    if meta is None:
        log.error("chord %s is unknown (expired?): the result of %s is dropped", report.chord_id, report.reporter)
        return
    if not 0 <= report.index < meta["size"]:  # counted, it would fire the chord with a part missing
        log.error("chord %s has %d parts, not a part %d: the result of %s is dropped", report.chord_id,
                  meta["size"], report.index, report.reporter)
        return
    count = call("report to a chord", lambda: backend.chord_report(report.chord_id, report.index,
                                                                     JSON.dumps(report.value)))
    if count < meta["size"]:
        return
    claim = f"firing:{report.reporter}"
    if call("claim a chord", lambda: backend.chord_claim(report.chord_id, claim)) != claim:
        return  # fired, failed, or being fired by another reporter
    parts = call("read a chord", lambda: backend.chord_parts(report.chord_id))
    results = [JSON.loads(parts[i]) for i in range(meta["size"])]
    chord_id = report.chord_id
    expander.plan.records.append(ResultRecord(chord_id, SUCCESS, results, task="chord", date_done=time.time(),
                                              root_id=meta["root_id"], parent_id=meta["parent_id"]))
    if meta.get("body") is not None:
        expander.expand(meta["body"], (results,), meta["then"], meta["root_id"], chord_id)
    else:
        expander.proceed(meta["then"], results, meta["root_id"], chord_id)
    done.append((chord_id, FIRED))


def _chord_failed(app: Taskq, expander: Expander, failure: ChordFailure, done: list[tuple[str, str]],
                  call: Retrying) -> None:
    backend = app.backend
    meta = call("read a chord", lambda: backend.get_chord(failure.chord_id)) or {}
    if meta.get("allow_error"):  # the failure takes its place among the results
        value = {"error": failure.error, "task_id": failure.failed_id}
        _report(app, expander, Report(failure.chord_id, failure.index, value, failure.root_id, failure.reporter),
                done, call)
        return
    claim = f"failing:{failure.reporter}"
    if call("claim a chord", lambda: backend.chord_claim(failure.chord_id, claim)) != claim:
        return
    now = time.time()
    failed = [failure.chord_id, *(all_ids(meta["body"]) if meta.get("body") is not None else [])]
    expander.plan.records.extend(
        ResultRecord(i, FAILURE, None, failure.error, failure.traceback, date_done=now,
                     meta={"failed_by": failure.failed_id}) for i in failed)
    for errback in meta.get("link_error", []):
        expander.expand(errback, (failure.failed_id, failure.error), {}, failure.root_id, failure.chord_id)
    expander.fail(meta.get("then", {}), failure.failed_id, failure.error, failure.traceback, failure.root_id,
                  failure.chord_id)
    done.append((failure.chord_id, FAILED))


def after_outcomes(app: Taskq, outcomes: Sequence[Outcome]) -> Plan:
    """What the finished canvas tasks among ``outcomes`` set in motion (empty for plain tasks).

    A rejected message (e.g. a chain step whose task no worker knows) stops its workflow like a failure.
    """
    plan = Plan()
    for outcome in outcomes:
        record = outcome.record
        header = record.header(H_CANVAS)
        if outcome.replaced is not None and (raw_id := record.header(H_ID)) is not None:
            task_id = raw_id.decode(errors="replace")
            root = (record.header(H_ROOT_ID) or raw_id).decode(errors="replace")
            after_replace(app, plan, task_id, root, header, outcome.replaced)
            continue
        if header is None or outcome.kind is Kind.RETRY:
            continue
        if outcome.kind is Kind.REJECTED and problem(header) is not None:
            continue  # rejected for its canvas header: nothing to follow
        result = outcome.result
        if outcome.kind is Kind.SUCCESS and result is not None:
            after_success(app, plan, result.id, result.root_id or result.id, header, result.result)
        elif result is not None:  # failed for good, or rejected (a FAILURE stored for its readable id)
            root = result.root_id or (record.header(H_ROOT_ID) or b"").decode(errors="replace") or result.id
            after_failure(app, plan, result.id, root, header, result.error or "", result.traceback)
        elif (raw_id := record.header(H_ID)) is not None:  # rejected: no result record
            task_id = raw_id.decode(errors="replace")
            root = (record.header(H_ROOT_ID) or raw_id).decode(errors="replace")
            after_failure(app, plan, task_id, root, header, f"{outcome.error_type}: {outcome.error_message}", None)
    return plan
