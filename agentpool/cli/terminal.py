"""Text from Redis made safe to show on a terminal.

A payload, an error, a progress message, a tenant or a worker name is anybody's text: an
escape sequence in it would clear the screen, retitle the window or write the clipboard
(OSC 52) of whoever lists the queue. Every table cell, title, note and line the CLI prints
for people goes through :func:`printable`; ``-o json`` needs nothing of it (JSON escapes
control characters itself).

Its own module, not `common`'s: `views` needs it and `common` imports `views`.
"""

from __future__ import annotations

import re

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
"""C0 and C1 control characters and DEL: what a terminal may act on rather than show."""


def printable(text: str, *, keep: str = "") -> str:
    """`text` with each control character shown as its escape (ESC as the four characters
    ``\\x1b``), but those in `keep` (a cell's newlines and tabs, where it may have them)."""
    return CONTROL.sub(lambda found: found[0] if found[0] in keep
                       else f"\\x{ord(found[0]):02x}", text)
