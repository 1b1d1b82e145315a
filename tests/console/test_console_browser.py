"""The console in headless Chromium (Debian's package, driven by Playwright) against a real
redis-server, real workers and the `agentpool console` command.

Screenshots of each page go to .test-output/console/.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from console_helpers import TOKEN, worker_env

from agentpool.cli.views import iso_ms
from agentpool.client import SyncClient
from agentpool.console.app import ConsoleConfig, build_app
from agentpool.console.sources import Sources
from agentpool.protocol import TaskQueue, WorkerInfo
from agentpool.redis_server import RedisServer, free_port

try:
    from playwright.sync_api import (
        Browser,
        Dialog,
        Error,
        Locator,
        Page,
        Route,
        expect,
        sync_playwright,
    )
except ImportError:  # pragma: no cover - setup installs it
    pytest.fail("the browser tests need Playwright: run `make setup`", pytrace=False)

CHROMIUM = os.environ.get("AGENTPOOL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
SHOTS = Path(__file__).resolve().parents[2] / ".test-output" / "console"
LIVE = 20_000
"""ms a page gets to show a change by itself (refreshes are 1-2 s apart)."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not (shutil.which(CHROMIUM) or Path(CHROMIUM).exists()):
        pytest.fail(f"no Chromium at {CHROMIUM}: `make setup` installs Debian's chromium "
                    "package", pytrace=False)
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        except Error as exc:
            pytest.fail(f"Chromium at {CHROMIUM} did not start: {exc.message.splitlines()[0]}",
                        pytrace=False)
        yield browser
        browser.close()


@dataclass
class Console:
    url: str
    queue: str
    redis_url: str
    tmp: Path

    def submit(self, payload: object, **options: object) -> str:
        with SyncClient.from_url(self.redis_url) as client:
            return client.queue(self.queue).submit(payload, **options)  # type: ignore[arg-type]

    def state(self, task_id: str) -> str | None:
        with SyncClient.from_url(self.redis_url) as client:
            info = client.queue(self.queue).get(task_id)
        return None if info is None else info.state


def start_console(redis_url: str, queue: str, port: int, log: Path,
                  *options: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTPOOL_")}
    env["AGENTPOOL_CONSOLE_TOKEN"] = TOKEN
    binary = Path(sys.executable).with_name("agentpool")
    return subprocess.Popen(
        [str(binary), "console", "--redis-url", redis_url, "--port", str(port),
         "--redis-only", "--queue", queue, *options],
        env=env, stdout=subprocess.PIPE, stderr=log.open("ab"), text=True)


def console_url(process: subprocess.Popen[str], log: Path) -> str:
    """The URL the console printed (and not the Redis URL)."""
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("agentpool console: http://127.0.0.1:"), line + log.read_text()
    assert "redis://" not in line
    return line.split()[2]


@pytest.fixture(scope="module")
def console(redis_server: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """`agentpool console` with write actions (TOKEN) on one queue, and two real workers."""
    assert isinstance(redis_server, RedisServer)
    tmp = tmp_path_factory.mktemp("console")
    queue = f"console-{uuid.uuid4().hex[:8]}"
    process = start_console(redis_server.url, queue, 0, tmp / "console.log", "--allow-writes")
    workers = []
    for pod in ("pod-a", "pod-b"):
        with (tmp / f"{pod}.log").open("wb") as log:
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "agentpool_worker.main"],
                env=worker_env(redis_server.url, queue, pod), stdin=subprocess.DEVNULL,
                stdout=log, stderr=log))
    try:
        url = console_url(process, tmp / "console.log")
        yield Console(url, queue, redis_server.url, tmp)
    finally:
        for child in [process, *workers]:
            child.terminate()
        for child in [process, *workers]:
            child.wait(timeout=20)
    log = (tmp / "console.log").read_text()
    assert redis_server.url not in log and "redis://" not in log


@dataclass
class Dialogs:
    """The dialogs a page opens (confirm): each answered as the test said it would be, in
    turn; one it did not expect is dismissed and fails the test."""

    answers: list[bool] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def answer(self, *accept: bool) -> None:
        self.answers.extend(accept)

    def handle(self, dialog: Dialog) -> None:
        if not self.answers:
            self.unexpected.append(dialog.message)
            dialog.dismiss()
            return
        self.seen.append(dialog.message)
        if self.answers.pop(0):
            dialog.accept()
        else:
            dialog.dismiss()


@pytest.fixture
def dialogs() -> Dialogs:
    return Dialogs()


@pytest.fixture
def page(browser: Browser, dialogs: Dialogs) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.on("dialog", dialogs.handle)
    yield page
    context.close()
    assert dialogs.unexpected == [], f"the page opened dialogs: {dialogs.unexpected}"


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_fleet_page_lists_the_pool_and_links_its_pages(console: Console, page: Page) -> None:
    page.goto(console.url)
    row = page.locator(f'#fleet tr[data-pool="{console.queue}"]')
    expect(row).to_be_visible(timeout=LIVE)
    expect(row.locator("td").nth(6)).to_have_text("2", timeout=LIVE)  # live workers
    expect(page.locator("#live")).to_have_text("live")
    shot(page, "fleet")
    row.get_by_role("link", name=console.queue, exact=True).first.click()
    expect(page).to_have_url(f"{console.url}pools/-/{console.queue}")
    expect(page.locator("#workers tbody tr")).to_have_count(2, timeout=LIVE)
    expect(page.locator("svg.chart")).to_be_visible()
    expect(page.locator("main")).not_to_contain_text("null")
    shot(page, "pool")


def test_a_submitted_task_appears_and_turns_succeeded_without_a_reload(
    console: Console, page: Page
) -> None:
    gate = console.tmp / f"gate-{uuid.uuid4().hex[:6]}"
    page.goto(f"{console.url}queues/{console.queue}/tasks?state=running")
    expect(page.locator("#task-total")).to_be_visible(timeout=LIVE)
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    task_id = console.submit({"gate": str(gate)})
    row = page.locator(f'#tasks tr[data-task="{task_id}"]')
    expect(row).to_be_visible(timeout=LIVE)
    expect(row.locator(".state")).to_have_text("running")
    shot(page, "tasks")
    assert navigations == []
    row.get_by_role("link", name=task_id).click()
    expect(page.locator("#task-state")).to_have_text("running", timeout=LIVE)
    navigations.clear()
    gate.touch()
    expect(page.locator("#task-state")).to_have_text("succeeded", timeout=LIVE)
    expect(page.locator("#task-result")).to_contain_text('"gate": "opened"')
    assert navigations == []
    shot(page, "task")


def test_a_running_task_streams_its_events_and_progress_without_a_reload(
    console: Console, page: Page
) -> None:
    gates = console.tmp / f"steps-{uuid.uuid4().hex[:6]}"
    note = '<script>alert(3)</script><img src=x onerror="alert(4)">'
    task_id = console.submit({"steps": 3, "gates": str(gates), "note": note})
    page.goto(f"{console.url}queues/{console.queue}/tasks?state=running")
    row = page.locator(f'#tasks tr[data-task="{task_id}"]')
    expect(row).to_be_visible(timeout=LIVE)
    (gates.parent / f"{gates.name}-1").touch()
    expect(row).to_contain_text("33% step 1 of 3", timeout=LIVE)  # the list shows progress
    shot(page, "tasks-progress")
    row.get_by_role("link", name=task_id).click()
    events = page.locator("#events tbody tr")
    expect(events).to_have_count(2, timeout=LIVE)
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    bar = page.locator("#task-progress progress")
    for step in (2, 3):
        (gates.parent / f"{gates.name}-{step}").touch()
        expect(page.locator("#task-progress")).to_contain_text(
            f"{round(100 * step / 3)}% step {step} of 3", timeout=LIVE)
        assert abs(float(bar.evaluate("p => p.value")) - step / 3) < 0.001
        if step == 2:
            expect(events).to_have_count(4)
            expect(page.locator("#task-checkpoint")).to_contain_text('"step": 2', timeout=LIVE)
            shot(page, "task-events")
    expect(page.locator("#task-state")).to_have_text("succeeded", timeout=LIVE)
    expect(events).to_have_count(7, timeout=LIVE)  # the last step's two and the final one
    shown = [[cell.strip() for cell in row.split("\t")[1:]] for row in events.evaluate_all(
        "rows => rows.map(r => [...r.cells].map(c => c.textContent).join('\\t'))")]
    expected = []
    for step in (1, 2, 3):
        expected += [["1", "note", json.dumps({"step": step, "text": note},
                                             separators=(",", ":"))],
                     ["1", "progress", f"{round(100 * step / 3)}% step {step} of 3"]]
    assert shown == [*expected, ["1", "final", '{"state":"succeeded"}']]
    assert page.locator("main script, main img").count() == 0
    assert navigations == []
    shot(page, "task-done")


class InProcessConsole:
    """The console's app served from a thread of this process, so a test can stop it and
    start it again on the same port in milliseconds (the browser sees a console restart)."""

    def __init__(self, redis_url: str, queue: str) -> None:
        self.redis_url, self.queue = redis_url, queue
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.redis = aioredis.Redis.from_url(redis_url)
        self.runner: web.AppRunner | None = None

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=20)

    def start(self) -> None:
        async def serve() -> None:
            sources = Sources(self.redis, queues=[self.queue])
            self.runner = web.AppRunner(build_app(sources, ConsoleConfig()))
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

        self.call(serve())

    def stop(self) -> None:
        if self.runner is not None:
            self.call(self.runner.cleanup())
            self.runner = None

    def emit(self, task_id: str, numbers: range) -> None:
        """Events as a worker appends them."""

        async def append() -> None:
            for n in numbers:
                await TaskQueue(self.redis, self.queue).emit(task_id, "note", {"n": n},
                                                             attempt=1)

        self.call(append())

    def heartbeat(self, pod: str) -> None:
        """A worker of the queue, as its heartbeat shows it."""
        info = WorkerInfo(pod=pod, instance="i1", concurrency=2)
        self.call(TaskQueue(self.redis, self.queue).heartbeat(info, {}, 30))

    def close(self) -> None:
        self.stop()
        self.call(self.redis.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=20)


@contextlib.contextmanager
def task_page_with_two_events(redis_url: str, page: Page,
                              name: str) -> Iterator[tuple[InProcessConsole, str, Locator]]:
    """A queued task (no worker: it stays so) with two events, its page open on a console of
    this process; yields the console, the task and the page's event rows."""
    queue = f"{name}-{uuid.uuid4().hex[:8]}"
    with SyncClient.from_url(redis_url) as client:
        task_id = client.queue(queue).submit({"n": 0})
    console = InProcessConsole(redis_url, queue)
    try:
        console.emit(task_id, range(0, 2))
        console.start()
        page.goto(f"{console.url}queues/{queue}/tasks/{task_id}")
        rows = page.locator("#events tbody tr")
        expect(rows).to_have_count(2, timeout=LIVE)
        yield console, task_id, rows
    finally:
        console.close()


def test_a_task_page_misses_and_repeats_no_event_across_a_console_restart(
    redis_url: str, page: Page
) -> None:
    with task_page_with_two_events(redis_url, page, "restart") as (console, task_id, rows):
        console.stop()
        expect(page.locator("#live")).to_have_text("reconnecting", timeout=LIVE)
        console.emit(task_id, range(2, 4))  # while the page is cut off
        console.start()
        expect(page.locator("#live")).to_have_text("live", timeout=LIVE)
        expect(rows).to_have_count(4, timeout=LIVE)
        console.emit(task_id, range(4, 5))
        expect(rows).to_have_count(5, timeout=LIVE)
        shown = rows.evaluate_all("rows => rows.map(r => r.cells[3].textContent)")
        assert shown == [json.dumps({"n": n}, separators=(",", ":")) for n in range(5)]


SESSION = web.AppKey("session", aiohttp.ClientSession)


class StandIn:
    """What answers in front of a console (an ingress): it passes each request on, streams
    included, and answers 502 Bad Gateway while the console does not answer."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner: web.AppRunner | None = None
        self.refused = 0

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=20)

    async def forward(self, request: web.Request) -> web.StreamResponse:
        session = request.app[SESSION]
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("accept", "last-event-id", "host")}
        try:
            upstream = await session.get(self.upstream + request.path_qs, headers=headers)
        except aiohttp.ClientConnectionError:
            self.refused += 1
            return web.Response(status=502, text="<html><h1>502 Bad Gateway</h1></html>",
                                content_type="text/html")
        async with upstream:
            response = web.StreamResponse(status=upstream.status, headers={
                k: v for k, v in upstream.headers.items()
                if k.lower() in ("content-type", "cache-control", "content-security-policy")})
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            return response

    def start(self) -> None:
        async def serve() -> None:
            app = web.Application()
            app[SESSION] = aiohttp.ClientSession(auto_decompress=False)
            app.router.add_route("GET", "/{path:.*}", self.forward)

            async def close_session(app: web.Application) -> None:
                await app[SESSION].close()

            app.on_cleanup.append(close_session)
            self.runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=2)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

        self.call(serve())

    def close(self) -> None:
        if self.runner is not None:
            self.call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=20)


def test_a_task_page_behind_a_proxy_keeps_its_data_through_502s_and_reconnects(
    redis_url: str, page: Page
) -> None:
    """The console is restarted behind a stand-in for an ingress that answers 502 meanwhile:
    the page keeps what it showed with the error above it, asks again (sooner, then less
    often), and goes on live once the console answers, missing no event."""
    queue = f"proxied-{uuid.uuid4().hex[:8]}"
    with SyncClient.from_url(redis_url) as client:
        task_id = client.queue(queue).submit({"n": 0})
    console = InProcessConsole(redis_url, queue)
    proxy = StandIn(console.url)
    try:
        console.emit(task_id, range(0, 2))
        console.start()
        proxy.start()
        page.goto(f"{proxy.url}queues/{queue}/tasks/{task_id}")
        rows = page.locator("#events tbody tr")
        expect(rows).to_have_count(2, timeout=LIVE)
        expect(page.locator("#live")).to_have_text("live", timeout=LIVE)
        console.stop()
        error = page.locator("#page-error")
        expect(error).to_contain_text("the console answered 502 Bad Gateway: trying again in",
                                      timeout=LIVE)
        expect(page.locator("#live")).to_have_text("retrying")
        expect(page.locator("#task-state")).to_have_text("queued")  # what it showed stays
        expect(rows).to_have_count(2)
        shot(page, "task-502")
        asked = proxy.refused
        wait_for(lambda: proxy.refused >= asked + 2, page)  # it asks again, not once only
        console.emit(task_id, range(2, 4))
        console.start()
        expect(page.locator("#live")).to_have_text("live", timeout=LIVE)
        expect(rows).to_have_count(4, timeout=LIVE)
        expect(error).to_have_count(0)
        shown = rows.evaluate_all("rows => rows.map(r => r.cells[3].textContent)")
        assert shown == [json.dumps({"n": n}, separators=(",", ":")) for n in range(4)]
    finally:
        console.close()  # ends the streams the stand-in passes on
        proxy.close()


def test_a_chatty_task_page_keeps_its_latest_event_rows_and_says_so(
    redis_url: str, page: Page
) -> None:
    with task_page_with_two_events(redis_url, page, "chatty") as (console, task_id, rows):
        expect(page.locator("#events-dropped")).to_be_hidden()
        console.emit(task_id, range(2, 1010))
        expect(page.locator("#events-dropped")).to_have_text(
            f"The 10 oldest events are not shown: the page keeps the latest 1000 "
            f"(agentpool get {task_id} --follow prints them all).", timeout=LIVE)
        expect(rows).to_have_count(1000)
        console.emit(task_id, range(1010, 1015))
        expect(page.locator("#events-dropped")).to_contain_text("The 15 oldest", timeout=LIVE)
        expect(rows).to_have_count(1000)
        assert rows.first.locator("td").nth(3).inner_text() == '{"n":15}'
        assert rows.last.locator("td").nth(3).inner_text() == '{"n":1014}'


def test_a_page_past_the_last_says_so_and_links_the_last(redis_url: str, page: Page) -> None:
    queue = f"pages-{uuid.uuid4().hex[:8]}"
    with SyncClient.from_url(redis_url) as client:
        client.queue(queue).submit_many([{"n": n} for n in range(51)])
    console = InProcessConsole(redis_url, queue)
    try:
        console.start()
        page.goto(f"{console.url}queues/{queue}/tasks?state=queued&page=999999999")
        note = page.locator("#no-such-page")
        expect(note).to_have_text("There is no page 999999999: the list has 2 pages."
                                  "Go to page 2", timeout=LIVE)
        expect(page.get_by_text("previous")).to_have_count(0)
        note.get_by_role("link").click()
        expect(page.locator(".pager")).to_have_text("← previouspage 2 of 2", timeout=LIVE)
        expect(page.locator("#tasks tbody tr")).to_have_count(1)
    finally:
        console.close()


def set_hidden(page: Page, hidden: bool) -> None:
    """What the browser does when the tab goes to the background or comes back."""
    page.evaluate("""hidden => {
        Object.defineProperty(document, "hidden", { value: hidden, configurable: true });
        document.dispatchEvent(new Event("visibilitychange"));
    }""", hidden)


def test_a_hidden_tab_closes_its_stream_and_resumes_after_the_last_event_it_showed(
    redis_url: str, page: Page
) -> None:
    """A browser opens at most six connections to a host: tabs left in the background must
    not hold them all (the seventh tab, and every button's request, would hang)."""
    with task_page_with_two_events(redis_url, page, "hidden") as (console, task_id, rows):
        expect(page.locator("#live")).to_have_text("live", timeout=LIVE)
        set_hidden(page, True)
        expect(page.locator("#live")).to_have_text("paused")
        assert page.evaluate("stream === null"), "the stream is closed"
        console.emit(task_id, range(2, 4))  # while the tab is hidden
        set_hidden(page, False)
        expect(page.locator("#live")).to_have_text("live", timeout=LIVE)
        expect(rows).to_have_count(4, timeout=LIVE)
        shown = rows.evaluate_all("rows => rows.map(r => r.cells[3].textContent)")
        assert shown == [json.dumps({"n": n}, separators=(",", ":")) for n in range(4)]


def test_a_pool_page_opened_before_its_redis_answers_shows_the_pool_once_it_does(
        page: Page, tmp_path: Path) -> None:
    """The page says Redis does not answer (not that the pool does not exist), keeps asking,
    and shows the pool once Redis answers."""
    queue = f"later-{uuid.uuid4().hex[:8]}"
    server = RedisServer(port=free_port())
    console = InProcessConsole(server.url, queue)
    try:
        console.start()
        page.goto(f"{console.url}pools/-/{queue}")
        expect(page.locator("#page-error")).to_have_text(
            "cannot read Redis: Connection refused", timeout=LIVE)
        server.start()
        expect(page.locator("h1")).to_contain_text(queue, timeout=20_000)
        expect(page.locator("#page-error")).to_have_count(0)
    finally:
        console.close()
        server.close()


@pytest.mark.parametrize(("query", "error"), [
    ("state=finished", "no task state 'finished'"),
    ("page=1000000001", "page must be a whole number from 1 to"),
])
def test_a_page_the_console_refuses_says_why_instead_of_loading(
        console: Console, page: Page, query: str, error: str) -> None:
    page.goto(f"{console.url}queues/{console.queue}/tasks?{query}")
    expect(page.locator("#page-error")).to_contain_text(error, timeout=LIVE)
    expect(page.locator("#live")).to_have_text("stopped")
    expect(page.get_by_text("Loading…")).to_have_count(0)


def dead_page(console: Console, page: Page, task_id: str) -> None:
    page.goto(f"{console.url}queues/{console.queue}/dead")
    expect(page.locator(f'#tasks tr[data-task="{task_id}"]')).to_be_visible(timeout=LIVE)
    page.locator(f'input[data-id="{task_id}"]').check()


def wait_for(check: Callable[[], bool], page: Page) -> None:
    for _ in range(200):
        if check():
            return
        page.wait_for_timeout(100)
    raise AssertionError("condition not met within 20 s")


def test_a_dead_letter_is_requeued_with_the_token_and_refused_without(
    console: Console, page: Page
) -> None:
    fixed = console.tmp / f"fixed-{uuid.uuid4().hex[:6]}"
    task_id = console.submit({"fail_unless": str(fixed), "error": "upstream said no"})
    follow_up = console.submit({"echo": "after the fix"}, after=[task_id])
    wait_for(lambda: console.state(task_id) == "dead", page)

    dead_page(console, page, task_id)
    row = page.locator(f'#tasks tr[data-task="{task_id}"]')
    expect(row).to_contain_text("upstream said no")
    expect(row.locator("td").last).to_have_text("1")
    expect(page.locator("#tasks th").last).to_have_text("After it")
    page.locator("#token").fill("")
    page.locator("#requeue").click()
    expect(page.locator("#action-message")).to_have_text(
        "refused: a valid token is required for write actions")
    page.locator("#token").fill("not-the-token-at-all")
    page.locator("#requeue").click()
    expect(page.locator("#action-message")).to_contain_text("refused")
    assert console.state(task_id) == "dead"
    shot(page, "dead")

    fixed.touch()
    page.locator("#token").fill(TOKEN)
    page.locator("#requeue").click()
    expect(page.locator("#action-message")).to_have_text("requeued: 1, revived: 1")
    wait_for(lambda: console.state(task_id) == "succeeded", page)
    wait_for(lambda: console.state(follow_up) == "succeeded", page)
    expect(page.locator(f'#tasks tr[data-task="{task_id}"]')).to_have_count(0, timeout=LIVE)


def test_a_done_action_leaves_nothing_checked_for_the_next_one(
    console: Console, page: Page
) -> None:
    """A poison task requeued dies again and comes back to the page: the next click, on
    another task, must not take it along unseen."""
    never = console.tmp / f"never-{uuid.uuid4().hex[:6]}"
    fixed = console.tmp / f"fixed-{uuid.uuid4().hex[:6]}"
    poison = console.submit({"fail_unless": str(never), "error": "poison"}, max_attempts=1)
    other = console.submit({"fail_unless": str(fixed), "error": "not yet"}, max_attempts=1)
    wait_for(lambda: console.state(poison) == console.state(other) == "dead", page)
    dead_page(console, page, poison)
    page.locator("#token").fill(TOKEN)
    page.locator("#requeue").click()
    expect(page.locator("#action-message")).to_have_text("requeued: 1, revived: 0")
    wait_for(lambda: console.state(poison) == "dead", page)
    box = page.locator(f'input[data-id="{poison}"]')
    expect(box).to_be_visible(timeout=LIVE)
    expect(box).not_to_be_checked()
    fixed.touch()
    page.locator(f'input[data-id="{other}"]').check()
    page.locator("#requeue").click()
    expect(page.locator("#action-message")).to_have_text("requeued: 1, revived: 0")
    wait_for(lambda: console.state(other) == "succeeded", page)
    assert console.state(poison) == "dead"


def test_the_token_box_keeps_what_is_typed_and_its_focus_while_the_task_changes(
    console: Console, page: Page, dialogs: Dialogs
) -> None:
    gates = console.tmp / f"token-{uuid.uuid4().hex[:6]}"
    task_id = console.submit({"steps": 3, "gates": str(gates)})
    page.goto(f"{console.url}queues/{console.queue}/tasks/{task_id}")
    expect(page.locator("#task-state")).to_have_text("running", timeout=LIVE)
    token = page.locator("#token")
    token.click()
    page.keyboard.type("not-the")
    (gates.parent / f"{gates.name}-1").touch()  # the task changes: the page redraws it
    expect(page.locator("#task-checkpoint")).to_contain_text('"step": 1', timeout=LIVE)
    page.keyboard.type("-token")
    expect(token).to_have_value("not-the-token")
    assert page.evaluate("document.activeElement.id") == "token"
    dialogs.answer(True)
    page.locator("#cancel").click()
    message = page.locator("#action-message")
    expect(message).to_have_text("refused: a valid token is required for write actions")
    (gates.parent / f"{gates.name}-2").touch()
    expect(page.locator("#task-checkpoint")).to_contain_text('"step": 2', timeout=LIVE)
    expect(message).to_have_text("refused: a valid token is required for write actions")
    (gates.parent / f"{gates.name}-3").touch()
    expect(page.locator("#task-state")).to_have_text("succeeded", timeout=LIVE)
    expect(page.locator("#cancel")).to_be_disabled()


def test_a_big_payload_and_result_show_their_start_and_their_size(
    console: Console, page: Page
) -> None:
    task_id = console.submit({"big": "x" * 100_000})  # echoed: the result is as big
    wait_for(lambda: console.state(task_id) == "succeeded", page)
    page.goto(f"{console.url}queues/{console.queue}/tasks/{task_id}")
    expect(page.locator("#task-state")).to_have_text("succeeded", timeout=LIVE)
    for shown in ("payload", "result"):
        expect(page.locator(f"#task-{shown}-cut")).to_have_text(
            "the first 65536 characters of 100010 bytes")
        expect(page.locator(f"#task-{shown}")).to_have_text('{"big":"' + "x" * 65528)
    expect(page.locator("#task-error-cut")).to_have_count(0)


def test_a_task_that_expires_shows_when(console: Console, page: Page) -> None:
    task_id = console.submit({"echo": "soon"}, expires=3600)
    wait_for(lambda: console.state(task_id) == "succeeded", page)
    with SyncClient.from_url(console.redis_url) as client:
        info = client.queue(console.queue).get(task_id)
    assert info is not None and info.expires_ms is not None
    page.goto(f"{console.url}queues/{console.queue}/tasks/{task_id}")
    expect(page.locator("#task-state")).to_have_text("succeeded", timeout=LIVE)
    expect(page.locator("dl.detail dt:text-is('Expires') + dd")).to_have_text(
        str(iso_ms(info.expires_ms)))


def test_a_task_with_a_timeout_of_its_own_shows_it(console: Console, page: Page) -> None:
    task_id = console.submit({"echo": "quick"}, task_timeout=2.5)
    wait_for(lambda: console.state(task_id) == "succeeded", page)
    page.goto(f"{console.url}queues/{console.queue}/tasks/{task_id}")
    expect(page.locator("#task-state")).to_have_text("succeeded", timeout=LIVE)
    expect(page.locator("dl.detail dt:text-is('Timeout') + dd")).to_have_text(
        "2.5 s per run (or the pool's task timeout, if shorter)")


def test_a_tenants_task_shows_whose_it_is_as_text(console: Console, page: Page) -> None:
    task_id = console.submit({"echo": "mine"}, tenant="<b>acme</b> & co")
    wait_for(lambda: console.state(task_id) == "succeeded", page)
    page.goto(f"{console.url}queues/{console.queue}/tasks/{task_id}")
    expect(page.locator("#task-state")).to_have_text("succeeded", timeout=LIVE)
    expect(page.locator("dl.detail dt:text-is('Tenant') + dd")).to_have_text(
        "<b>acme</b> & co")
    assert page.locator("dl.detail b").count() == 0
    later = console.submit({"echo": "later"}, delay=3600, tenant="globex")
    plain = console.submit({"echo": "later too"}, delay=3600)
    page.goto(f"{console.url}queues/{console.queue}/tasks?state=delayed")
    expect(page.locator(f'#tasks tr[data-task="{later}"] td.tenant')).to_have_text(
        "globex", timeout=LIVE)
    expect(page.locator(f'#tasks tr[data-task="{plain}"] td.tenant')).to_have_text("-")
    expect(page.locator("#tasks th", has_text="Tenant")).to_have_count(1)


def test_the_tenants_page_lists_whose_tasks_wait_as_text(console: Console, page: Page) -> None:
    """(The console's queue is shared with the other tests: only this test's tenant is
    counted exactly.)"""
    console.submit({"echo": "later"}, delay=3600, tenant="<b>initech</b> & co")
    console.submit({"echo": "later"}, delay=3600, tenant="<b>initech</b> & co")
    console.submit({"echo": "later"}, delay=3600)
    page.goto(f"{console.url}queues/{console.queue}/tenants")
    row = page.locator("#tenants tr", has_text="initech")
    expect(row.locator("td.tenant")).to_have_text("<b>initech</b> & co", timeout=LIVE)
    assert page.locator("#tenants b").count() == 0
    expect(row.locator("td.num").nth(4)).to_have_text("2")  # later: delayed for an hour
    expect(row.locator("td.num").nth(1)).to_have_text("-")  # no cap
    expect(page.locator("#tenants td.tenant", has_text="(none)")).to_have_count(1)


def test_the_tenants_page_shows_a_cap_and_the_tasks_it_holds_back(
    console: Console, page: Page, tmp_path: Path,
) -> None:
    """The console's worker (two slots) runs one task of a tenant capped at one at a time;
    the page shows the cap and the two tasks parked for it, and the gate opened, all three
    end. (Only this test's tenant gets a cap on the shared queue, and only while it runs.)"""
    tenant = "capped & co"
    gate = tmp_path / "gate"

    def set_caps(caps: dict[str, int]) -> None:
        async def write() -> None:
            client = aioredis.Redis.from_url(console.redis_url)
            await TaskQueue(client, console.queue).set_tenant_caps(caps)
            await client.aclose()

        with ThreadPoolExecutor(1) as pool:  # Playwright's loop runs on this thread
            pool.submit(asyncio.run, write()).result(timeout=20)

    set_caps({tenant: 1})
    try:
        ids = [console.submit({"gate": str(gate)}, tenant=tenant) for _ in range(3)]
        page.goto(f"{console.url}queues/{console.queue}/tenants")
        row = page.locator("#tenants tr", has_text=tenant)
        expect(row.locator("td.num").nth(1)).to_have_text("1", timeout=LIVE)  # the cap
        expect(row.locator("td.num").nth(3)).to_have_text("1", timeout=LIVE)  # running
        expect(row.locator("td.num").nth(2)).to_have_text("2")  # queued: parked for the cap
        expect(page.locator("#tenants-capped")).to_have_text(
            "2 queued tasks wait for their tenant's cap on runs at once.", timeout=LIVE)
        page.goto(f"{console.url}queues/{console.queue}/tasks?state=queued")
        listed = page.locator("#tasks tr", has_text=tenant)
        expect(listed).to_have_count(2, timeout=LIVE)
        expect(listed.locator(".capped")).to_have_count(2)
        parked = listed.first.get_attribute("data-task")
        page.goto(f"{console.url}queues/{console.queue}/tasks/{parked}")
        expect(page.locator("#task-capped")).to_have_text(
            "waits for its tenant's cap on runs at once", timeout=LIVE)
        gate.touch()
        for task_id in ids:
            wait_for(lambda t=task_id: console.state(t) == "succeeded", page)
    finally:
        gate.touch()
        set_caps({})


def test_an_age_keeps_counting_on_a_page_that_does_not_change(
    console: Console, page: Page,
) -> None:
    """A quiet task list is sent nothing new; the age of a task shown on it still grows."""
    task_id = console.submit({"echo": "later"}, delay=3600, tenant="aging")
    page.goto(f"{console.url}queues/{console.queue}/tasks?state=delayed")
    created = page.locator(f'#tasks tr[data-task="{task_id}"] span.ago')
    # in seconds, however long the page took to show it (not only 0-9 s: up to LIVE)
    expect(created).to_have_text(re.compile(r"^[0-9]+s ago$"), timeout=LIVE)
    first = created.inner_text()
    expect(created).not_to_have_text(first, timeout=LIVE)


def test_a_task_after_another_shows_it_and_ends_with_it(console: Console, page: Page) -> None:
    first = console.submit({"echo": "later"}, delay=3600)
    second = console.submit({"echo": "next"}, after=[first])
    page.goto(f"{console.url}queues/{console.queue}/tasks?state=running")
    page.get_by_role("link", name="deferred", exact=True).click()
    row = page.locator(f'#tasks tr[data-task="{second}"]')
    expect(row.locator(".state")).to_have_text("deferred", timeout=LIVE)
    row.get_by_role("link", name=second).click()
    expect(page.locator("#task-state")).to_have_text("deferred", timeout=LIVE)
    expect(page.locator("dl.detail dt:text-is('After') + dd")).to_have_text(
        f"{first} (runs once they have all succeeded)")
    expect(page.locator("dl.detail dt:text-is('Next')")).to_have_count(0)
    with SyncClient.from_url(console.redis_url) as client:
        client.queue(console.queue).cancel(first)
    expect(page.locator("#task-state")).to_have_text("cancelled", timeout=LIVE)
    page.locator("dl.detail dt:text-is('After') + dd").get_by_role("link", name=first).click()
    expect(page.locator("h1")).to_contain_text(f"Task {first}", timeout=LIVE)
    expect(page.locator("#task-state")).to_have_text("cancelled")
    next_row = page.locator("dl.detail dt:text-is('Next') + dd")
    expect(next_row).to_have_text(f"{second} (submitted to run after it)")
    next_row.get_by_role("link", name=second).click()
    expect(page.locator("h1")).to_contain_text(f"Task {second}", timeout=LIVE)


def test_a_script_in_a_payload_or_error_renders_as_text(console: Console, page: Page) -> None:
    script = "<script>alert(1)</script>"
    image = '<img src=x onerror="alert(2)">'
    task_id = console.submit({"fail_unless": "/nonexistent/never", "error": image,
                              "note": script})
    wait_for(lambda: console.state(task_id) == "dead", page)
    page.goto(f"{console.url}queues/{console.queue}/tasks/{task_id}")
    expect(page.locator("#task-state")).to_have_text("dead", timeout=LIVE)
    expect(page.locator("#task-payload")).to_contain_text(script)
    expect(page.locator("#task-error")).to_contain_text(f"PermanentError: {image}")
    assert page.locator("main script, main img").count() == 0
    shot(page, "task-xss")
    dead_page(console, page, task_id)
    expect(page.locator(f'#tasks tr[data-task="{task_id}"]')).to_contain_text(image)
    assert page.locator("main script, main img").count() == 0


def test_find_a_task_by_its_idempotency_key(console: Console, page: Page) -> None:
    key = f"order-{uuid.uuid4().hex[:8]}"
    task_id = console.submit({"echo": key}, idempotency_key=key)
    page.goto(f"{console.url}queues/{console.queue}/tasks")
    page.locator("#search input[name=q]").fill(key)
    page.locator("#search button").click()
    expect(page).to_have_url(f"{console.url}queues/{console.queue}/tasks/{task_id}")
    expect(page.locator("#task-payload")).to_contain_text(key, timeout=LIVE)
    page.goto(f"{console.url}queues/{console.queue}/tasks")
    page.locator("#search input[name=q]").fill("no-such-key")
    page.locator("#search button").click()
    expect(page.locator("#search-result")).to_have_text(
        "no task with id or idempotency key no-such-key")


def test_a_pool_page_links_the_pools_it_hands_tasks_to_and_gets_them_from(
    console: Console, page: Page,
) -> None:
    document = {
        "namespace": "team-a", "name": "planner", "queue": console.queue,
        "source": "kubernetes", "at": 0, "health": "Ready", "replicas": 1,
        "ready_replicas": 1, "desired_replicas": 1, "last_scale_reason": None,
        "conditions": [], "history": [], "workers": [],
        "figures": {"queued": 0, "in_flight": 0, "delayed": 0, "dead": 0, "workers": 0,
                    "rates": None},
        "rate_limits": None, "limits": [], "events": [], "events_note": None, "schedules": [],
        "submits_to": [{"queue": "coder", "pools": [{"namespace": "team-b", "name": "coder"},
                                                    {"namespace": "team-c", "name": "coder"}]},
                       {"queue": "<b>x</b>", "pools": []}],
        "fed_by": [{"namespace": "team-a", "name": "intake"}],
    }
    page.route("**/api/pools/team-a/planner", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
        body=f"data: {json.dumps(document)}\n\n"))
    page.goto(console.url + "pools/team-a/planner")
    handed = page.locator("#submits-to")
    expect(handed).to_have_text(
        "Hands tasks to coder (team-b/coder, team-c/coder) · <b>x</b> (no pool serves it)",
        timeout=LIVE)
    expect(handed.locator("a")).to_have_count(4)
    expect(handed.locator("a").nth(0)).to_have_attribute("href", "/queues/coder/tasks")
    expect(handed.locator("a").nth(2)).to_have_attribute("href", "/pools/team-c/coder")
    expect(handed.locator("a").nth(3)).to_have_attribute("href", "/queues/%3Cb%3Ex%3C%2Fb%3E/tasks")
    assert page.locator("main b").count() == 0, "a queue name is text"
    expect(page.locator("#fed-by")).to_have_text("Gets tasks from team-a/intake")
    expect(page.locator("#fed-by a")).to_have_attribute("href", "/pools/team-a/intake")


def test_a_pools_schedules_render_with_a_link_to_their_last_task(
    console: Console, page: Page,
) -> None:
    """The pool page as the console serves it for an AgentPool with schedules (the document
    itself is tested from a cluster in test_console_kubernetes): Chromium renders the table."""
    task = "b" * 32
    document = {
        "namespace": "team-a", "name": "alpha", "queue": console.queue, "source": "kubernetes",
        "at": 0, "health": "Ready", "replicas": 1, "ready_replicas": 1, "desired_replicas": 1,
        "last_scale_reason": None, "conditions": [], "history": [], "workers": [],
        "figures": {"queued": 0, "in_flight": 0, "delayed": 0, "dead": 0, "workers": 0,
                    "rates": None},
        "rate_limits": None, "limits": [], "events": [], "events_note": None,
        "schedules": [
            {"name": "nightly", "cron": "30 2 * * *", "time_zone": "Europe/Paris",
             "concurrency_policy": "Forbid",
             "suspend": False, "last_schedule_time": "2026-01-01T01:30:00Z",
             "last_task_id": task, "next_schedule_time": "2026-01-02T01:30:00Z"},
            {"name": "hourly", "cron": "@hourly", "time_zone": "UTC",
             "concurrency_policy": "Allow", "suspend": True, "last_schedule_time": None,
             "last_task_id": None, "next_schedule_time": None},
        ],
    }
    page.route("**/api/pools/team-a/alpha", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
        body=f"data: {json.dumps(document)}\n\n"))
    page.goto(console.url + "pools/team-a/alpha")
    rows = page.locator("#schedules tbody tr")
    expect(rows).to_have_count(2, timeout=LIVE)
    expect(rows.nth(0)).to_contain_text("nightly")
    expect(rows.nth(0)).to_contain_text("30 2 * * * (Europe/Paris)")
    expect(rows.nth(0)).to_contain_text("Forbid overlap")
    expect(rows.nth(1)).not_to_contain_text("overlap")
    expect(rows.nth(0)).to_contain_text("2026-01-02T01:30:00Z")
    expect(rows.nth(0)).to_contain_text("for 2026-01-01T01:30:00Z")
    link = rows.nth(0).locator("a")
    expect(link).to_have_attribute("href", f"/queues/{console.queue}/tasks/{task}")
    expect(rows.nth(1)).to_contain_text("suspended")
    expect(page.locator("#pool-draining")).to_have_count(0)
    shot(page, "pool-schedules")


def test_a_pool_with_draining_pods_shows_how_many(console: Console, page: Page) -> None:
    """Pods that finish their runs before they go (a scale-down, a node drain, a rollout)."""
    document = {
        "namespace": "team-a", "name": "alpha", "queue": console.queue, "source": "kubernetes",
        "at": 0, "health": "Ready", "replicas": 3, "ready_replicas": 2, "desired_replicas": 2,
        "draining_replicas": 2, "last_scale_reason": None, "conditions": [], "history": [],
        "workers": [], "figures": {"queued": 0, "in_flight": 3, "delayed": 0, "dead": 0,
                                   "workers": 3, "rates": None},
        "rate_limits": None, "limits": [], "events": [], "events_note": None, "schedules": [],
    }
    page.route("**/api/pools/team-a/alpha", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
        body=f"data: {json.dumps(document)}\n\n"))
    page.goto(console.url + "pools/team-a/alpha")
    expect(page.locator("#pool-draining")).to_have_text("2", timeout=LIVE)


def test_pools_on_another_redis_link_no_task_pages_and_say_where_figures_come_from(
    console: Console, page: Page,
) -> None:
    """The documents the console serves for them (tested from a cluster in
    test_console_kubernetes): a pool read from its own Redis, one shown from its status."""
    note = ("Figures from the pool's status, as the operator last wrote them: cannot read "
            "the pool's Redis: Connection refused. Its tasks, dead letters and tenants are "
            "not on the console's Redis: not shown.")
    row = {"namespace": "team-c", "name": "down", "queue": console.queue, "health": "Ready",
           "problem": None, "replicas": 1, "ready_replicas": 1, "desired_replicas": 1,
           "draining_replicas": 0, "queued": 420, "delayed": 0, "deferred": 0, "in_flight": 7,
           "dead": 12, "workers": 0, "rates": None, "conditions": [], "own_redis": False,
           "figures_from": "status", "figures_note": note}
    fleet = {"source": "kubernetes", "namespaces": ["team-c"], "at": 0, "pools": [
        row, {**row, "name": "elsewhere", "queued": 2, "in_flight": 0, "dead": 0,
              "figures_from": "pool", "figures_note": "Read from the pool's own Redis."}]}
    pool = {
        "namespace": "team-c", "name": "down", "queue": console.queue, "source": "kubernetes",
        "at": 0, "health": "Ready", "replicas": 1, "ready_replicas": 1, "desired_replicas": 1,
        "last_scale_reason": None, "conditions": [], "history": [], "workers": None,
        "own_redis": False, "figures_from": "status", "figures_note": note,
        "figures": {"queue": console.queue, "queued": 420, "in_flight": 7, "delayed": 0,
                    "deferred": 0, "dead": 12, "workers": 0, "capped": 0, "from_status": True},
        "rate_limits": None, "limits": None, "events": [], "events_note": None,
        "submits_to": [{"queue": "next", "pools": []}], "fed_by": [],
        "schedules": [{"name": "nightly", "cron": "@daily", "time_zone": "UTC",
                       "concurrency_policy": "Allow", "suspend": False,
                       "last_schedule_time": None, "last_task_id": "c" * 32,
                       "next_schedule_time": None}],
    }
    def serve(document: dict[str, Any]) -> Callable[[Route], None]:
        return lambda route: route.fulfill(
            status=200, headers={"Content-Type": "text/event-stream"},
            body=f"data: {json.dumps(document)}\n\n")

    page.route("**/api/fleet", serve(fleet))
    page.route("**/api/pools/team-c/down", serve(pool))
    page.goto(console.url)
    rows = page.locator("#fleet tbody tr")
    expect(rows).to_have_count(2, timeout=LIVE)
    expect(rows.nth(0).locator(".figures-from")).to_have_text("status figures")
    expect(rows.nth(0).locator(".figures-from")).to_have_attribute("title", note)
    expect(rows.nth(1).locator(".figures-from")).to_have_text("its own Redis")
    assert page.locator('#fleet a[href^="/queues/"]').count() == 0
    shot(page, "fleet-other-redis")
    page.goto(console.url + "pools/team-c/down")
    expect(page.locator("#figures-note")).to_have_text(note, timeout=LIVE)
    expect(page.locator("#pool-queued")).to_have_text("420")
    expect(page.locator("#workers-unread")).to_be_visible()
    expect(page.locator("#schedules")).to_contain_text("c" * 32)
    assert page.locator('main a[href^="/queues/"]').count() == 0
    shot(page, "pool-other-redis")


AS_OF = re.compile(r" — showing data as of \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def test_a_page_whose_redis_stops_answering_is_marked_stale_until_it_answers(
    page: Page,
) -> None:
    """What the page showed stays, dimmed, with the badge and a line that stays in view
    saying why and as of when; the worker's heartbeat age counts on meanwhile."""
    queue = f"stale-{uuid.uuid4().hex[:8]}"
    server = RedisServer(port=free_port()).start()
    console = InProcessConsole(server.url, queue)
    try:
        console.heartbeat("pod-a")
        console.start()
        page.set_viewport_size({"width": 1280, "height": 300})
        page.goto(f"{console.url}pools/-/{queue}")
        heartbeat = page.locator("#workers tbody tr td").nth(6)
        expect(heartbeat).to_have_text(re.compile(r"^[0-9]+s ago$"), timeout=LIVE)
        expect(page.locator("#live")).to_have_text("live")
        server.stop()
        expect(page.locator("#live")).to_have_text("stale: cannot read Redis", timeout=LIVE)
        error = page.locator("#page-error")
        expect(error).to_have_text(re.compile(r"^cannot read Redis: Connection refused"))
        expect(error).to_have_text(AS_OF)
        expect(error).to_have_attribute("aria-live", "polite")
        expect(page.locator("main")).to_have_class(re.compile(r"\bstale\b"))
        assert page.locator("#pool-in-flight").evaluate(
            "e => getComputedStyle(e.closest('main > *')).opacity") == "0.45"
        page.mouse.wheel(0, 2000)  # read further down: the error stays in view
        expect(page.locator("#workers")).to_be_in_viewport()
        expect(error).to_be_in_viewport()
        shot(page, "pool-stale")
        counted = heartbeat.inner_text()
        expect(heartbeat).not_to_have_text(counted, timeout=LIVE)
        server.start()
        expect(page.locator("#live")).to_have_text("live", timeout=LIVE)
        expect(error).to_have_count(0)
        expect(page.locator("main")).not_to_have_class(re.compile(r"\bstale\b"))
    finally:
        console.close()
        server.close()


def test_a_running_worker_that_claims_nothing_says_so_and_why_in_its_row(
    redis_url: str, page: Page,
) -> None:
    """A worker whose heartbeat says why it does not claim (`notReady`) reads `running (not
    ready)` as a warning with the reason, as text, in its row; one that claims reads
    `running`."""
    queue = f"notready-{uuid.uuid4().hex[:8]}"
    console = InProcessConsole(redis_url, queue)
    tasks = TaskQueue(console.redis, queue)
    reason = "ready hook failed: <b>model endpoint</b> answered 503"
    try:
        console.call(tasks.heartbeat(
            WorkerInfo(pod="pod-a", instance="i1", concurrency=2, not_ready=reason), {}, 30))
        console.heartbeat("pod-b")
        console.start()
        page.goto(f"{console.url}pools/-/{queue}")
        rows = page.locator("#workers tbody tr")
        expect(rows).to_have_count(2, timeout=LIVE)
        idle = rows.filter(has_text="pod-a").locator("td").nth(2)
        expect(idle).to_have_text("running (not ready)" + reason)
        expect(idle.locator(".state")).to_have_text("running (not ready)")
        expect(idle.locator(".not-ready")).to_have_text(reason)
        expect(idle.locator("b")).to_have_count(0)
        expect(idle.locator(".state")).to_have_css("color", "rgb(154, 103, 0)")  # --warn
        expect(rows.filter(has_text="pod-b").locator("td").nth(2)).to_have_text("running")
        shot(page, "pool-not-ready")
        console.heartbeat("pod-a")  # it claims again
        expect(idle).to_have_text("running", timeout=LIVE)
    finally:
        console.close()


def test_a_fleet_pools_conditions_say_their_status_and_colour_the_bad_ones(
    console: Console, page: Page,
) -> None:
    """Degraded True is a problem and Ready False one too (red), written out, not a colour
    alone; the console says which are (`bad`)."""
    row = {"namespace": "team-a", "name": "alpha", "queue": console.queue, "health": "Degraded",
           "problem": None, "replicas": 1, "ready_replicas": 0, "desired_replicas": 1,
           "draining_replicas": 0, "queued": 1, "delayed": 0, "deferred": 0, "in_flight": 0,
           "dead": 0, "workers": 0, "rates": None, "own_redis": True, "figures_from": "console",
           "figures_note": None, "conditions": [
               {"type": "Ready", "status": "False", "reason": "NoReplicas", "message": "0/1",
                "bad": True},
               {"type": "QueueReachable", "status": "True", "reason": "Ok", "message": None,
                "bad": False},
               {"type": "Degraded", "status": "True", "reason": "CrashLoop",
                "message": "pods restart", "bad": True},
               {"type": "Scaling", "status": "Unknown", "reason": None, "message": None,
                "bad": False}]}
    fleet = {"source": "kubernetes", "namespaces": ["team-a"], "at": 0, "pools": [row]}
    page.route("**/api/fleet", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"},
        body=f"data: {json.dumps(fleet)}\n\n"))
    page.goto(console.url)
    shown = page.locator("#fleet td.conditions .condition")
    expect(shown).to_have_text(["Ready: False", "QueueReachable: True", "Degraded: True",
                                "Scaling: Unknown"], timeout=LIVE)
    colours = shown.evaluate_all("spans => spans.map(s => getComputedStyle(s).color)")
    bad, good = "rgb(179, 38, 30)", "rgb(31, 122, 58)"
    assert colours[0] == colours[2] == bad
    assert colours[1] == good and colours[3] not in (bad, good)
    expect(shown.nth(2)).to_have_attribute("title", "CrashLoop: pods restart")
    shot(page, "fleet-conditions")


def test_cancel_asks_first_naming_the_task_and_its_state(
    console: Console, page: Page, dialogs: Dialogs,
) -> None:
    task_id = console.submit({"echo": "later"}, delay=3600)
    page.goto(f"{console.url}queues/{console.queue}/tasks/{task_id}")
    expect(page.locator("#task-state")).to_have_text("delayed", timeout=LIVE)
    page.locator("#token").fill(TOKEN)
    dialogs.answer(False)
    page.locator("#cancel").click()
    wait_for(lambda: len(dialogs.seen) == 1, page)
    assert dialogs.seen == [f"Cancel task {task_id}? It is delayed."]
    expect(page.locator("#action-message")).to_have_text("")
    assert console.state(task_id) == "delayed"
    dialogs.answer(True)
    page.locator("#cancel").click()
    expect(page.locator("#action-message")).to_have_text("outcome: cancelled")
    assert console.state(task_id) == "cancelled"


def test_a_quiet_page_keeps_the_focus_and_the_selection_while_a_row_changes(
    redis_url: str, page: Page,
) -> None:
    """A live redraw changes only what changed: the link a keyboard user is on and the text
    someone selected to copy stay, on the fleet and on a task list."""
    queue = f"focus-{uuid.uuid4().hex[:8]}"
    console = InProcessConsole(redis_url, queue)
    select = """cell => { const range = document.createRange(); range.selectNodeContents(cell);
        getSelection().removeAllRanges(); getSelection().addRange(range); }"""
    focused = "() => [document.activeElement.getAttribute('href'), getSelection().toString()]"
    try:
        console.start()
        page.goto(console.url)
        row = page.locator(f'#fleet tr[data-pool="{queue}"]')
        expect(row.locator("td").nth(3)).to_have_text("0", timeout=LIVE)  # queued
        row.locator("td").first.get_by_role("link").focus()
        row.locator("td").nth(1).get_by_role("link").evaluate(select)
        first = console.call(TaskQueue(console.redis, queue).submit({"n": 1}))
        expect(row.locator("td").nth(3)).to_have_text("1", timeout=LIVE)
        assert page.evaluate(focused) == [f"/pools/-/{queue}", queue]
        page.goto(f"{console.url}queues/{queue}/tasks")
        link = page.locator(f'#tasks tr[data-task="{first}"] a')
        expect(link).to_be_visible(timeout=LIVE)
        link.focus()
        page.locator(f'#tasks tr[data-task="{first}"] td.payload').first.evaluate(select)
        console.call(TaskQueue(console.redis, queue).submit({"n": 2}))
        expect(page.locator("#tasks tbody tr")).to_have_count(2, timeout=LIVE)
        assert page.evaluate(focused) == [f"/queues/{queue}/tasks/{first}", '{"n":1}']
    finally:
        console.close()


def test_long_unbroken_text_wraps_in_its_cell_and_a_dead_letter_shows_its_error_first(
    console: Console, page: Page,
) -> None:
    task_id = console.submit({"fail_unless": "/nonexistent/never", "error": "E" * 300,
                              "blob": "x" * 300})
    wait_for(lambda: console.state(task_id) == "dead", page)
    page.set_viewport_size({"width": 1024, "height": 700})
    page.goto(f"{console.url}queues/{console.queue}/dead")
    row = page.locator(f'#tasks tr[data-task="{task_id}"]')
    expect(row).to_contain_text("EEEE", timeout=LIVE)
    headers = page.locator("#tasks th").all_inner_texts()
    assert headers.index("Error") < headers.index("Payload")
    assert "Died" in headers
    assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")
    width = row.locator("td.payload").first.evaluate("td => td.getBoundingClientRect().width")
    assert width <= 32 * 12.5 + 20 + 1  # at most 32em of its 12.5px text, and its padding
    shot(page, "dead-long")


def test_ages_count_on_the_consoles_clock_and_long_ones_in_days(
    console: Console, page: Page,
) -> None:
    """The console's clock an hour ahead of the browser's: a heartbeat 30 s before the
    snapshot was read is 30 s old, not 0; an Event 40 days old says so, with its time."""
    now = time.time() + 3600
    pool = {
        "namespace": "team-a", "name": "alpha", "queue": console.queue, "source": "kubernetes",
        "at": now, "health": "Ready", "replicas": 1, "ready_replicas": 1, "desired_replicas": 1,
        "last_scale_reason": None, "conditions": [], "history": [],
        "workers": [{"pod": "pod-a", "instance": "i1", "state": "running", "in_flight": 0,
                     "concurrency": 1, "done": 0, "failed": 0,
                     "last_heartbeat": iso_ms(int((now - 30) * 1000))}],
        "figures": {"queued": 0, "in_flight": 0, "delayed": 0, "dead": 0, "workers": 1,
                    "rates": None},
        "rate_limits": None, "limits": [], "schedules": [], "events_note": None,
        "events": [{"type": "Normal", "reason": "ScaledUp", "message": "1 → 2", "count": 1,
                    "last": "2020-01-01T00:00:00Z"}],
    }
    old = (now - datetime.fromisoformat("2020-01-01T00:00:00+00:00").timestamp()) // 3600
    page.route("**/api/pools/team-a/alpha", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"},
        body=f"data: {json.dumps(pool)}\n\n"))
    page.goto(console.url + "pools/team-a/alpha")
    expect(page.locator("#workers tbody td").nth(6)).to_have_text(
        re.compile(r"^3[0-9]s ago$"), timeout=LIVE)
    event = page.locator("main table").last.locator("tbody td").first.locator(".ago")
    expect(event).to_have_text(re.compile(rf"^{int(old // 24)}d {int(old % 24)}h ago$"))
    expect(event).to_have_attribute("title", "2020-01-01T00:00:00Z")


def test_a_task_pages_event_times_have_their_date_and_zone(
    redis_url: str, page: Page,
) -> None:
    with task_page_with_two_events(redis_url, page, "dates") as (_, _, rows):
        times = rows.evaluate_all("rows => rows.map(r => r.cells[0].textContent)")
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", t) for t in times)


def test_an_action_answered_by_something_else_says_its_outcome_is_unknown(
    console: Console, page: Page, dialogs: Dialogs,
) -> None:
    """A proxy's 502 page (not the console's JSON) may come after the cancel was done or
    before: the page says it cannot tell, not a JavaScript error."""
    task_id = console.submit({"echo": "later"}, delay=3600)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.route("**/cancel", lambda route: route.fulfill(
        status=502, content_type="text/html", body="<html><h1>502 Bad Gateway</h1></html>"))
    page.goto(f"{console.url}queues/{console.queue}/tasks/{task_id}")
    expect(page.locator("#task-state")).to_have_text("delayed", timeout=LIVE)
    page.locator("#token").fill(TOKEN)
    dialogs.answer(True)
    page.locator("#cancel").click()
    expect(page.locator("#action-message")).to_have_text(
        "the answer was 502 Bad Gateway, not the console's: whether it was done is unknown: "
        "reload the page to see")
    assert errors == []


def test_dead_letters_are_checked_by_name_or_all_at_once_and_pages_say_what_they_are(
    console: Console, page: Page,
) -> None:
    task_id = console.submit({"fail_unless": "/nonexistent/never", "error": "nope"})
    wait_for(lambda: console.state(task_id) == "dead", page)
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    page.goto(f"{console.url}queues/{console.queue}/dead")
    expect(page).to_have_title(f"{console.queue}: dead letters — agentpool console")
    box = page.get_by_role("checkbox", name=f"select {task_id}")
    expect(box).to_be_visible(timeout=LIVE)
    page.locator("#token").fill(TOKEN)
    page.locator("#requeue").click()
    message = page.locator("#action-message")
    expect(message).to_have_text("Check the dead letters to requeue first.")
    expect(message).to_have_attribute("aria-live", "polite")
    page.get_by_role("checkbox", name="select every dead letter shown").check()
    expect(box).to_be_checked()
    assert page.locator("#tasks input[data-id]:not(:checked)").count() == 0
    page.get_by_role("checkbox", name="select every dead letter shown").uncheck()
    expect(box).not_to_be_checked()
    assert not [url for url in asked if "/dead/requeue" in url or "favicon" in url]
    assert page.locator("link[rel=icon]").get_attribute("href").startswith(
        "data:image/svg+xml,")
    page.goto(f"{console.url}queues/{console.queue}/tasks/no-such-task")
    expect(page.locator("#page-error")).to_contain_text("no task no-such-task", timeout=LIVE)
    expect(page.locator("#live")).to_have_text("checking again every 5 s")
    expect(page).to_have_title("task no-such-task — agentpool console")


def test_a_page_whose_console_stops_answering_is_marked_stale_until_it_answers(
    page: Page,
) -> None:
    """The console itself down (a restart, a port-forward that exited): the browser keeps
    trying by itself (`reconnecting`), and the page is dimmed with the time of its last data
    from the first failed try until its next snapshot."""
    queue = f"gone-{uuid.uuid4().hex[:8]}"
    server = RedisServer(port=free_port()).start()
    console = InProcessConsole(server.url, queue)
    try:
        console.heartbeat("pod-a")
        console.start()
        page.goto(f"{console.url}pools/-/{queue}")
        expect(page.locator("#workers tbody tr")).to_have_count(1, timeout=LIVE)
        expect(page.locator("#live")).to_have_text("live")
        console.stop()
        expect(page.locator("#live")).to_have_text("reconnecting", timeout=LIVE)
        error = page.locator("#page-error")
        expect(error).to_have_text(re.compile(r"^the console does not answer"), timeout=LIVE)
        expect(error).to_have_text(AS_OF)
        expect(page.locator("main")).to_have_class(re.compile(r"\bstale\b"))
        console.start()
        expect(page.locator("#live")).to_have_text("live", timeout=LIVE)
        expect(error).to_have_count(0, timeout=LIVE)
        expect(page.locator("main")).not_to_have_class(re.compile(r"\bstale\b"))
    finally:
        console.close()
        server.close()


def test_ages_follow_a_browser_clock_corrected_while_the_page_is_open(
    page: Page,
) -> None:
    """The browser's clock an hour behind, then put right: the next snapshot sets the
    difference again, and a heartbeat seconds old reads so, not an hour old."""
    queue = f"clock-{uuid.uuid4().hex[:8]}"
    server = RedisServer(port=free_port()).start()
    console = InProcessConsole(server.url, queue)
    page.add_init_script("""(() => { const real = Date.now.bind(Date); window.__off = -3600000;
        Date.now = () => real() + window.__off; })();""")
    try:
        console.heartbeat("pod-a")
        console.start()
        page.goto(f"{console.url}pools/-/{queue}")
        rows = page.locator("#workers tbody tr")
        seconds = re.compile(r"^[0-9]+s ago$")
        expect(rows.first.locator("td").nth(6)).to_have_text(seconds, timeout=LIVE)
        page.evaluate("window.__off = 0")
        console.heartbeat("pod-b")  # a change: the next snapshot
        expect(rows).to_have_count(2, timeout=LIVE)
        for row in rows.all():
            expect(row.locator("td").nth(6)).to_have_text(seconds)
    finally:
        console.close()
        server.close()


def test_a_running_list_whose_rows_reorder_keeps_the_focused_link(
    redis_url: str, page: Page,
) -> None:
    """The running list is in lease order, which a heartbeat changes: the row whose link has
    the keyboard's focus goes up without losing it."""
    queue = f"order-{uuid.uuid4().hex[:8]}"
    console = InProcessConsole(redis_url, queue)
    worker = WorkerInfo(pod="pod-a", instance="i1", concurrency=2)
    tasks = TaskQueue(console.redis, queue)
    try:
        first = console.call(tasks.submit({"n": 1}))
        second = console.call(tasks.submit({"n": 2}))
        [held] = console.call(tasks.claim(worker.worker_id, 1, 30)).tasks
        assert held.id == first
        console.call(tasks.claim(worker.worker_id, 1, 60))
        console.start()
        page.goto(f"{console.url}queues/{queue}/tasks?state=running")
        rows = page.locator("#tasks tbody tr")
        expect(rows).to_have_count(2, timeout=LIVE)
        expect(rows.first).to_have_attribute("data-task", first)
        link = page.locator(f'#tasks tr[data-task="{second}"] a').first
        link.focus()
        console.call(tasks.heartbeat(worker, {first: held.token}, 120))  # first goes last
        expect(rows.first).to_have_attribute("data-task", second, timeout=LIVE)
        assert page.evaluate("document.activeElement.getAttribute('href')") == (
            f"/queues/{queue}/tasks/{second}")
    finally:
        console.close()
