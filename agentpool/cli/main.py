"""The `agentpool` command line.

Each subcommand lives in its own module with `register(subparsers)`, which adds its parser and
sets `func`, a callable taking the parsed arguments and returning the exit code.

The subcommands (and Redis, rich, the Kubernetes client with them) are imported inside `main`,
not here: a Ctrl-C while they load is exit 130, like one during a command, not a traceback.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

EXIT_INTERRUPTED = 130
"""agentpool.cli.common's, which a Ctrl-C may come before."""


class OneLineParser(argparse.ArgumentParser):
    """Bad input is one line on stderr and exit 2, as every other error of the CLI, not
    argparse's usage block before it (`--help` shows the usage). The arguments it quotes have
    the secrets of their URLs masked: a Redis URL given where another argument was wanted
    (`-s URL`, an option misspelled before it) carries its password."""

    def error(self, message: str) -> NoReturn:
        from agentpool.urls import mask_urls

        self.exit(2, f"{self.prog}: {mask_urls(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from agentpool.cli import (
        cancel,
        console,
        crd,
        dead,
        demo,
        get,
        limits,
        simulate,
        stats,
        status,
        submit,
        tasks,
        tenants,
        wait,
        workers,
    )

    parser = OneLineParser(
        prog="agentpool", description="Run AI-agent tasks from a Redis queue on Kubernetes."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (crd, demo, simulate, submit, get, wait, cancel, stats, dead, tasks, tenants,
                   workers, limits, status, console):
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        if interrupted(exc):
            return EXIT_INTERRUPTED
        raise


def interrupted(exc: BaseException) -> bool:
    """Whether `exc` came of a Ctrl-C: Python 3.11 turns one that lands while a class is
    created (a descriptor's __set_name__, as a module loads) into a RuntimeError."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def _main(argv: Sequence[str] | None) -> int:
    # redis-py logs a Cluster's failed topology refreshes as errors of its own; the commands
    # say what is wrong in their own line.
    logging.getLogger("redis").setLevel(logging.CRITICAL)
    for stream in (sys.stdout, sys.stderr):
        # Text from Redis may hold a lone surrogate (JSON's "\ud83d" decodes to one), which
        # no encoding writes: print it as its escape rather than fail.
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the subcommand's own --help lists what it takes
        parser_of(parser, args.command).error(f"unrecognized arguments: {' '.join(unknown)}")
    code: int = args.func(args)
    return code


def parser_of(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of `command`, a subcommand of `parser`."""
    commands = next(action for action in parser._actions
                    if isinstance(action, argparse._SubParsersAction))
    sub: argparse.ArgumentParser = commands.choices[command]
    return sub
