"""The console's web application: page routes (one HTML shell), JSON and live (SSE) data for
each page, and the write actions."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import html
import json
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import quote

from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp.web_urldispatcher import MatchInfoError

from agentpool.cli.common import CommandFailed
from agentpool.console.hub import FeedLoader, Hub, Loader, Message, event_key, plain
from agentpool.console.security import (
    LOOPBACK_NAMES,
    Handler,
    allowed_hosts,
    secure_headers,
    write_refusal,
)
from agentpool.console.sources import MAX_PAGE, NotFound, Sources, Unreadable, redis_problem
from agentpool.protocol import TASK_LIST_STATES, ProtocolError
from agentpool.redis_errors import REDIS_FAILURES, redis_full

STATIC = resources.files("agentpool.console") / "static"
FLEET_SECONDS = 2.0
KEEPALIVE_SECONDS = 15.0
GONE_CHECK_SECONDS = 1.0
"""How often a quiet live stream looks whether its browser left (a closed tab): the page's
refresher, which reads Redis, stops with its last watcher."""
RECONNECT_MS = 1000
"""How soon a browser reconnects a live stream the console ended (a restart, a redeploy)."""
INTERVALS = {"fleet": 1.0, "pool": 2.0, "tasks": 2.5, "task": 1.0, "dead": 2.5, "tenants": 5.0}
"""Seconds between the end of a watched page's reload and the next, per kind: each reload of a
pool, a task list or a task (with its new events) is one Redis round trip, so at most one per
second per page however many watch it; the fleet page reads the recorder's latest snapshot.
The tenants page reads its queue in pages of 1,000 tasks (one round trip each), so less
often."""
MAX_IDS = 1000
MAX_WATCHED_PAGES = 1000
"""Pages watched live at once (each has its refresher): a new one past this is refused."""
WRITE_SECONDS = 30.0
"""How long a browser may take to read what a live stream sends it before it is dropped: a
client that stops reading must not make the console keep its unsent data."""

SOURCES: web.AppKey[Sources] = web.AppKey("sources", Sources)
HUB: web.AppKey[Hub] = web.AppKey("hub", Hub)
STREAMS: web.AppKey[set[asyncio.Task[Any]]] = web.AppKey("streams")
"""The open live streams, ended when the console shuts down (they would otherwise hold the
shutdown until the browsers go away)."""


@dataclass(frozen=True)
class ConsoleConfig:
    token: str | None = None
    """Write actions are enabled exactly when a token is set."""
    allowed_hosts: frozenset[str] | None = LOOPBACK_NAMES
    """The host names (Host header) the console answers to; None: any."""
    fleet_seconds: float = FLEET_SECONDS


CONFIG = web.AppKey("config", ConsoleConfig)


def error_doc(exc: BaseException) -> dict[str, Any]:
    """A page's error as shown to people: never a Redis URL or a password. A refused
    password says where the password goes, as the CLI does, not Redis's own paragraph."""
    if isinstance(exc, NotFound):
        return {"error": str(exc), "not_found": True}
    if redis_full(exc) or isinstance(exc, REDIS_FAILURES):
        return {"error": redis_problem(exc)}
    if isinstance(exc, CommandFailed | ProtocolError | Unreadable):
        return {"error": str(exc)}
    return {"error": f"unexpected error: {type(exc).__name__}"}


# -- pages -----------------------------------------------------------------------------------


async def shell(request: web.Request) -> web.StreamResponse:
    return web.Response(body=(STATIC / "index.html").read_bytes(),
                        content_type="text/html", charset="utf-8")


PAGES = (
    ("/", "every pool"),
    ("/pools/<namespace>/<name>", "a pool (namespace - without Kubernetes)"),
    ("/queues/<queue>/tasks", "a queue's tasks by state"),
    ("/queues/<queue>/tasks/<id>", "a task"),
    ("/queues/<queue>/dead", "a queue's dead letters"),
    ("/queues/<queue>/tenants", "a queue's tenants"),
)
"""The console's pages, as a request for none of them lists them."""


def not_found_html(path: str) -> str:
    items = "".join(
        f'<li><a href="/">/</a>: {text}</li>' if page == "/" else
        f"<li><code>{html.escape(page)}</code>: {html.escape(text, quote=False)}</li>"
        for page, text in PAGES)
    return ('<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            "<title>Not found · agentpool console</title>\n"
            '<link rel="stylesheet" href="/static/console.css">\n</head>\n<body>\n'
            '<header><a class="brand" href="/">agentpool</a></header>\n<main>\n'
            f"<h1>No page at {html.escape(path)}</h1>\n<p>The console's pages:</p>\n"
            f"<ul>{items}</ul>\n<p>Each page's data is its path under /api "
            "(/api/fleet for /).</p>\n</main>\n</body>\n</html>\n")


def not_found_pages() -> Middleware:
    """A path that is none of the console's: its own small page naming them (JSON under
    /api/), not aiohttp's bare "404: Not Found"."""

    @web.middleware
    async def pages(request: web.Request, handler: Handler) -> web.StreamResponse:
        match = request.match_info
        if not (isinstance(match, MatchInfoError) and match.http_exception.status == 404):
            return await handler(request)
        if request.path == "/api" or request.path.startswith("/api/"):
            raise _http_error(404, f"no data at {request.path}: the pages' data is at "
                              "/api/fleet, /api/pools/<namespace>/<name>, "
                              "/api/queues/<queue>/tasks, /api/queues/<queue>/tasks/<id>, "
                              "/api/queues/<queue>/dead and /api/queues/<queue>/tenants")
        return web.Response(text=not_found_html(request.path), status=404,
                            content_type="text/html", charset="utf-8")

    return pages


async def queue_page(request: web.Request) -> web.StreamResponse:
    """`/queues/<queue>`, which no page is: its tasks, where the fleet's queue links go."""
    raise web.HTTPFound(f"/queues/{quote(request.match_info['queue'], safe='')}/tasks")


async def asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    kind = next((t for ext, t in types.items() if name.endswith(ext)), None)
    item = STATIC / name
    if kind is None or "/" in name or not item.is_file():
        raise web.HTTPNotFound(text="no such asset")
    return web.Response(body=item.read_bytes(), content_type=kind, charset="utf-8")


# -- data ------------------------------------------------------------------------------------


async def serve(request: web.Request, kind: str, key: str, load: Loader,
                feed: FeedLoader | None = None) -> web.StreamResponse:
    """The page's snapshot as JSON, or (Accept: text/event-stream) every new one, live, and
    the page's events (`feed`) after the browser's Last-Event-ID. `key` names the page (its
    refresher's), whatever else its URL says."""
    hub = request.app[HUB]
    if "text/event-stream" not in request.headers.get("Accept", ""):
        text, status = await hub.get(key, kind, load)
        return web.Response(text=text, status=status, content_type="application/json")
    if key not in hub.topics and len(hub.topics) >= MAX_WATCHED_PAGES:
        raise _http_error(503, f"{MAX_WATCHED_PAGES} pages are watched live already: "
                          "try again later")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    streams, me = request.app[STREAMS], asyncio.current_task()
    assert me is not None
    streams.add(me)
    updates = hub.watch(key, kind, feed or plain(load), INTERVALS[kind],
                        after=last_event_id(request))
    # The next update is awaited in a task of its own that outlives a keep-alive: cancelling
    # it on a quiet page would close the generator (and the stream with it).
    pending: asyncio.Future[Message] | None = None
    try:
        await _send(request, response, f"retry: {RECONNECT_MS}\n\n".encode())
        quiet_since = time.monotonic()
        while True:
            pending = pending or asyncio.ensure_future(anext(updates))
            done, _ = await asyncio.wait({pending}, timeout=GONE_CHECK_SECONDS)
            if request.transport is None or request.transport.is_closing():
                break  # the browser left: its page's refresher stops now, not at a write
            if not done:
                if time.monotonic() - quiet_since >= KEEPALIVE_SECONDS:
                    await _send(request, response, b": keep-alive\n\n")
                    quiet_since = time.monotonic()
                continue
            message, pending = pending.result(), None
            await _send(request, response, sse(message))
            quiet_since = time.monotonic()
    except (ConnectionError, TimeoutError, asyncio.CancelledError):
        pass
    finally:
        streams.discard(me)
        if pending is not None:
            pending.cancel()
            await asyncio.wait({pending})
        with contextlib.suppress(Exception):
            await updates.aclose()
    return response


async def _send(request: web.Request, response: web.StreamResponse, data: bytes) -> None:
    """Write to a live stream; a browser that does not take it within WRITE_SECONDS is cut
    off (TimeoutError) and what was waiting for it dropped."""
    try:
        async with asyncio.timeout(WRITE_SECONDS):
            await response.write(data)
    except TimeoutError:
        if request.transport is not None:
            request.transport.abort()
        raise


def sse(message: Message) -> bytes:
    head = f"event: {message.name}\n" if message.name else ""
    if message.event_id:
        head += f"id: {message.event_id}\n"
    return f"{head}data: {message.text}\n\n".encode()


def last_event_id(request: web.Request) -> str | None:
    """The last event a reconnecting browser got: its Last-Event-ID, or the page's `after`
    (a page that closed its stream while hidden opens a new one from there). None: from the
    first, also when it is not an event id."""
    value = (request.headers.get("Last-Event-ID") or request.query.get("after", "")).strip()
    try:
        event_key(value)
    except ValueError:
        return None
    return value


async def console_info(request: web.Request) -> web.StreamResponse:
    sources = request.app[SOURCES]
    return web.json_response({"writes": request.app[CONFIG].token is not None,
                              "source": sources.source, "namespaces": sources.namespaces})


async def fleet(request: web.Request) -> web.StreamResponse:
    sources = request.app[SOURCES]

    async def load() -> dict[str, Any]:
        return sources.fleet or await sources.refresh_fleet()

    return await serve(request, "fleet", "fleet", load)


async def pool(request: web.Request) -> web.StreamResponse:
    sources, info = request.app[SOURCES], request.match_info
    key = page_key("pool", info["namespace"], info["name"])
    return await serve(request, "pool", key,
                       lambda: sources.pool(info["namespace"], info["name"]))


def page_key(kind: str, *parts: str | int) -> str:
    """The name of a page whatever its URL's other query parameters: one refresher each."""
    return json.dumps([kind, *parts])


def _page(request: web.Request) -> int:
    text = request.query.get("page", "1")
    try:
        page = int(text)
    except ValueError:
        page = 0
    if not 1 <= page <= MAX_PAGE:
        raise _http_error(400, f"page must be a whole number from 1 to {MAX_PAGE}")
    return page


async def tasks(request: web.Request) -> web.StreamResponse:
    sources, queue = request.app[SOURCES], request.match_info["queue"]
    state, page = request.query.get("state", "queued"), _page(request)
    if state not in TASK_LIST_STATES:
        raise _http_error(404, f"no task state {state!r}: use one of "
                          f"{', '.join(TASK_LIST_STATES)}")
    return await serve(request, "tasks", page_key("tasks", queue, state, page),
                       lambda: sources.tasks(queue, state, page))


async def dead(request: web.Request) -> web.StreamResponse:
    sources, queue = request.app[SOURCES], request.match_info["queue"]
    page = _page(request)
    return await serve(request, "dead", page_key("dead", queue, page),
                       lambda: sources.tasks(queue, "dead", page))


async def task(request: web.Request) -> web.StreamResponse:
    sources, info = request.app[SOURCES], request.match_info
    queue, task_id = info["queue"], info["id"]
    return await serve(request, "task", page_key("task", queue, task_id),
                       lambda: sources.task(queue, task_id),
                       lambda after: sources.task_feed(queue, task_id, after))


async def tenants(request: web.Request) -> web.StreamResponse:
    sources, queue = request.app[SOURCES], request.match_info["queue"]
    return await serve(request, "tenants", page_key("tenants", queue),
                       lambda: sources.tenants(queue))


async def find(request: web.Request) -> web.StreamResponse:
    sources, queue = request.app[SOURCES], request.match_info["queue"]
    try:
        found = await sources.find(queue, request.query.get("q", ""))
    except Exception as exc:
        return web.json_response(error_doc(exc), status=404 if isinstance(exc, NotFound)
                                 else 502)
    return web.json_response({"queue": queue, "id": found})


# -- write actions ---------------------------------------------------------------------------


async def _write_body(request: web.Request) -> dict[str, Any]:
    refusal = write_refusal(request, request.app[CONFIG].token)
    if refusal is not None:
        status, message = refusal
        raise _http_error(status, message)
    try:
        body = await request.json()
    except ValueError:
        raise _http_error(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise _http_error(400, "the body must be a JSON object")
    return body


def _http_error(status: int, message: str) -> web.HTTPException:
    error = web.HTTPException(text=json.dumps({"error": message}),
                              content_type="application/json")
    error.set_status(status)
    return error


def _ids(body: dict[str, Any]) -> list[str]:
    ids = body.get("ids")
    if not isinstance(ids, list) or not ids or len(ids) > MAX_IDS or not all(
            isinstance(i, str) and i for i in ids):
        raise _http_error(400, f"give the task ids as \"ids\": a list of 1 to {MAX_IDS} strings")
    return ids


def write_action(fn: Handler) -> Handler:
    """Errors of a write action as a JSON answer the page can show."""

    @functools.wraps(fn)
    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except web.HTTPException:
            raise
        except NotFound as exc:
            return web.json_response(error_doc(exc), status=404)
        except Exception as exc:
            return web.json_response(error_doc(exc), status=502)

    return run


@write_action
async def requeue_dead(request: web.Request) -> web.StreamResponse:
    body = await _write_body(request)
    queue = request.app[SOURCES].queue(request.match_info["queue"])
    outcome = await queue.requeue_dead_counted(_ids(body))
    return web.json_response({"requeued": outcome.requeued, "revived": outcome.revived})


@write_action
async def purge_dead(request: web.Request) -> web.StreamResponse:
    body = await _write_body(request)
    queue = request.app[SOURCES].queue(request.match_info["queue"])
    return web.json_response({"purged": await queue.purge_dead(_ids(body))})


@write_action
async def cancel(request: web.Request) -> web.StreamResponse:
    await _write_body(request)
    queue = request.app[SOURCES].queue(request.match_info["queue"])
    outcome = await queue.cancel(request.match_info["id"])
    return web.json_response({"outcome": outcome.value})


# -- application -----------------------------------------------------------------------------


async def record_fleet(app: web.Application) -> None:
    """Refresh the fleet for as long as the console runs: its history must not have gaps
    while nobody watches."""
    sources, seconds = app[SOURCES], app[CONFIG].fleet_seconds
    while True:
        try:
            await sources.refresh_fleet()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            sources.fleet = {"source": sources.source, "pools": [], **error_doc(exc)}
        await asyncio.sleep(seconds)


async def _recorder(app: web.Application) -> Any:
    recorder = asyncio.create_task(record_fleet(app), name="console:fleet")
    yield
    recorder.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await recorder
    await app[HUB].aclose()
    await app[SOURCES].aclose()


async def _end_streams(app: web.Application) -> None:
    streams = app[STREAMS]
    for stream in [*streams]:
        stream.cancel()


def build_app(sources: Sources, config: ConsoleConfig) -> web.Application:
    app = web.Application(middlewares=[
        *([] if config.allowed_hosts is None else [allowed_hosts(config.allowed_hosts)]),
        not_found_pages()])
    app.on_response_prepare.append(secure_headers)
    app[SOURCES] = sources
    app[CONFIG] = config
    app[HUB] = Hub(error_doc)
    streams: set[asyncio.Task[Any]] = set()
    app[STREAMS] = streams
    for path in ("/", "/pools/{namespace}/{name}", "/queues/{queue}/tasks",
                 "/queues/{queue}/tasks/{id}", "/queues/{queue}/dead", "/queues/{queue}/tenants"):
        app.router.add_get(path, shell)
    for path in ("/queues/{queue}", "/queues/{queue}/"):
        app.router.add_get(path, queue_page)
    app.router.add_get("/static/{name}", asset)
    app.router.add_get("/api/console", console_info)
    app.router.add_get("/api/fleet", fleet)
    app.router.add_get("/api/pools/{namespace}/{name}", pool)
    app.router.add_get("/api/queues/{queue}/tasks", tasks)
    app.router.add_get("/api/queues/{queue}/find", find)
    app.router.add_get("/api/queues/{queue}/tasks/{id}", task)
    app.router.add_get("/api/queues/{queue}/dead", dead)
    app.router.add_get("/api/queues/{queue}/tenants", tenants)
    app.router.add_post("/api/queues/{queue}/tasks/{id}/cancel", cancel)
    app.router.add_post("/api/queues/{queue}/dead/requeue", requeue_dead)
    app.router.add_post("/api/queues/{queue}/dead/purge", purge_dead)
    app.cleanup_ctx.append(_recorder)
    app.on_shutdown.append(_end_streams)
    return app
