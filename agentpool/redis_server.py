"""Start and stop a private ``redis-server`` process on a free loopback port.

Used by the test suite, the local demo and the benchmarks, so that none of them needs a Redis
that someone else started.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import redis


class RedisServerError(RuntimeError):
    pass


_handed_out: set[int] = set()
_chooser = random.SystemRandom()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int) -> bool:
    for host in ("127.0.0.1", "0.0.0.0"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def free_port() -> int:
    """A port nobody listens on, chosen below the kernel's ephemeral range.

    A port the kernel hands out for ``bind(0)`` comes from the same range as the local ports of
    outgoing connections, so between choosing it and listening on it any client socket may take
    it ("address already in use"). Ports below that range are never taken that way, and a port
    is handed out once per process."""
    low, high = _ephemeral_range()
    candidates = range(10000, low) if low > 11000 else range(high + 1, 65536)
    for _ in range(200):
        port = _chooser.choice(candidates)
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    raise RedisServerError("no free port below the ephemeral range")


@dataclass
class RedisServer:
    """A ``redis-server`` child process; ``appendonly`` turns on AOF persistence,
    ``password`` makes clients authenticate (``requirepass``), ``replica_of`` makes it a
    replica of the server on that loopback port; ``extra_args`` go to redis-server as they
    are (e.g. ``("--rename-command", "ACL", "")``)."""

    port: int = 0
    appendonly: bool = False
    password: str | None = None
    replica_of: int | None = None
    workdir: Path | None = None
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _own_dir: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        """The URL a client connects with, the password included."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisServerError("redis-server not found on PATH (make setup installs it)")
        if self.workdir is None:
            self._own_dir = tempfile.TemporaryDirectory(prefix="agentpool-redis-")
            self.workdir = Path(self._own_dir.name)
        if not self.port:
            self.port = free_port()
        args = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.workdir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--daemonize", "no",
            "--loglevel", "warning",
        ]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        if self.replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        args += self.extra_args
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RedisServerError(f"redis-server exited at start: {err.strip()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    # with a password set, an unauthenticated PING is refused: still an answer
                    if sock.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                        return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RedisServerError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """kill -9, as a crashed machine would stop it."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def restart(self) -> None:
        """Stop and start on the same port and data directory (AOF, if on, is reloaded)."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir is not None:
            self._own_dir.cleanup()
            self._own_dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


SENTINEL_SERVICE = "agentpool"


@dataclass
class SentinelGroup:
    """A primary, ``replicas`` replicas (one by default) and three sentinels on loopback: a
    Redis that fails over.

    ``url`` is the ``redis+sentinel://`` URL every component connects with. Sentinels notice
    a dead primary after ``down_after_ms`` and promote the replica.
    """

    password: str | None = None
    down_after_ms: int = 1000
    failover_timeout_ms: int = 10000
    """Also how soon the sentinels may retry a failover of the same primary (twice this)."""
    sentinel_count: int = 3
    replicas: int = 1
    servers: list[RedisServer] = field(default_factory=list, init=False)
    sentinels: list[subprocess.Popen[bytes]] = field(default_factory=list, init=False)
    sentinel_ports: list[int] = field(default_factory=list, init=False)
    _dir: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{auth}{hosts}/{SENTINEL_SERVICE}/0"

    def start(self, timeout: float = 20.0) -> SentinelGroup:
        self._dir = tempfile.TemporaryDirectory(prefix="agentpool-sentinel-")
        root = Path(self._dir.name)
        # a replica (re)joining syncs at once instead of after the default 5 s delay
        fast_sync = ("--repl-diskless-sync-delay", "0")
        primary = RedisServer(password=self.password, workdir=root / "primary",
                              extra_args=fast_sync)
        primary.workdir.mkdir()  # type: ignore[union-attr]
        self.servers.append(primary.start())
        for index in range(self.replicas):
            replica = RedisServer(password=self.password, workdir=root / f"replica-{index}",
                                  replica_of=primary.port, extra_args=fast_sync)
            replica.workdir.mkdir()  # type: ignore[union-attr]
            self.servers.append(replica.start())
        binary = shutil.which("redis-server") or "redis-server"
        for index in range(self.sentinel_count):
            port = free_port()
            conf = root / f"sentinel-{index}.conf"
            lines = [
                f"port {port}",
                "bind 127.0.0.1",
                f"dir {root}",
                f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {primary.port} 2",
                f"sentinel down-after-milliseconds {SENTINEL_SERVICE} {self.down_after_ms}",
                f"sentinel failover-timeout {SENTINEL_SERVICE} {self.failover_timeout_ms}",
                f"sentinel parallel-syncs {SENTINEL_SERVICE} 1",
            ]
            if self.password:
                lines.append(f"sentinel auth-pass {SENTINEL_SERVICE} {self.password}")
            conf.write_text("\n".join(lines) + "\n")
            self.sentinels.append(subprocess.Popen(
                [binary, str(conf), "--sentinel", "--loglevel", "warning"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            ))
            self.sentinel_ports.append(port)
        try:
            self.wait_healthy(timeout)
        except RedisServerError:
            self.close()
            raise
        return self

    def wait_healthy(self, timeout: float = 30.0, *, synced: bool = True) -> None:
        """Until every sentinel sees every replica up, and each replica has the primary's
        writes: a steady state from which a failover loses nothing acknowledged. With
        ``synced`` False, a replica's link up is enough (under a steady load a replica is
        always a few writes behind)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._sentinels_agree() and self._replicas_synced(exact=synced):
                return
            time.sleep(0.1)
        raise RedisServerError("the sentinels do not see a healthy primary and replica")

    def primary_port(self) -> int | None:
        """The primary's port as the first sentinel that answers sees it."""
        for port in self.sentinel_ports:
            with contextlib.suppress(redis.RedisError), sentinel_admin(port) as sentinel:
                address = sentinel.sentinel_get_master_addr_by_name(SENTINEL_SERVICE)
                if address:
                    return int(address[1])
        return None

    def server_on(self, port: int) -> RedisServer:
        return next(server for server in self.servers if server.port == port)

    def wait_demoted(self, port: int, within: float = 30.0) -> None:
        """Wait until the server on `port` is a replica. After SENTINEL FAILOVER the old
        primary takes writes until the sentinels demote it, and those writes are lost."""
        deadline = time.monotonic() + within
        with redis.Redis.from_url(self.server_on(port).url) as server:
            while True:
                with contextlib.suppress(redis.RedisError):
                    role = server.role()[0]
                    if role in (b"slave", "slave"):
                        return
                if time.monotonic() > deadline:
                    raise RedisServerError(f"the server on port {port} was not demoted")
                time.sleep(0.05)

    def restore(self, port: int, *, primary: int, synced: bool = True) -> None:
        """Start a killed server again, as a replica of the current primary."""
        server = self.server_on(port)
        server.replica_of = primary
        server.start()
        self.wait_healthy(synced=synced)

    def _sentinels_agree(self) -> bool:
        """Every sentinel knows the other sentinels and sees every replica up."""
        primary = self.primary_port()
        replicas = {server.port for server in self.servers if server.port != primary}
        try:
            for port in self.sentinel_ports:
                with sentinel_admin(port) as sentinel:
                    seen = sentinel.sentinel_slaves(SENTINEL_SERVICE)
                    others = sentinel.sentinel_sentinels(SENTINEL_SERVICE)
                healthy = {
                    int(r["port"]) for r in seen
                    if not (r["is_sdown"] or r["is_odown"] or r["is_disconnected"])
                }
                if not replicas <= healthy or len(others) < self.sentinel_count - 1:
                    return False
        except redis.RedisError:
            return False
        return True

    def _replicas_synced(self, *, exact: bool = True) -> bool:
        primary = self.primary_port()
        try:
            with sentinel_admin(primary or 0, self.password) as server:
                offset = int(server.info("replication")["master_repl_offset"])
            for replica in self.servers:
                if replica.port == primary:
                    continue
                with sentinel_admin(replica.port, self.password) as server:
                    info = server.info("replication")
                if info.get("master_link_status") != "up":
                    return False
                if exact and int(info.get("slave_repl_offset", -1)) < offset:
                    return False
        except (redis.RedisError, KeyError, ValueError):
            return False
        return True

    def close(self) -> None:
        for process in self.sentinels:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=10)
        self.sentinels.clear()
        _close_servers(self.servers, self._dir)
        self._dir = None

    def __enter__(self) -> SentinelGroup:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_servers(servers: list[RedisServer],
                   folder: tempfile.TemporaryDirectory[str] | None) -> None:
    """Stop every server of a group and remove the folder they kept their files in."""
    for server in servers:
        server.close()
    servers.clear()
    if folder is not None:
        folder.cleanup()


def sentinel_admin(port: int, password: str | None = None) -> redis.Redis:
    """A plain client of one loopback server or sentinel, for set-up and checks."""
    return redis.Redis(port=port, password=password, socket_timeout=2, decode_responses=True)


CLUSTER_BUS_OFFSET = 10000
"""A cluster node also listens on its port + 10000 (the cluster bus)."""


def cluster_port() -> int:
    """A free port whose cluster bus port is free too, both below the ephemeral range."""
    low, _ = _ephemeral_range()
    for _ in range(200):
        port = free_port()
        bus = port + CLUSTER_BUS_OFFSET
        if bus < min(low, 65536) and bus not in _handed_out and _bindable(bus):
            _handed_out.add(bus)
            return port
    raise RedisServerError("no free pair of a port and its cluster bus port")


@dataclass
class RedisCluster:
    """A Redis Cluster of `primaries` primaries, each with `replicas` replicas, on free
    loopback ports.

    ``url`` is the ``redis+cluster://`` URL every component connects with; the slots are
    spread evenly over the primaries by ``redis-cli --cluster create`` (by hand below three
    primaries, which it refuses, and then without replicas).
    """

    primaries: int = 3
    password: str | None = None
    replicas: int = 0
    node_timeout_ms: int = 5000
    """How long a node may not answer before the others count it failed (and a replica of a
    failed primary takes its place)."""
    servers: list[RedisServer] = field(default_factory=list, init=False)
    _dir: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        hosts = ",".join(f"127.0.0.1:{server.port}" for server in self.servers)
        return f"redis+cluster://{auth}{hosts}/"

    @property
    def ports(self) -> list[int]:
        return [server.port for server in self.servers]

    def start(self, timeout: float = 30.0) -> RedisCluster:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RedisServerError("redis-cli not found on PATH (Debian package redis-tools)")
        self._dir = tempfile.TemporaryDirectory(prefix="agentpool-cluster-")
        root = Path(self._dir.name)
        try:
            if self.replicas and self.primaries < 3:
                raise RedisServerError("a cluster with replicas needs 3 primaries at least")
            for index in range(self.primaries * (1 + self.replicas)):
                workdir = root / f"node-{index}"
                workdir.mkdir()
                self.servers.append(RedisServer(
                    port=cluster_port(), password=self.password, workdir=workdir,
                    extra_args=("--cluster-enabled", "yes",
                                "--cluster-config-file", str(workdir / "nodes.conf"),
                                "--cluster-node-timeout", str(self.node_timeout_ms)),
                ).start())
            if self.primaries >= 3:
                self._create(cli, timeout)
            else:  # redis-cli --cluster create wants 3 primaries at least
                self._assign_slots()
            self.wait_ok(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def _create(self, cli: str, timeout: float) -> None:
        args = [cli, "--cluster", "create", *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas", str(self.replicas), "--cluster-yes"]
        if self.password:
            args += ["-a", self.password, "--no-auth-warning"]
        created = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        if created.returncode != 0:
            raise RedisServerError(
                f"redis-cli --cluster create failed: {created.stdout}{created.stderr}".strip())

    def _assign_slots(self) -> None:
        """Split the 16384 slots over the primaries by hand and introduce them."""
        share = -(-16384 // self.primaries)
        for index, port in enumerate(self.ports):
            with sentinel_admin(port, self.password) as node:
                first, last = index * share, min(16383, (index + 1) * share - 1)
                node.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
                if index:
                    node.execute_command("CLUSTER", "MEET", "127.0.0.1", self.ports[0])

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every node reports ``cluster_state:ok`` and knows every other node."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._node_ok(port) for port in self.ports):
                return
            time.sleep(0.05)
        raise RedisServerError("the cluster did not reach cluster_state:ok")

    def _node_ok(self, port: int) -> bool:
        """The node sees the whole cluster in state ok and, with replicas, its replication
        link is up (a primary has all its replicas, a replica its primary)."""
        try:
            with sentinel_admin(port, self.password) as node:
                info = node.execute_command("CLUSTER", "INFO")
                replication = node.info("replication") if self.replicas else {}
        except redis.RedisError:
            return False
        text = info if isinstance(info, str) else info.decode()
        fields = dict(line.split(":", 1) for line in text.split() if ":" in line)
        if (fields.get("cluster_state") != "ok"
                or fields.get("cluster_known_nodes") != str(len(self.servers))):
            return False
        if replication.get("role") == "master":
            return int(replication.get("connected_slaves", 0)) >= self.replicas
        return not self.replicas or replication.get("master_link_status") == "up"

    def close(self) -> None:
        _close_servers(self.servers, self._dir)
        self._dir = None

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
