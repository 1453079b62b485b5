"""The monitor as an operator uses it on Kafka and Redis: headless Chromium drives its pages while a real worker
runs real tasks (the embedded-broker walk through every page is ``test_monitor_browser.py``)."""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from taskq.dlq import dead_letters
from tests.monitor_support import running_monitor, served
from tests.support import wait_until, worker_thread
from tests.test_monitor_browser import chromium  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow
APP = "tests.apps.monitorapp"


@pytest.fixture
def mod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kafka_url: str, redis_url: str,
        unique: str) -> Iterator[ModuleType]:
    """The monitor's test app on Kafka and Redis, with topics and a group of its own."""
    for name, value in {"TASKQ_BROKER_URL": kafka_url, "TASKQ_RESULT_BACKEND": redis_url,
                        "TASKQ_TOPIC_PREFIX": f"ui{unique}.", "TASKQ_GROUP": f"ui{unique}",
                        "TASKQ_DEFAULT_PARTITIONS": "2", "TASKQ_EVENTS_INCLUDE_ARGS": "true",
                        "MONITOR_MARKER": str(tmp_path / "ready")}.items():
        monkeypatch.setenv(name, value)
    module = importlib.reload(importlib.import_module(APP))
    yield module
    module.app.close()


def sent_to(app: Any, topic: str) -> int:
    return sum(hi for _lo, hi in app.broker.watermarks(topic).values())


def test_replaying_a_task_that_died_twice_sends_it_once(mod: ModuleType, chromium: Any) -> None:  # noqa: F811
    """A replayed task that dies again leaves a second letter with its id. The Replay button of either letter,
    and Replay all, send the task once: not once per letter (two runs of one id, and twice the letters after)."""
    app, fragile = mod.app, mod.fragile
    with running_monitor(app) as monitor, served(monitor) as base, \
            worker_thread(app, tasks=[fragile.name], concurrency=2):
        died = fragile.delay(1, user="bob").id
        other = fragile.delay(2, user="bob").id
        wait_until(lambda: len(dead_letters(app, fragile.name)) == 2, 60, "two dead letters")
        context = chromium.new_context()
        page = context.new_page()
        try:
            page.goto(f"{base}/dead-letters/{fragile.name}")
            page.click(f"button.replay[data-id='{died}']")
            page.wait_for_selector("#replayed")
            wait_until(lambda: len(dead_letters(app, fragile.name)) == 3, 60, "the replayed task to die again")

            before = sent_to(app, fragile.topic)
            page.goto(f"{base}/dead-letters/{fragile.name}")
            assert page.locator(f"button.replay[data-id='{died}']").count() == 2
            page.locator(f"button.replay[data-id='{died}']").last.click()
            page.wait_for_selector("#replayed")
            assert page.inner_text("#replayed").startswith("Replayed 1 task:"), page.inner_text("#replayed")
            assert sent_to(app, fragile.topic) == before + 1

            wait_until(lambda: len(dead_letters(app, fragile.name)) == 4, 60, "the replayed task to die again")
            before = sent_to(app, fragile.topic)
            page.goto(f"{base}/dead-letters/{fragile.name}")
            page.click("#replay-all")
            page.wait_for_selector("#replayed")
            assert page.inner_text("#replayed").startswith("Replayed 2 tasks:"), page.inner_text("#replayed")
            assert sent_to(app, fragile.topic) == before + 2, "one message per task id"
            assert {died[:12], other[:12]} == set(page.locator("#replayed a").all_inner_texts())
        finally:
            context.close()


def test_lag_on_the_pages_is_what_kafka_says(mod: ModuleType, chromium: Any) -> None:  # noqa: F811
    """Tasks sent with a countdown pass through a delay tier (read by the forwarders' group) and a revocation sits
    in the revocations topic (read by every worker outside any group). Once all ran, no topic lags: the monitor's
    lag agrees with ``taskq lag`` and with the committed offsets of the group that reads each topic."""
    from taskq.inspect import lag
    from taskq.revocations import revoked_topic
    from taskq.topics import delay_group

    app, work = mod.app, mod.work
    with running_monitor(app) as monitor, served(monitor) as base, \
            worker_thread(app, tasks=[work.name], concurrency=2):
        results = [work.apply_async((i,), {"user": "d"}, countdown=1) for i in range(4)]
        assert [r.get(timeout=60) for r in results] == [0, 2, 4, 6]
        app.AsyncResult(f"never-sent-{uuid.uuid4().hex}").revoke()  # an id no other test uses

        def settled() -> bool:
            topics = {t.name: t for t in monitor.sampler.sample()}
            return revoked_topic(app) in topics and all(t.lag == 0 for t in topics.values())
        wait_until(settled, 30, "no lag on any topic", interval=0.5)
        topics = {t.name: t for t in monitor.sampler.topics}
        tiers = [t for t in topics.values() if t.kind == "delay"]
        assert tiers and {t.group for t in tiers} == {delay_group(app.group)}
        assert sum(t.messages for t in tiers) == 4
        assert topics[revoked_topic(app)].kind != "task" and topics[revoked_topic(app)].group is None
        assert monitor.sampler.group_lag() == {app.group: lag(app)["total"]} == {app.group: 0}

        context = chromium.new_context()
        page = context.new_page()
        try:
            page.goto(f"{base}/topics")
            lags = page.locator("#topic-summary tr.lagging").all_inner_texts()
            assert lags == [], lags
        finally:
            context.close()



def test_arguments_in_any_language_read_as_written(mod: ModuleType, chromium: Any) -> None:  # noqa: F811
    """Arguments and results are shown as the user wrote them, not as \\u escapes of every non-ASCII letter."""
    app, work = mod.app, mod.work
    with running_monitor(app) as monitor, served(monitor) as base, \
            worker_thread(app, tasks=[work.name], concurrency=2):
        res = work.delay(3, user="ünï çødé")
        assert res.get(timeout=60) == 6
        wait_until(lambda: (t := monitor.state.task(res.id)) and t.state == "SUCCESS", 30, "the task in the monitor")
        context = chromium.new_context()
        page = context.new_page()
        try:
            page.goto(f"{base}/tasks/{res.id}")
            assert 'kwargs = {"user": "ünï çødé"}' in page.inner_text("#arguments"), page.inner_text("#arguments")
        finally:
            context.close()


@pytest.mark.parametrize("width", [1280, 390])
def test_long_values_and_a_narrow_window_keep_the_pages_in_the_window(mod: ModuleType, chromium: Any,  # noqa: F811
                                                                      width: int) -> None:
    """A key of 400 characters without a space wraps on the task list and the task's page (the page grew to
    thousands of pixels, the key's cell running over the column beside it), and on a phone's width the overview and
    the task's page fit the screen."""
    app, work = mod.app, mod.work
    long_key = "k" * 400
    with running_monitor(app) as monitor, served(monitor) as base, \
            worker_thread(app, tasks=[work.name], concurrency=2):
        res = work.delay(4, user=long_key)
        assert res.get(timeout=60) == 8
        wait_until(lambda: (t := monitor.state.task(res.id)) and t.state == "SUCCESS", 30, "the task in the monitor")
        context = chromium.new_context(viewport={"width": width, "height": 900})
        page = context.new_page()
        try:
            paths = [f"/tasks/{res.id}", "/"] + (["/tasks"] if width > 1000 else [])  # 9 columns need a screen
            for path in paths:
                page.goto(base + path)
                assert long_key in page.inner_text("main") or path == "/"
                wide = page.evaluate("document.documentElement.scrollWidth")
                assert wide <= width, f"{path} is {wide} px wide in a window of {width}"
        finally:
            context.close()


def test_live_updates_keep_the_keyboard_focus_and_the_selection(mod: ModuleType, chromium: Any) -> None:  # noqa: F811
    """Heartbeats and lag samples arrive every 2 s and each refreshed the page: a keyboard user's focus went back to
    the top of the page and text being selected to copy (an id, a traceback) was lost within a second, even where
    nothing on the page had changed. Now the focused link stays focused, a selection holds the refresh back, and
    new tasks still appear once it is let go."""
    app, work = mod.app, mod.work
    with running_monitor(app, lag_interval=0.5) as monitor, served(monitor) as base, \
            worker_thread(app, tasks=[work.name], concurrency=2):
        first = work.delay(1, user="ann")
        assert first.get(timeout=60) == 2
        wait_until(lambda: (t := monitor.state.task(first.id)) and t.state == "SUCCESS", 30, "the task in the monitor")
        context = chromium.new_context()
        page = context.new_page()
        try:
            page.goto(f"{base}/tasks")
            page.wait_for_selector("#live.on")
            page.focus(f"#tasks a[href='/tasks/{first.id}']")
            page.keyboard.press("Tab")  # to the next link of the row, as a keyboard user moves
            focused = page.evaluate("document.activeElement.outerHTML")
            assert focused.startswith("<a href=\"/topics#"), focused
            second = work.delay(2, user="bob")  # the list changes: the page is refreshed
            page.wait_for_selector(f"a[href='/tasks/{second.id}']", timeout=30_000)
            page.wait_for_timeout(2500)
            assert page.evaluate("document.activeElement.outerHTML") == focused

            page.evaluate("""id => { const cell = document.querySelector(`a[href='/tasks/${id}']`);
                                     getSelection().selectAllChildren(cell); }""", first.id)
            third = work.delay(3, user="cy")
            assert third.get(timeout=60) == 6
            page.wait_for_timeout(2500)
            assert page.evaluate("getSelection().toString()") == first.id[:12]
            assert page.locator(f"a[href='/tasks/{third.id}']").count() == 0, "refreshed under the selection"
            page.evaluate("getSelection().removeAllRanges()")
            page.wait_for_selector(f"a[href='/tasks/{third.id}']", timeout=30_000)
        finally:
            context.close()


def test_replay_all_says_how_many_tasks_it_sends(mod: ModuleType, chromium: Any) -> None:  # noqa: F811
    """Two letters of one task (it died again after a replay) and one of another: "Replay all" sends two tasks and
    says so before it is clicked, not the number of letters."""
    app, fragile = mod.app, mod.fragile
    with running_monitor(app) as monitor, served(monitor) as base, \
            worker_thread(app, tasks=[fragile.name], concurrency=2):
        twice = fragile.delay(1, user="bob").id
        fragile.delay(2, user="bob")
        wait_until(lambda: len(dead_letters(app, fragile.name)) == 2, 60, "two dead letters")
        from taskq.dlq import replay
        replay(app, [d for d in dead_letters(app, fragile.name) if d.id == twice])
        wait_until(lambda: len(dead_letters(app, fragile.name)) == 3, 60, "the replayed task to die again")
        context = chromium.new_context()
        page = context.new_page()
        try:
            page.goto(f"{base}/dead-letters/{fragile.name}")
            assert page.locator("tr.letter").count() == 3
            assert page.inner_text("#replay-all") == "Replay all 2 tasks"
        finally:
            context.close()


def test_a_link_to_something_gone_is_a_page_with_the_menu(mod: ModuleType, chromium: Any) -> None:  # noqa: F811
    """A task whose events and result expired (a dead letter's link), a dead-letter list of a task never seen, a
    mistyped address: the browser shows the reason on a page with the menu, with the error status; the API still
    answers JSON."""
    import httpx

    with running_monitor(mod.app) as monitor, served(monitor) as base:
        context = chromium.new_context()
        page = context.new_page()
        try:
            for path, words in [("/tasks/0123456789abcdef", "no task '0123456789abcdef'"),
                                ("/dead-letters/no.such.task", "unknown task 'no.such.task'"),
                                ("/tasks?since=yesterday", "bad time 'yesterday'"), ("/nope", "Not Found")]:
                response = page.goto(base + path)
                assert response is not None and response.status in (404, 422), (path, response and response.status)
                assert words in page.inner_text("#main"), (path, page.content()[:300])
                assert page.locator("header nav a[href='/tasks']").count() == 1, path
            api = httpx.get(f"{base}/api/tasks/0123456789abcdef", headers={"Accept": "text/html"})
            assert api.status_code == 404 and "no task" in api.json()["detail"]
        finally:
            context.close()
