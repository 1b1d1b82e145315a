"""Helpers for Redis URLs that may carry credentials."""

from __future__ import annotations

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
