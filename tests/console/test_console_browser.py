"""The console in headless Chromium (Debian's package, driven by Playwright) against a real
redis-server, real workers and the `agentpool console` command.

Screenshots of each page go to .test-output/console/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from console_helpers import TOKEN, worker_env

from agentpool.client import SyncClient

try:
    from playwright.sync_api import Browser, Error, Page, expect, sync_playwright
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


@pytest.fixture(scope="module")
def console(redis_server: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """`agentpool console` with write actions (TOKEN) on one queue, and two real workers."""
    from agentpool.redis_server import RedisServer

    assert isinstance(redis_server, RedisServer)
    tmp = tmp_path_factory.mktemp("console")
    queue = f"console-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTPOOL_")}
    env["AGENTPOOL_CONSOLE_TOKEN"] = TOKEN
    binary = Path(sys.executable).with_name("agentpool")
    process = subprocess.Popen(
        [str(binary), "console", "--redis-url", redis_server.url, "--port", "0",
         "--redis-only", "--queue", queue, "--allow-writes"],
        env=env, stdout=subprocess.PIPE, stderr=(tmp / "console.log").open("wb"), text=True)
    workers = []
    for pod in ("pod-a", "pod-b"):
        with (tmp / f"{pod}.log").open("wb") as log:
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "agentpool_worker.main"],
                env=worker_env(redis_server.url, queue, pod), stdin=subprocess.DEVNULL,
                stdout=log, stderr=log))
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("agentpool console: http://127.0.0.1:"), (
            line + (tmp / "console.log").read_text())
        assert redis_server.url not in line
        yield Console(line.split()[2], queue, redis_server.url, tmp)
    finally:
        for child in [process, *workers]:
            child.terminate()
        for child in [process, *workers]:
            child.wait(timeout=20)
    log = (tmp / "console.log").read_text()
    assert redis_server.url not in log and "redis://" not in log


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    yield page
    context.close()
    assert dialogs == [], f"the page opened dialogs: {dialogs}"


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
    wait_for(lambda: console.state(task_id) == "dead", page)

    dead_page(console, page, task_id)
    expect(page.locator(f'#tasks tr[data-task="{task_id}"]')).to_contain_text("upstream said no")
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
    expect(page.locator("#action-message")).to_have_text("requeued: 1")
    wait_for(lambda: console.state(task_id) == "succeeded", page)
    expect(page.locator(f'#tasks tr[data-task="{task_id}"]')).to_have_count(0, timeout=LIVE)


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
