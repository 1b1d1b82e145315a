"""The source of each protocol script: its own file under ``agentpool/lua`` preceded by the
definitions of ``common.lua`` it uses, directly or through another definition.

Redis runs a script's whole text on every call, and Lua 5.1 builds a new closure for each
``local function`` and a new string for each ``P .. 'suffix'`` it passes, so the parts of the
shared prelude a script never uses still cost each call (about 6 µs of Redis's time per call
when the whole prelude was prepended, as much as the script's ZADD and HSET together).

``common.lua`` is read as a sequence of top-level definitions: each starts with a line
``local NAME ...`` or ``local function NAME`` at column 0, together with the comment lines
just above it, and runs until the next one. A definition is included when its name occurs in
the script or in another included definition; the included ones keep their order in the file,
so each still follows what it uses. Names in comments do not count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

_DEFINITION = re.compile(r"^local (?:function (\w+)|(\w+(?:\s*,\s*\w+)*))")


@dataclass(frozen=True)
class _Definition:
    names: tuple[str, ...]
    text: str


def _definitions(common: str) -> list[_Definition]:
    """``common.lua`` cut into its top-level definitions (comments above one belong to it)."""
    found: list[_Definition] = []
    names: tuple[str, ...] = ()
    lines: list[str] = []
    comments: list[str] = []
    for line in common.splitlines():
        match = _DEFINITION.match(line)
        if match:
            if names:
                found.append(_Definition(names, "\n".join(lines)))
            listed = match[1] or match[2]
            names = tuple(n.strip() for n in listed.split(","))
            lines = [*comments, line]
            comments = []
        elif line.startswith("--") or not line.strip():
            comments.append(line)
        else:
            lines += [*comments, line]
            comments = []
    if names:
        found.append(_Definition(names, "\n".join(lines)))
    return found


def _names_used(text: str) -> set[str]:
    """The identifiers `text` names in code: neither comments nor string literals count (no
    string literal of the scripts holds ``--`` or an escaped quote, so that a task field named
    like a definition, ``'finished'``, brings no code in); a field after a dot (``f.ev``) is not
    a name."""
    code = re.sub(r"--[^\n]*", "", text)
    code = re.sub(r"'[^'\n]*'|\"[^\"\n]*\"", "''", code)
    return set(re.findall(r"(?<![\w.])[A-Za-z_]\w*", code))


def assemble(common: str, body: str) -> str:
    """`body` preceded by the definitions of `common` it needs."""
    definitions = _definitions(common)
    needed: set[int] = set()
    pending = [body]
    while pending:
        used = _names_used(pending.pop())
        for i, definition in enumerate(definitions):
            if i not in needed and used.intersection(definition.names):
                needed.add(i)
                pending.append(definition.text)
    included = [d.text for i, d in enumerate(definitions) if i in needed]
    return "\n".join([*included, body])


@cache
def script_source(name: str) -> str:
    """The text of protocol script `name` (``agentpool/lua/<name>.lua``) as Redis runs it."""
    folder = resources.files("agentpool") / "lua"
    return assemble((folder / "common.lua").read_text(), (folder / f"{name}.lua").read_text())
