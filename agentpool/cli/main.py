"""The `agentpool` command line.

Each subcommand lives in its own module with `register(subparsers)`, which adds its parser and
sets `func`, a callable taking the parsed arguments and returning the exit code.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from types import ModuleType

from agentpool import (
    cancel_command,
    crd_command,
    dead_command,
    demo,
    get_command,
    simulate_command,
    stats_command,
    status_command,
    submit_command,
    tasks_command,
    wait_command,
    workers_command,
)

SUBCOMMANDS: list[ModuleType] = [
    crd_command,
    demo,
    simulate_command,
    submit_command,
    get_command,
    wait_command,
    cancel_command,
    stats_command,
    dead_command,
    tasks_command,
    workers_command,
    status_command,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentpool", description="Run AI-agent tasks from a Redis queue on Kubernetes."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code
