"""`agentpool console`: the web console (fleet, pools, tasks, dead letters), served locally.

Pools come from Kubernetes when there is a kubeconfig or the console runs in a cluster,
otherwise from Redis alone (every queue found there, or the ones given with --queue). Tasks,
workers and dead letters always come from the Redis given with --redis-url.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

from agentpool.cli.common import (
    CLI_CONNECT_TIMEOUT,
    CommandFailed,
    UsageError,
    add_redis_option,
    command,
    redis_failure,
    redis_url,
)
from agentpool.cli.status import _kubeconfig_paths
from agentpool.client import Client
from agentpool.protocol import QUEUE_NAME
from agentpool.redis_errors import REDIS_FAILURES
from agentpool.urls import redis_server

ENV_TOKEN = "AGENTPOOL_CONSOLE_TOKEN"
MIN_TOKEN_CHARS = 16
DEFAULT_PORT = 8080
NO_KUBE = ("no kubeconfig, not in a cluster: every queue found in Redis; --kubeconfig shows "
           "the AgentPools of a cluster")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "console",
        help="web console: fleet, pools, tasks and dead letters, live in a browser",
        description="Serve the web console on --host:--port (default 127.0.0.1:8080) and "
        "print its URL. Read-only unless started with --allow-writes, which needs a token "
        f"(--token-file or ${ENV_TOKEN}) that the page asks for before cancel, requeue or "
        "purge. Pools come from Kubernetes when a kubeconfig or an in-cluster service account "
        "is found, else from Redis alone.",
    )
    add_redis_option(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--allowed-host", action="append", metavar="NAME",
                        help="a host name the console answers to, as browsers reach it "
                        "(repeatable; default: localhost, 127.0.0.1, [::1] and the --host "
                        "address); requests naming another host are refused, so that no web "
                        "page can read the console by pointing its own name at its address")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("-q", "--queue", action="append", metavar="NAME",
                        help="without Kubernetes: show this queue (repeatable; default: "
                        "every queue found in Redis)")
    parser.add_argument("--redis-only", action="store_true",
                        help="do not read AgentPools from Kubernetes even when configured")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-n", "--namespace", action="append",
                       help="namespace of the pools (repeatable; default: the context's)")
    where.add_argument("-A", "--all-namespaces", action="store_true",
                       help="pools of every namespace")
    parser.add_argument("--kubeconfig", metavar="PATH", help="kubeconfig file")
    parser.add_argument("--context", help="kubeconfig context")
    parser.add_argument("--allow-writes", action="store_true",
                        help="enable cancel, requeue and purge (they need the token)")
    parser.add_argument("--token-file", metavar="PATH", type=Path,
                        help=f"file holding the write token (default: ${ENV_TOKEN})")
    # a server stops on Ctrl-C: that is a normal end, like leaving a --watch view
    parser.set_defaults(func=run, watch=True)


def write_token(args: argparse.Namespace) -> str | None:
    token: str
    if not args.allow_writes:
        return None
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            raise UsageError(f"cannot read --token-file {args.token_file}: "
                             f"{exc.strerror or exc}") from None
    else:
        token = str(os.environ.get(ENV_TOKEN, "")).strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise UsageError(f"--allow-writes needs a token of at least {MIN_TOKEN_CHARS} "
                         f"characters in --token-file or ${ENV_TOKEN}")
    return token


def check_args(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, got {args.port}")
    for name in args.queue or []:
        if not QUEUE_NAME.match(name):
            raise UsageError(f"invalid queue name {name!r}")
    if redis_url(args) is None:
        raise UsageError("the console reads tasks from Redis: pass --redis-url or set "
                         "AGENTPOOL_REDIS_URL")


def kube_configured(kubeconfig: str | None) -> bool:
    """A kubeconfig to read, or a cluster to run in (`KubeReader.from_config` says what is
    wrong with one that is there)."""
    return _kubeconfig_paths(kubeconfig) is not None or bool(
        os.environ.get("KUBERNETES_SERVICE_HOST"))


async def redis_problem(client: Client) -> str | None:
    """Why Redis does not answer the console right now, None when it does."""
    try:
        async with asyncio.timeout(CLI_CONNECT_TIMEOUT + 1):
            await client.redis.ping()
    except REDIS_FAILURES as exc:
        return redis_failure(client.url, exc)
    return None


@command
async def run(args: argparse.Namespace) -> int:
    check_args(args)
    token = write_token(args)
    from aiohttp import web

    from agentpool.cli.status import KubeReader
    from agentpool.console.app import ConsoleConfig, build_app
    from agentpool.console.security import allowed_name, default_allowed_hosts
    from agentpool.console.sources import Sources

    kube: KubeReader | None = None
    namespaces: list[str] | None = None
    if not (args.redis_only or args.queue):
        chosen = bool(args.kubeconfig or args.context or args.namespace or args.all_namespaces)
        try:
            if not chosen and not kube_configured(args.kubeconfig):
                raise CommandFailed(NO_KUBE)
            kube = await asyncio.to_thread(KubeReader.from_config, args.kubeconfig,
                                           args.context)
        except (CommandFailed, UsageError) as exc:
            if chosen:
                raise
            print(f"agentpool console: pools from Redis alone ({exc})", file=sys.stderr)
        else:
            namespaces = None if args.all_namespaces else (args.namespace
                                                            or [kube.default_namespace])
    client = Client.from_url(redis_url(args), connect_timeout=CLI_CONNECT_TIMEOUT,
                             client_name="agentpool-console")
    problem = await redis_problem(client)
    url = redis_url(args)
    sources = Sources(client.redis, kube=kube, namespaces=namespaces, queues=args.queue or (),
                      own_server=None if kube is None or url is None
                      else redis_server(url, kube.default_namespace))
    for name in args.allowed_host or []:
        if not allowed_name(name):
            raise UsageError(f"--allowed-host {name!r} is not a host name")
    hosts = frozenset(args.allowed_host or default_allowed_hosts(args.host))
    runner = web.AppRunner(build_app(sources, ConsoleConfig(token=token, allowed_hosts=hosts)),
                           access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, args.host, args.port)
        try:
            await site.start()
        except OSError as exc:
            raise CommandFailed(f"cannot listen on {args.host}:{args.port}: "
                                f"{exc.strerror or exc}") from None
        port = runner.addresses[0][1]
        host = f"[{args.host}]" if ":" in args.host else args.host
        mode = "write actions enabled (token required)" if token else "read-only"
        where = f"pools from Kubernetes ({kube.host})" if kube else "pools from Redis"
        print(f"agentpool console: http://{host}:{port}/ ({mode}; {where})", flush=True)
        if problem:
            print(f"agentpool console: warning: {problem} (serving anyway: every request "
                  "asks Redis again)", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
        await client.aclose()
        if kube is not None:
            kube.close()
    return 0
