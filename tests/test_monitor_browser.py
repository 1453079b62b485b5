"""The monitor as a person uses it: headless Chromium (Debian's ``chromium``, driven by Playwright) opens
every page while a real worker runs a workload, filters tasks, opens a task's tree, clicks replay on a
dead letter and sees it succeed, and sees a new task appear without reloading.

Screenshots of each page go to ``.cache/screenshots/`` (git-ignored); with ``TASKQ_UPDATE_SCREENSHOTS=1``
they are also copied to ``docs/screenshots/`` for the README.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from taskq.dlq import dead_letters
from tests.monitor_support import free_port, running_monitor, served
from tests.support import ROOT, local_app_module, wait_until, worker_thread

pytestmark = pytest.mark.slow
APP = "tests.apps.monitorapp"
CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / ".cache" / "screenshots"
DOCS_SHOTS = ROOT / "docs" / "screenshots"
README_SHOTS = {"overview", "tasks", "task", "topics", "dead_letters"}  # the ones the README shows
WORKER = "ui-worker"
REBOUND = "rebound.test"  # a host name whose DNS points at 127.0.0.1, as after DNS rebinding


@pytest.fixture
def mod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    module = local_app_module(APP, str(tmp_path / "q.db"), monkeypatch, MONITOR_MARKER=str(tmp_path / "ready"),
                              TASKQ_EVENTS_INCLUDE_ARGS="true")
    yield module
    module.app.close()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        import sys

        sys.path.insert(0, str(ROOT / "scripts"))
        from services import ensure_chromium

        ensure_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                          "--disable-background-networking", "--no-first-run",
                                          "--disable-extensions", "--disable-sync",
                                    f"--host-resolver-rules=MAP {REBOUND} 127.0.0.1"])
        yield browser
        browser.close()


def shot(page: Any, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("TASKQ_UPDATE_SCREENSHOTS") == "1" and name in README_SHOTS:
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS_SHOTS / path.name)
    return path


def test_every_page_in_a_browser(mod: ModuleType, chromium: Any, tmp_path: Path) -> None:
    app = mod.app
    consumed = [name for name in app.tasks if name != mod.backlog.name]
    with running_monitor(app, lag_threshold=5) as monitor, served(monitor) as base, \
            worker_thread(app, tasks=consumed, concurrency=4, name=WORKER):
        users = ["ann", "bob", "cy"]
        for i in range(30):
            mod.work.delay(i, user=users[i % 3], sleep=0.02)
        root = mod.fan_out.delay(3, user="ann")
        dead = [mod.fragile.delay(i, user="bob") for i in range(2)]
        wait_until(lambda: len(monitor.state.family(root.id)) == 6, 60, "the fan_out tree in the monitor")
        wait_until(lambda: all((t := monitor.state.task(r.id)) and t.state == "FAILURE" for r in dead), 60,
                   "the dead tasks in the monitor")
        # a backlog for the lag alert: tasks of a topic no worker consumes
        waiting_ids = [mod.backlog.delay(i, user="lag").id for i in range(8)]
        app.flush()
        wait_until(lambda: monitor.sampler.sample() and monitor.lag_alerts(), 30, "the lag alert")

        seen_hosts: set[str] = set()
        context = chromium.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        page.on("request", lambda req: seen_hosts.add(req.url.split("/")[2]))

        # Overview: charts, workers alive, lag alert
        page.goto(base + "/")
        page.wait_for_selector("svg.chart polyline")
        assert "Lag alert" in page.inner_text(".alert") and app.group in page.inner_text(".alert")
        wait_until(lambda: (page.reload() or True) and page.inner_text("#workers-alive").strip() == "1", 30,
                   "the overview to show one worker alive", interval=0.5)
        assert page.locator("svg.chart").count() == 2
        assert page.locator("polyline[data-series=SUCCESS]").count() == 1
        shot(page, "overview")

        # Tasks: filter by state and key, find by id
        page.goto(base + "/tasks")
        assert page.locator("tr.task-row").count() >= 36
        page.select_option("select[name=state]", "FAILURE")
        page.click("#filters button[type=submit]:has-text('Filter')")
        page.wait_for_url("**state=FAILURE**")
        states = page.locator("tr.task-row").evaluate_all("rows => rows.map(r => r.dataset.state)")
        assert states == ["FAILURE", "FAILURE"], states
        page.goto(base + "/tasks")
        page.fill("input[name=key]", "cy")
        page.select_option("select[name=name]", mod.work.name)
        page.click("#filters button[type=submit]:has-text('Filter')")
        page.wait_for_url("**key=cy**")
        assert page.locator("tr.task-row").count() == 10
        shot(page, "tasks")
        page.fill("input[name=id]", root.id)
        page.click("button[name=go]")
        page.wait_for_url(f"**/tasks/{root.id}")

        # Task detail: the tree of fan_out (4 children, one with a grandchild), location, result
        tree = page.locator("#tree")
        assert tree.locator("li").count() == 6
        assert tree.locator(":scope > li > ul > li").count() == 4
        assert page.inner_text("#task-state") == "SUCCESS"
        assert mod.fan_out.topic in page.inner_text("main")
        assert 'kwargs = {"user": "ann"}' in page.inner_text("#arguments")  # events_include_args
        shot(page, "task")
        tree.locator(f"a:has-text('{mod.relay.name}')").click()
        page.wait_for_selector("#task-id")
        assert "root / parent" in page.inner_text("main")

        # Workers
        page.goto(base + "/workers")
        assert WORKER in page.inner_text("#workers")
        shot(page, "workers")

        # Topics: partitions, offsets, lag; a lagging partition links to the tasks waiting in it
        page.goto(base + "/topics")
        page.wait_for_selector(f"[id='{mod.work.topic}'] table.partitions", state="attached")
        assert page.locator("table.partitions").count() >= 4
        shot(page, "topics")
        page.locator(f"[id='{mod.backlog.topic}'] a.waiting").click()
        page.wait_for_selector("tr.waiting-row")
        assert sorted(page.locator("tr.waiting-row td.mono").all_inner_texts()) == sorted(waiting_ids)
        shot(page, "waiting")

        # Dead letters: browse, inspect, replay one and see it succeed
        page.goto(base + "/dead-letters")
        page.click(f"#dlq-topics a[href='/dead-letters/{mod.fragile.topic}']")
        page.wait_for_selector("tr.letter")
        assert page.locator("tr.letter").count() == 2
        page.locator("details summary").first.click()
        assert "error-type" in page.inner_text("#letters")
        shot(page, "dead_letters")
        (tmp_path / "ready").touch()
        target = dead[0].id
        page.click(f"button.replay[data-id='{target}']")
        page.wait_for_selector("#replayed")
        assert target[:12] in page.inner_text("#replayed")
        assert app.AsyncResult(target).get(timeout=60) == 0
        page.goto(f"{base}/tasks/{target}")
        wait_until(lambda: (page.reload() or True) and page.inner_text("#task-state") == "SUCCESS", 30,
                   "the replayed task to show SUCCESS", interval=0.5)
        assert page.inner_text("#result").strip() == "0"
        shot(page, "replayed")

        # Live: a task sent now appears on the open task list without a reload
        page.goto(base + "/tasks")
        page.wait_for_selector("#live.on")  # a polled script is refused by the page's CSP
        fresh = mod.work.delay(99, user="live")
        page.wait_for_selector(f"a[href='/tasks/{fresh.id}']", timeout=30_000)
        assert page.evaluate("performance.getEntriesByType('navigation').length") == 1

        context.close()
        assert seen_hosts == {base.split("/")[2]}, f"the pages fetched from elsewhere: {seen_hosts}"
    print(f"\nMONITOR screenshots in {SHOTS}: " + ", ".join(sorted(p.name for p in SHOTS.glob('*.png'))))


@contextlib.contextmanager
def page_of_another_origin(tmp_path: Path, html: str) -> Iterator[str]:
    """Serve ``html`` from another port of 127.0.0.1 (another origin, the same site); yields its URL."""
    www = tmp_path / "www"
    www.mkdir(exist_ok=True)
    (www / "page.html").write_text(html)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", free_port()), functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/page.html"
    finally:
        server.shutdown()


@pytest.mark.parametrize("token", [None, "s3cret"])
def test_a_page_of_another_origin_cannot_replay_dead_letters(mod: ModuleType, chromium: Any, tmp_path: Path,
                                                            token: str | None) -> None:
    """A page served from another port of the same host (same site, so even a SameSite=Strict cookie goes
    along) posts the replay form to the monitor: refused, nothing is replayed. The monitor's own button
    still replays."""
    app = mod.app
    with running_monitor(app, token=token) as monitor, served(monitor) as base, \
            worker_thread(app, tasks=[mod.fragile.name], concurrency=1, name=WORKER), contextlib.ExitStack() as stack:
        dead = mod.fragile.delay(1, user="bob")
        wait_until(lambda: len(dead_letters(app, mod.fragile.name)) == 1, 60, "the dead letter")

        def sent() -> int:
            return sum(hi for _lo, hi in app.broker.watermarks(mod.fragile.topic).values())
        before = sent()
        attack = (f'<form id="f" method="post" action="{base}/dead-letters/{mod.fragile.name}/replay" target="out">'
                  '<input name="all" value="1"></form><iframe name="out"></iframe>'
                  "<script>document.getElementById('f').submit()</script>")
        other = stack.enter_context(page_of_another_origin(tmp_path, attack))
        context = chromium.new_context()
        page = context.new_page()
        try:
            if token:  # the user has opened the monitor: its cookie is set
                page.goto(f"{base}/?token={token}")
            with page.expect_response(lambda r: r.request.method == "POST") as posted:
                page.goto(other)
            assert posted.value.status == 403, posted.value.status
            time.sleep(1)
            assert sent() == before, "the other origin's form replayed the dead letter"

            page.goto(f"{base}/dead-letters/{mod.fragile.name}")
            page.click(f"button.replay[data-id='{dead.id}']")
            page.wait_for_selector("#replayed")
            assert sent() == before + 1
        finally:
            context.close()


@pytest.mark.parametrize("token", [None, "s3cret"])
def test_a_host_name_pointed_at_loopback_reads_nothing(mod: ModuleType, chromium: Any, token: str | None) -> None:
    """DNS rebinding: a page of rebound.test, whose name now resolves to 127.0.0.1, is same-origin with the monitor
    on rebound.test:<port>. Without a token the monitor refuses requests for host names; with one, the page has no
    cookie and no token. Opened by address, the monitor answers as before."""
    with running_monitor(mod.app, token=token) as monitor, served(monitor) as base:
        port = base.rsplit(":", 1)[1]
        context = chromium.new_context()
        page = context.new_page()
        try:
            response = page.goto(f"http://{REBOUND}:{port}/")
            assert response is not None and response.status in (401, 403), response and response.status
            status = page.evaluate("""async () => (await fetch('/api/dead-letters/x/replay', {method: 'POST',
                headers: {'Content-Type': 'application/json'}, body: '{"all": true}'})).status""")
            assert status in (401, 403), status
            for origin in (base, base.replace("127.0.0.1", "localhost")):
                response = page.goto(f"{origin}/?token={token}" if token else f"{origin}/")
                assert response is not None and response.status == 200, (origin, response and response.status)
                assert page.inner_text("#main")
        finally:
            context.close()


def test_a_page_of_another_origin_cannot_frame_the_monitor(mod: ModuleType, chromium: Any, tmp_path: Path) -> None:
    """Clickjacking: a page of another origin frames the dead-letter page (its POST would then be same-origin) and
    gets the user to click "Replay all". The browser refuses to show the monitor in the frame."""
    app = mod.app
    with running_monitor(app) as monitor, served(monitor) as base, \
            worker_thread(app, tasks=[mod.fragile.name], concurrency=1, name=WORKER), contextlib.ExitStack() as stack:
        mod.fragile.delay(1, user="bob")
        wait_until(lambda: len(dead_letters(app, mod.fragile.name)) == 1, 60, "the dead letter")
        before = sum(hi for _lo, hi in app.broker.watermarks(mod.fragile.topic).values())
        frame = f'<iframe src="{base}/dead-letters/{mod.fragile.name}" width="800" height="600"></iframe>'
        other = stack.enter_context(page_of_another_origin(tmp_path, frame))
        context = chromium.new_context()
        page = context.new_page()
        try:
            with page.expect_response(lambda r: r.url.startswith(base)) as framed:
                page.goto(other)
            page.wait_for_timeout(500)
            buttons = sum(f.locator("#replay-all").count() for f in page.frames if f is not page.main_frame)
            assert buttons == 0, "the monitor's page is shown inside another origin's frame"
            assert "frame-ancestors 'none'" in (framed.value.headers.get("content-security-policy") or "")
            assert sum(hi for _lo, hi in app.broker.watermarks(mod.fragile.topic).values()) == before
            page.goto(f"{base}/dead-letters/{mod.fragile.name}")  # on its own, the page works as before
            assert page.locator("#replay-all").count() == 1
        finally:
            context.close()


def test_markup_in_events_is_shown_never_run(mod: ModuleType, chromium: Any) -> None:
    """Task names, keys, workers, errors, arguments and results come from anyone who writes the events topic:
    HTML in them is shown as text on every page and after a live update, and runs nothing."""
    from tests.monitor_support import produce_events, task_event

    evil = '<img src=x onerror="window.pwned=(window.pwned||0)+1">'
    ts = time.time()
    events = [task_event("task-failed", "evil-1", ts, name=evil, key=evil, worker=evil, topic=evil, exc_type=evil,
                         exc_message=evil, args=[evil], kwargs={"k": evil}, result=evil),
              {"v": 1, "type": "worker-online", "ts": ts, "worker": evil, "hostname": evil, "pool": evil,
               "concurrency": 1, "partitions": [[evil, 0]], "freq": 2.0}]
    with running_monitor(mod.app) as monitor, served(monitor) as base:
        produce_events(mod.app, events)
        wait_until(lambda: monitor.state.task("evil-1") is not None and monitor.state.workers(), 30, "the events")
        context = chromium.new_context()
        page = context.new_page()
        try:
            for path in ("/", "/tasks", "/tasks/evil-1", "/workers", f"/tasks?worker={evil}"):
                page.goto(base + path)
                page.wait_for_load_state("load")
                assert evil in page.inner_text("body"), path
                assert page.locator("img").count() == 0 and page.evaluate("window.pwned") is None, path
            page.goto(base + "/tasks")
            page.wait_for_selector("#live.on")  # a polled script is refused by the page's CSP
            produce_events(mod.app, [task_event("task-sent", "evil-2", time.time(), name=evil, root_id="evil-2")])
            page.wait_for_selector("a[href='/tasks/evil-2']", timeout=30_000)
            page.wait_for_timeout(300)
            assert page.locator("img").count() == 0 and page.evaluate("window.pwned") is None
        finally:
            context.close()
