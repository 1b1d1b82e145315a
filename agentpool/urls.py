"""Helpers for URLs that may carry credentials, and for texts that may quote them: Redis URLs
above all, any URL in an error or a program's output too."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import quote, unquote, urlsplit, urlunsplit

URL_PREFIXES = (
    "redis://", "rediss://", "redis+sentinel://", "rediss+sentinel://",
    "redis+cluster://", "rediss+cluster://",
)
"""What a Redis URL of the product starts with: one server, a Sentinel-managed primary or a
Redis Cluster (see `agentpool.connection`)."""
URL_PREFIXES_TEXT = ", ".join(URL_PREFIXES[:-1]) + " or " + URL_PREFIXES[-1]

MASK = "***"
_SHOWN_QUERY_KEYS = frozenset({"db"})
"""Query options whose value is shown when it is a number: a database number is no secret."""


def redact_url(url: str) -> str:
    """The URL with every secret replaced by ``***``, safe for messages and logs.

    ``redis://user:pw@host`` keeps the user name; a lone ``redis://secret@host`` is masked
    whole, because some clients read a single user-info part as the password. The query keeps
    its option names, not their values (but a database number's): a misspelled
    ``?pasword=`` is a secret as much as ``?password=``. A string that does not parse as a URL
    is masked entirely rather than risk echoing a secret.
    """
    scheme, _, rest = url.partition("://")
    if "@" in after_host(url):
        # A password with '/', '?' or '#' as is: the host part ends inside it. Everything up
        # to the last '@' may be secret.
        masked = f"{scheme}://{MASK}@{rest.rpartition('@')[2]}"
        return redact_url(masked) if masked != url else MASK
    try:
        parts = urlsplit(url)
        host = parts.hostname
        # Sentinel and cluster URLs name several host:port pairs, which no port parses from.
        port = None if "," in parts.netloc else parts.port
    except ValueError:
        return MASK
    netloc = parts.netloc
    changed = False
    if "@" in netloc:
        changed = True
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hostport}" if sep else f"{MASK}@{hostport}"
    elif not host and port is None and not parts.scheme:
        return MASK
    query = _masked_query(parts.query)
    fragment = MASK if parts.fragment else ""  # a secret's tail after a '#' written as is
    if not changed and query == parts.query and not fragment:
        return url
    rebuilt = f"{parts.scheme}://{netloc}{parts.path}"
    if query:
        rebuilt += f"?{query}"
    if fragment:
        rebuilt += f"#{fragment}"
    return rebuilt


def _masked_query(query: str) -> str:
    """The query with its option names as written and every value masked (but the numbers of
    _SHOWN_QUERY_KEYS); a part without '=' may be a value alone, so it is masked whole."""
    shown: list[str] = []
    for part in query.split("&") if query else []:
        key, equals, value = part.partition("=")
        if not equals:
            shown.append(MASK if part else part)
        elif not value or (value.isdigit() and unquote(key).lower() in _SHOWN_QUERY_KEYS):
            shown.append(part)
        else:
            shown.append(f"{key}={MASK}")
    return "&".join(shown)


def after_host(url: str) -> str:
    """What follows the URL's host part (path, query, fragment), as a parser reads it; the
    whole rest of the URL when it does not parse."""
    rest = url.partition("://")[2]
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return rest
    return rest[len(netloc):] if rest.startswith(netloc) else rest


_USER_QUERY_KEYS = frozenset({"password", "pass", "passwd", "token", "username", "user"})
"""Query parameters that name the URL's own user or password (`sentinel_password` names the
sentinels', which a URL for another user still needs)."""


def with_credentials(url: str, username: str, password: str) -> str:
    """The URL with its user info replaced by ``username:password`` (both percent-encoded) and
    any user or password in its query dropped (the admin password of a ``?password=`` must
    not reach the workers' URL); scheme, host, port, database and other options stay."""
    parts = urlsplit(url)
    hostport = parts.netloc.rpartition("@")[2]
    userinfo = f"{quote(username, safe='')}:{quote(password, safe='')}"
    query = "&".join(piece for piece in parts.query.split("&")
                     if unquote(piece.partition("=")[0]).lower() not in _USER_QUERY_KEYS)
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{hostport}", query=query))


URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,31}://\S+")
"""A URL in a text; its scheme bounded, so that a long run of word characters before a
``://`` costs a look of 32 characters from each place, not one to the run's start. No word
boundary before it: a URL glued to the word before (``failedredis://...``) is masked too."""
_TRAILING = ".,;:!?)]}>'\"`"
"""What ends a sentence or a quote around a URL rather than the URL."""
_REDACTED_SCHEMES = frozenset({"redis", "rediss", "redis+sentinel", "rediss+sentinel",
                               "redis+cluster", "rediss+cluster", "unix"})
"""URLs masked as `redact_url` masks them: every option value of their query too."""
_SECRET_QUERY_KEY = re.compile(r"pass|pwd|secret|token|key|sig|auth|cred|session", re.I)
"""Names of a query option whose value is a secret in a URL of another scheme
(``?access_token=``, ``?api_key=``, a presigned URL's ``X-Amz-Signature``)."""


def mask_urls(text: str, *, every_query_value: bool = False) -> str:
    """`text` with the secrets of every URL in it masked: a Redis URL's as `redact_url` masks
    them; any other's password (``https://user:***@host``; a lone ``https://***@host``, a
    token), and the values of its query options whose name says secret (``?token=***``), or
    of all its query options with `every_query_value` (what a status or an Event publishes).
    The rest of the URL stays, so that the text still says what failed."""
    if "://" not in text:
        return text
    return URL_IN_TEXT.sub(lambda match: _masked_match(match, every_query_value), text)


def _masked_match(match: re.Match[str], every_query_value: bool) -> str:
    found = match.group(0)
    url = found.rstrip(_TRAILING)
    scheme = url.partition("://")[0].lower()
    masked = (redact_url(url) if scheme in _REDACTED_SCHEMES
              else _mask_other(url, every_query_value))
    return masked + found[len(url):]


def _mask_other(url: str, every_query_value: bool = False) -> str:
    """A URL of another scheme than Redis's with its password and secret query values masked.

    An '@' after the host part is a password with '/', '?' or '#' written as is only when the
    host part does not parse (``https://user:pa/ss@host``: no port 'pa'): in a URL that parses,
    it belongs to the path (``https://www.npmjs.com/package/@types/node``)."""
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        scheme, _, rest = url.partition("://")
        if "@" not in rest:
            return MASK
        masked = f"{scheme}://{MASK}@{rest.rpartition('@')[2]}"
        return _mask_other(masked, every_query_value) if masked != url else MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hostport}" if sep and user else f"{MASK}@{hostport}"
    query = "&".join(_secret_masked(part, every_query_value)
                     for part in parts.query.split("&")) if parts.query else ""
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _secret_masked(option: str, every_query_value: bool) -> str:
    key, _, value = option.partition("=")
    secret = every_query_value or _SECRET_QUERY_KEY.search(unquote(key))
    return f"{key}={MASK}" if value and secret else option


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def redis_server(redis_url: str, namespace: str) -> str:
    """The Redis server a URL used from `namespace` names, as one text that is the same for
    the same server: the URL's scheme, hosts and database, without credentials or options;
    a Kubernetes Service's name written out (`name.namespace.svc`), the default port filled
    in, several hosts (Sentinel, Cluster) in order."""
    parts = urlsplit(redis_url)
    port = "26379" if parts.scheme.endswith("sentinel") else "6379"
    hosts = ",".join(sorted(_service_host(h, namespace, port)
                            for h in parts.netloc.rpartition("@")[2].split(",")))
    database = _query_db(parts.query) or parts.path.rstrip("/") or "/0"
    return f"{parts.scheme}://{hosts}{database}"


def _query_db(query: str) -> str | None:
    """The database a URL's ``?db=`` names (``/2``), which redis-py prefers to its path's;
    None without one."""
    for option in query.split("&"):
        key, _, value = option.partition("=")
        if unquote(key) == "db" and value.isdigit():
            return f"/{int(value)}"
    return None


def _service_host(host_port: str, namespace: str, default_port: str) -> str:
    """`host:port` with a Kubernetes Service's name as `name.namespace.svc`, as a pod in
    `namespace` resolves it (one label: a Service of its own namespace; two: `name.ns`)."""
    host_port = host_port.lower()
    if host_port.startswith("["):  # an IPv6 address
        return host_port if "]:" in host_port else f"{host_port}:{default_port}"
    host, _, port = host_port.partition(":")
    host = host.rstrip(".")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        labels = host.split(".")
        if "svc" in labels:
            host = ".".join(labels[:labels.index("svc") + 1])
        elif host != "localhost" and len(labels) <= 2:
            service_namespace = labels[1] if len(labels) == 2 else namespace
            host = f"{labels[0]}.{service_namespace}.svc"
    return f"{host}:{port or default_port}"
