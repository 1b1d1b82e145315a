"""kubectl and helm as subprocesses, deadline-bound waits, a self-healing port-forward."""

from __future__ import annotations

import atexit
import json
import re
import shlex
import signal
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_COMMAND_TIMEOUT = 120.0


class CommandError(Exception):
    """A command exited non-zero or ran out of time; str() is one readable paragraph."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stdout: str,
                 stderr: str, picture: str = "") -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.picture = picture
        """Of the cluster, when the command was a wait that ran out (Waiter.picture)."""
        super().__init__(str(self))

    def __str__(self) -> str:
        how = "timed out" if self.returncode is None else f"exited {self.returncode}"
        output = (self.stderr.strip() or self.stdout.strip())[-2000:]
        return (f"`{shlex.join(self.argv)}` {how}" + (f": {output}" if output else "")
                + (f"\n{self.picture}" if self.picture else ""))

    def with_picture(self, picture: str) -> CommandError:
        return CommandError(self.argv, self.returncode, self.stdout, self.stderr, picture)


def run(argv: Sequence[str], *, input: str | None = None, timeout: float = DEFAULT_COMMAND_TIMEOUT,
        env: Mapping[str, str] | None = None, check: bool = True,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                              timeout=timeout, env=None if env is None else dict(env), cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        raise CommandError(argv, None, _text(exc.stdout), _text(exc.stderr)
                           + f"\n(no answer within {timeout:g}s)") from None
    except FileNotFoundError:
        raise CommandError(argv, 127, "", f"{argv[0]}: command not found") from None
    if check and done.returncode != 0:
        raise CommandError(argv, done.returncode, done.stdout, done.stderr)
    return done


def _text(data: str | bytes | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


# -- processes left running ------------------------------------------------------------------

_children: list[subprocess.Popen[Any]] = []


def spawn(argv: Sequence[str], **options: Any) -> subprocess.Popen[Any]:
    """Popen for a process the suite leaves running (operator, port-forward, background CLI).

    In a session of its own: a Ctrl-C at the terminal reaches pytest alone, whose teardown
    still needs these processes (a local operator removes its pools' finalizers) and then
    stops them itself. Whatever still runs when the interpreter exits is ended then.
    """
    process: subprocess.Popen[Any] = subprocess.Popen(list(argv), start_new_session=True,
                                                      **options)
    _children.append(process)
    return process


def end_process(process: subprocess.Popen[Any], *, grace: float = 10.0,
                interrupt: bool = False) -> None:
    """SIGINT (interrupt) or SIGTERM, then SIGKILL after `grace` seconds."""
    if process.poll() is not None:
        return
    if interrupt:
        process.send_signal(signal.SIGINT)
    else:
        process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


@contextmanager
def termination_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP (a terminal closed) stop pytest the way Ctrl-C does: its teardown
    then removes what the suite made and stops the processes it started, which are in
    sessions of their own (spawn) and do not get the terminal's signals."""
    previous = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:
            previous[signum] = signal.signal(signum, _interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@atexit.register
def end_children() -> None:
    """Children that no teardown stopped (pytest killed by a signal it turns into an
    interrupt, a fixture that never got to its teardown)."""
    for process in _children:
        end_process(process, grace=5)
    _children.clear()


@dataclass(frozen=True)
class Kubectl:
    """kubectl bound to one namespace (or none); the kubeconfig comes from the environment."""

    namespace: str | None = None
    binary: str = "kubectl"

    def __call__(self, *args: str, input: str | None = None, check: bool = True,
                 timeout: float = DEFAULT_COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        argv = [self.binary]
        if self.namespace:
            argv += ["--namespace", self.namespace]
        return run([*argv, *args], input=input, check=check, timeout=timeout)

    def in_namespace(self, namespace: str | None) -> Kubectl:
        return replace(self, namespace=namespace)

    def json(self, *args: str, timeout: float = DEFAULT_COMMAND_TIMEOUT) -> Any:
        return json.loads(self(*args, "--output", "json", timeout=timeout).stdout)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        out = self("get", kind, name, "--output", "json", "--ignore-not-found").stdout
        if not out.strip():
            return None
        found: dict[str, Any] = json.loads(out)
        return found

    def items(self, kind: str, selector: str | None = None) -> list[dict[str, Any]]:
        args = ["get", kind] + (["--selector", selector] if selector else [])
        listed: list[dict[str, Any]] = self.json(*args).get("items", [])
        return listed

    def apply(self, manifest: Mapping[str, Any] | str, *,
              check: bool = True, server_side: bool = False) -> subprocess.CompletedProcess[str]:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        args = ["apply", "--filename", "-"]
        if server_side:
            args += ["--server-side", "--force-conflicts", "--field-manager", "agentpool-e2e"]
        return self(*args, input=text, check=check)


# -- waiting -------------------------------------------------------------------------------


@dataclass
class Waiter:
    """Polls a probe until a condition holds or a deadline passes; never a bare sleep.

    `scale` stretches every deadline (E2E_TIMEOUT_SCALE); `diagnose` adds a picture of the
    cluster to the failure message.
    """

    scale: float = 1.0
    diagnose: Callable[[], str] | None = None

    def until(self, probe: Callable[[], T], ok: Callable[[T], bool], *, timeout: float,
              what: str, interval: float = 2.0) -> T:
        budget = timeout * self.scale
        deadline = time.monotonic() + budget
        seen: list[T] = []
        error: CommandError | None = None
        while True:
            try:
                value = probe()
            except CommandError as exc:
                error = exc
            else:
                error = None
                if ok(value):
                    return value
                seen[:] = [value]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(self._timeout_message(what, budget, seen, error))
            time.sleep(min(interval, remaining))

    def true(self, probe: Callable[[], bool], *, timeout: float, what: str,
             interval: float = 2.0) -> None:
        self.until(probe, bool, timeout=timeout, what=what, interval=interval)

    def picture(self) -> str:
        """What `diagnose` shows of the cluster now ('' without one): for a wait that is not
        a probe of this Waiter (a command's own --timeout) to end with the same picture."""
        if self.diagnose is None:
            return ""
        try:
            return self.diagnose()
        except Exception as exc:
            return f"(no diagnostics: {exc})"

    def _timeout_message(self, what: str, budget: float, seen: list[Any],
                         error: CommandError | None) -> str:
        lines = [f"timed out after {budget:g}s waiting for {what}"]
        if seen:
            lines.append(f"last seen: {seen[0]!r}"[:3000])
        if error is not None:
            lines.append(f"last error: {error}")
        picture = self.picture()
        if picture:
            lines.append(picture)
        return "\n".join(lines)


# -- kubectl output ------------------------------------------------------------------------


def parse_table(text: str) -> list[dict[str, str]]:
    """Rows of `kubectl get` default output, keyed by column header.

    kubectl aligns every cell under its header and prints nothing for a missing value (an
    AgentPool without status), so cells are cut at the headers' positions, not at blanks.
    """
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    header = lines[0]
    starts = [match.start() for match in re.finditer(r"\S+", header)]
    names = header.split()
    rows = []
    for line in lines[1:]:
        if any(0 < start < len(line) and line[start - 1] != " " for start in starts):
            raise ValueError(f"row {line!r} is not aligned with the header {header!r}")
        ends = [*starts[1:], len(line)]
        rows.append({name: line[start:end].strip()
                     for name, start, end in zip(names, starts, ends, strict=True)})
    return rows


KUBECTL_AGE = re.compile(r"^(\d+[smhdy])+$")
"""An age as kubectl prints it: 45s, 3m12s, 5h, 2d3h, 400d."""


def condition(obj: Mapping[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for item in ((obj or {}).get("status") or {}).get("conditions") or []:
        if item.get("type") == type_:
            found: dict[str, Any] = item
            return found
    return None


def is_terminating(obj: Mapping[str, Any]) -> bool:
    return bool(obj.get("metadata", {}).get("deletionTimestamp"))


def is_ready(pod: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


POD_TROUBLE = frozenset({
    "ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName",
    "CrashLoopBackOff", "CreateContainerConfigError", "CreateContainerError",
    "RunContainerError",
})


def pod_troubles(pods: Sequence[Mapping[str, Any]]) -> list[str]:
    """Waiting reasons that will not clear by themselves, one line per container."""
    found = []
    for pod in pods:
        status_of_pod = pod.get("status") or {}
        statuses = [*(status_of_pod.get("initContainerStatuses") or []),
                    *(status_of_pod.get("containerStatuses") or [])]
        for status in statuses:
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in POD_TROUBLE:
                found.append(f"pod {pod['metadata']['name']}: {waiting['reason']}: "
                             f"{waiting.get('message', '')}".strip())
    return found


def snapshot(kubectl: Kubectl, extra: Callable[[], str] | None = None) -> str:
    """Objects, recent events and extra text (operator logs) for a failure message."""
    parts = []
    commands: list[tuple[str, ...]] = [
        ("get", "agentpools"),
        ("get", "statefulsets,deployments,replicasets,pods", "--output", "wide"),
        ("get", "events", "--sort-by", ".metadata.creationTimestamp"),
    ]
    for args in commands:
        try:
            out = kubectl(*args, timeout=30).stdout.rstrip()
        except CommandError as exc:
            out = str(exc)
        lines = out.splitlines()
        parts.append(f"$ kubectl -n {kubectl.namespace} {shlex.join(args)}\n"
                     + "\n".join(lines[-30:]))
    if extra is not None:
        parts.append(extra())
    return "\n".join(["--- cluster ---", *parts])


# -- port-forward --------------------------------------------------------------------------

FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) -> \d+")


@dataclass
class PortForward:
    """`kubectl port-forward` to a Service, restarted on the same local port if it dies.

    kubectl picks a free local port the first time; restarts reuse it, so URLs handed out
    (to the CLI and to a local operator's address map) stay valid.
    """

    kubectl: Kubectl
    target: str
    remote_port: int
    log_path: Path
    start_timeout: float = 30.0
    local_port: int | None = None
    restarts: int = 0
    _process: subprocess.Popen[str] | None = field(default=None, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _watchdog: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> int:
        self._spawn()
        self._watchdog = threading.Thread(target=self._watch, name="port-forward", daemon=True)
        self._watchdog.start()
        assert self.local_port is not None
        return self.local_port

    def stop(self) -> None:
        self._stopping.set()
        if self._watchdog is not None:
            self._watchdog.join(timeout=10)
        with self._lock:
            process = self._process
        if process is not None:
            end_process(process)

    @property
    def alive(self) -> bool:
        with self._lock:
            return self._process is not None and self._process.poll() is None

    def _argv(self) -> list[str]:
        ports = f"{self.local_port or ''}:{self.remote_port}"
        namespace = ["--namespace", self.kubectl.namespace] if self.kubectl.namespace else []
        return [self.kubectl.binary, *namespace, "port-forward", "--address", "127.0.0.1",
                self.target, ports]

    def _spawn(self) -> None:
        argv = self._argv()
        log = self.log_path.open("a", encoding="utf-8")
        log.write(f"$ {shlex.join(argv)}\n")
        log.flush()
        process = spawn(argv, stdout=subprocess.PIPE, stderr=log, text=True)
        log.close()
        try:
            port = self._await_forwarding(process)
        except BaseException:
            end_process(process)
            raise
        with self._lock:
            self._process = process
            self.local_port = port
        threading.Thread(target=self._drain, args=(process,), daemon=True).start()

    def _await_forwarding(self, process: subprocess.Popen[str]) -> int:
        """Read kubectl's stdout until it names the local port (or give up)."""
        found: list[int] = []
        ready = threading.Event()

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                match = FORWARDING.search(line)
                if match:
                    found.append(int(match[1]))
                    ready.set()
                    return
            ready.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        ready.wait(self.start_timeout)
        if not found:
            end_process(process, grace=0)
            tail = self.log_path.read_text(encoding="utf-8", errors="replace")[-1500:]
            raise CommandError(self._argv(), process.returncode, "",
                               f"no port forwarded within {self.start_timeout:g}s\n{tail}")
        return found[0]

    @staticmethod
    def _drain(process: subprocess.Popen[str]) -> None:
        """Keep reading stdout so that kubectl never blocks on a full pipe."""
        assert process.stdout is not None
        for _ in process.stdout:
            pass

    def _watch(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                process = self._process
            if process is not None and process.poll() is not None:
                if self._stopping.wait(1.0):
                    return
                try:
                    self._spawn()
                    self.restarts += 1
                except CommandError:
                    continue
            self._stopping.wait(1.0)


# -- nodes ---------------------------------------------------------------------------------


def missing_rights(kube: Kubectl, *checks: Sequence[str]) -> list[str]:
    """The `kubectl auth can-i` questions (e.g. ("patch", "nodes")) not answered yes."""
    missing = []
    for question in checks:
        done = kube("auth", "can-i", *question, check=False, timeout=30)
        if done.stdout.strip() != "yes":
            missing.append(" ".join(question))
    return missing


@contextmanager
def uncordoned_afterwards(kube: Kubectl, node: str) -> Iterator[None]:
    """Uncordon `node` when the block ends, unless it was cordoned before it (by someone
    else, for their own reasons). When the block failed, a failure to uncordon is a warning:
    it must not take the place of the block's own error."""
    cluster = kube.in_namespace(None)
    before = cluster.get("node", node) or {}
    ours = not (before.get("spec") or {}).get("unschedulable")
    try:
        yield
    except BaseException:
        if ours:
            done = cluster("uncordon", node, check=False)
            if done.returncode != 0:
                warnings.warn(f"e2e: node {node} is left cordoned (kubectl uncordon: "
                              f"{(done.stderr or done.stdout).strip()})", stacklevel=3)
        raise
    if ours:
        cluster("uncordon", node)
