"""The arguments of ``agentpool-worker`` and ``agentpool-operator``: none but ``--help``.

Both are configured by environment variables only (set by the operator or the chart);
``--help`` lists them from the settings' own definitions, so the list cannot drift, and any
other argument is refused in one line with exit status 2, as a bad setting is, the secrets of
any URL it holds masked.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
from collections.abc import Iterable, Sequence
from typing import NoReturn

from agentpool.urls import mask_urls

EXIT_CONFIG = 2


def refuse(line: str) -> NoReturn:
    """One line on stderr, exit status 2: what every bad configuration gets."""
    print(line, file=sys.stderr, flush=True)
    raise SystemExit(EXIT_CONFIG)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        refuse(f"{self.prog}: {mask_urls(message)} (see --help)")


def take_no_arguments(argv: Sequence[str], *, prog: str, description: str,
                      variables: Iterable[tuple[str, str]], exit_status: str,
                      env_prefix: str) -> None:
    """``--help`` prints the description, each variable (a heading such as ``NAME (default:
    x)`` and its rule) and the exit statuses, then exits 0; any argument exits 2."""
    width = max(60, min(100, shutil.get_terminal_size().columns - 2))
    lines = ["environment variables:"]
    for heading, rule in variables:
        lines.append(f"  {heading}")
        lines += textwrap.wrap(rule, width, initial_indent=" " * 6, subsequent_indent=" " * 6,
                               break_on_hyphens=False)
    epilog = "\n".join([*lines, "", textwrap.fill(exit_status, width)])
    parser = _Parser(prog=prog, description=textwrap.fill(description, width), epilog=epilog,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _, extra = parser.parse_known_args(list(argv))
    if extra:
        # a Redis URL given as an argument carries its password: never echoed
        got = mask_urls(" ".join(extra))
        refuse(f"{prog} takes no arguments (got {got!r}): configure it with "
               f"{env_prefix}* environment variables (see --help)")
