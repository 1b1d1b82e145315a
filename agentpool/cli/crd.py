"""`agentpool crd`: print the AgentPool CustomResourceDefinition as YAML."""

from __future__ import annotations

import argparse
import sys

from agentpool.cli.common import plain_command
from agentpool.crd import render_crd_yaml


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "crd",
        help="print the AgentPool CustomResourceDefinition",
        description="Print the AgentPool CustomResourceDefinition (YAML), e.g. "
        "`agentpool crd | kubectl apply -f -`.",
    )
    parser.set_defaults(func=run)


@plain_command
def run(args: argparse.Namespace) -> int:
    sys.stdout.write(render_crd_yaml())
    return 0
