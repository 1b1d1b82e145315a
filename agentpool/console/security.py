"""What keeps the console safe to expose: strict response headers on everything, and write
actions only when enabled, with the token, from the console's own pages."""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

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


async def secure_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every response's headers, set just before they are sent (`on_response_prepare`): also
    on a live stream, whose headers go out before its handler returns, and on an error."""
    response.headers.update(HEADERS)


_HOST_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?\Z")
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def host_name(host: str) -> str:
    """The name in a Host header, without port or brackets, in lower case ("" when it is not
    one)."""
    try:
        name = urlsplit("//" + host).hostname or ""
    except ValueError:
        return ""
    return name.rstrip(".").lower()


def allowed_name(name: str) -> str:
    """A name given to answer to (`example.com`, `::1`, `[::1]`) as `host_name` finds it in a
    Host header ("" when it is not a host name)."""
    name = name.strip()
    if ":" in name and not name.startswith("["):
        name = f"[{name}]"
    name = host_name(name)
    return name if _is_ip(name) or _HOST_NAME.match(name) else ""


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_loopback(name: str) -> bool:
    """`localhost` or an address of the loopback (127.0.0.0/8, ::1)."""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def default_allowed_hosts(listen: str) -> frozenset[str]:
    """The host names a console answers to unless told others: the loopback's, and the
    address it listens on."""
    return (LOOPBACK_NAMES | {allowed_name(listen)}) - {""}


def allowed_hosts(names: Iterable[str]) -> Middleware:
    """Refuse (421) a request whose Host header names none of `names`: a web page whose own
    name resolves to the console's address (DNS rebinding: a laptop's 127.0.0.1 behind
    `kubectl port-forward`) must not be able to read it. With a loopback name allowed, every
    loopback address (127.0.0.2, [::1]) is."""
    allowed = frozenset(allowed_name(n) for n in names) - {""}
    loopback = any(is_loopback(n) for n in allowed)
    shown = ", ".join(sorted(allowed))

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        name = host_name(request.host or "")
        if not name or not (name in allowed or (loopback and is_loopback(name))):
            raise web.HTTPMisdirectedRequest(
                text=f"this console answers only to {shown}: add the name you reach it by "
                "with --allowed-host")
        return await handler(request)

    return check


def own_origins(request: web.Request) -> set[str]:
    """The origins a page of this console has: the request's own scheme and, behind a proxy
    that ends TLS, the scheme it reports in ``X-Forwarded-Proto`` (a browser cannot send that
    header cross-site without a CORS preflight, which the console never grants)."""
    schemes = {request.scheme}
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    if forwarded in ("http", "https"):
        schemes.add(forwarded)
    return {f"{scheme}://{request.host}" for scheme in schemes}


def write_refusal(request: web.Request, token: str | None) -> tuple[int, str] | None:
    """Why a write request is refused (HTTP status, message), or None to let it through.

    A cross-site page can make a browser send a POST, but not with a JSON body, a custom
    header or an Origin that is ours: each of those alone would stop it; the token stops
    everyone else.
    """
    if token is None:
        return 403, "write actions are disabled: start the console with --allow-writes"
    origin = request.headers.get("Origin")
    if origin is not None and origin not in own_origins(request):
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
