"""What keeps the console safe to expose: strict response headers on everything, and write
actions only when enabled, with the token, from the console's own pages."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HEADERS = {
    # every asset is the console's own: no inline script, nothing from elsewhere
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@web.middleware
async def secure_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(HEADERS)
        raise
    response.headers.update(HEADERS)
    return response


LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


@web.middleware
async def loopback_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse requests that name another host than this machine's loopback: a console bound
    to 127.0.0.1 must not be readable by a web page that rebinds its own name to 127.0.0.1."""
    try:
        host = urlsplit("//" + (request.host or "")).hostname or ""
    except ValueError:
        host = ""
    if host.lower() not in LOOPBACK_NAMES:
        raise web.HTTPMisdirectedRequest(
            text="this console answers only to 127.0.0.1, localhost or [::1]")
    return await handler(request)


def write_refusal(request: web.Request, token: str | None) -> tuple[int, str] | None:
    """Why a write request is refused (HTTP status, message), or None to let it through.

    A cross-site page can make a browser send a POST, but not with a JSON body, a custom
    header or an Origin that is ours: each of those alone would stop it; the token stops
    everyone else.
    """
    if token is None:
        return 403, "write actions are disabled: start the console with --allow-writes"
    origin = request.headers.get("Origin")
    own = f"{request.scheme}://{request.host}"
    if origin is not None and origin != own:
        return 403, "cross-site request refused"
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return 403, "cross-site request refused"
    if request.content_type != "application/json":
        return 415, "write actions take a JSON body (Content-Type: application/json)"
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(),
                                                             token.encode()):
        return 401, "a valid token is required for write actions"
    return None
