"""Concurrency slots of a shared limit: at most ``maxConcurrent`` calls in progress at once,
for every worker and producer that names the limit (a sandbox provider's session cap, an
API's concurrent-request cap).

Redis holds the holders and the line (`agentpool/lua/slots.lua`, keys beside the limit's
rate state). One :class:`Slots` per limit per process makes one call at a time for all of
its callers: holds when due for renewal, waiters when new. A freed slot goes to the head of
the line in the call that frees it, and the script names its new holder on the limit's
``freed`` channel, to which a process with waiters subscribes: the waiter's process asks for
it at once. Every waiter is asked for again once a period, which keeps its place and finds
any grant that was not told. Slots go in the order asked, across processes; a process that
dies keeps its slots no longer than HOLD_SECONDS. A give-back that fails (Redis down or
frozen) is sent again with the process's next calls until Redis answers, so a slot is back
within a second of Redis answering, not when its hold lapses.

On a Redis Cluster a limit's slot may move to another primary (a reshard): while it is
MIGRATING, Redis refuses the limit's scripts before they run. A call so refused waits and is
sent again (:class:`SlotMoves`), as a pause, up to MOVING_SECONDS (GLANCE_MOVING_SECONDS
for the operator's declarations and the views' reads).
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import AskError, ClusterError, MovedError, ResponseError, TryAgainError

from agentpool.errors import PermanentError
from agentpool.protocol import DoneSignal

POLL_SECONDS = 0.2
"""How often a process whose callers wait for a slot asks again when it cannot be told."""
TOLD_POLL_SECONDS = 1.0
"""How often it asks again while subscribed to the ``freed`` channel, which tells it of its
grants at once: only to keep its waiters' places (GRACE_SECONDS) and as a safety net."""
HOLD_SECONDS = 15.0
"""A hold not renewed for this long lapses (its process died or froze)."""
RENEW_SECONDS = 5.0
"""How often a process renews its holds."""
GRACE_SECONDS = 3.0
"""A place in line not asked for again for this long is given up; a slot handed to a waiter
while it was not asking lasts this long until it asks."""
QUIET_SECONDS = RENEW_SECONDS + 1.0
"""A limit declared afresh (new, or again after Redis lost it: emptied, restarted without
persistence) hands out no slot for this long: holders that survived renew, and are counted,
first."""
FAILING_SECONDS = GRACE_SECONDS
"""Waiters keep waiting through failing calls to Redis for this long, then raise."""
FAILED_PAUSE_SECONDS = 1.0
"""The longest pause between two failed calls (the pauses double from 2 x POLL_SECONDS):
holds are renewed within a second of Redis answering again, long before they lapse."""
HAND_BACK_MOST = 1000
"""The most give-backs one call sends again (Lua unpacks at most about 8,000 values)."""
STOP_CHECK_SECONDS = 0.05
"""How often a wait for a thread's caller looks whether that caller gave up."""
MOVING_SECONDS = 30.0
"""How long a call of a limit waits for the limit's Redis Cluster slot to finish moving to
another primary before it raises SlotMoving. A run's timeout, which cancels its calls, ends
the wait sooner. A reshard moves a limit's few keys in well under a second."""
GLANCE_MOVING_SECONDS = 2.0
"""How long a declaration (the operator's, every round of every pool naming the limit) or a
read of the limit's state (``agentpool limits``, the console) waits for the slot to finish
moving before it raises SlotMoving: both come again with the next round or view, and a
reshard that stalled must not hold each of them MOVING_SECONDS. A reshard that goes on
moves a limit's few keys well within it."""
MOVING_FIRST_PAUSE = 0.05
MOVING_MOST_PAUSE = 1.0
"""The pauses between two calls refused while the slot moves double from the first to this."""
NON_LOCAL_KEY = "attempted to access a non local key"
"""Redis's refusal of a script touching a key its node does not serve now (``Script ...`` on
Redis 7.0 to 7.2, ``Lua script ...`` on Redis 6)."""
REHASHING_SLOT = "during rehashing of the slot"
"""The same refusal on the node importing the slot from Redis 7.4 and Valkey 8 on (``Unable to
execute command ... in script because undeclared keys were accessed during rehashing of the
slot``)."""
REDIRECTS_EXHAUSTED = "TTL exhausted"
"""redis-py's cluster client giving up after 16 redirects in a row (MOVED, ASK, TRYAGAIN),
none of which ran the call: while the keys are split between the two primaries, an ASKING
and the script it allows may go out on two pooled connections to the new one, which then
answers MOVED back to the old one, which answers ASK again."""

log = logging.getLogger(__name__)

T = TypeVar("T")


class NoConcurrencyLimit(ValueError, PermanentError):
    """A caller asked for a slot of a limit declared without ``maxConcurrent``: a
    configuration error that no retry mends."""


class SlotMoving(TryAgainError):
    """A limit's Redis Cluster slot has been moving for MOVING_SECONDS (GLANCE_MOVING_SECONDS
    for a declaration or a read of its state), and Redis has refused the limit's calls all
    that time (a reshard that stalled)."""


def slot_moving(error: BaseException) -> bool:
    """Whether `error` is Redis refusing a limit's call because the limit's slot is moving
    between primaries: nothing of the call ran, so it may be sent again.

    Every key of a limit shares one hash tag, so a script of it touches a key its node does not
    serve only while the slot moves: MIGRATING, the source refuses it a key not there (a key
    that never exists, the scripts' first command, or one moved already). ``TRYAGAIN`` and an
    ``ASK`` the client did not follow say the same, and so does the cluster client running out
    of redirects (REDIRECTS_EXHAUSTED: it raises that only after a chain of MOVED, ASK and
    TRYAGAIN replies, never after a script ran). A ``MOVED`` does not: the slot has moved,
    and a client that does not follow it (a standalone client for a cluster node) never will."""
    if isinstance(error, MovedError):
        return False
    if isinstance(error, (TryAgainError, AskError)):
        return True
    if isinstance(error, ClusterError):
        return REDIRECTS_EXHAUSTED in str(error)
    return isinstance(error, ResponseError) and (
        NON_LOCAL_KEY in str(error) or REHASHING_SLOT in str(error))


def moving_pause(refusals: int) -> float:
    """The pause after the `refusals`-th call in a row refused while the slot moves."""
    return min(MOVING_MOST_PAUSE, MOVING_FIRST_PAUSE * 2.0 ** max(0, refusals - 1))


class SlotMoves:
    """One limit's pauses while its slot moves, shared by its rate and slot calls in a
    process: one log line per pause, not one per call sent again."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pauses = 0
        """Pauses met so far."""
        self._moving = False
        self._settled = -math.inf
        """When (monotonic) the latest call that Redis answered was sent."""

    def refused(self, sent: float) -> None:
        """A call sent at `sent` was refused. One sent before a call that Redis answered was
        refused by the move that has ended since: it begins no pause."""
        if self._moving or sent < self._settled:
            return
        self._moving = True
        self.pauses += 1
        log.warning("rate limit %r: its Redis Cluster slot is moving to another primary; "
                    "grants and slots wait for the move to end (at most %gs), declarations "
                    "and views at most %gs", self.name, MOVING_SECONDS, GLANCE_MOVING_SECONDS)

    def answered(self, sent: float) -> None:
        self._settled = max(self._settled, sent)
        self._moving = False

    def too_long(self, since: float, error: BaseException) -> SlotMoving:
        return SlotMoving(
            f"rate limit {self.name!r}: its Redis Cluster slot has been moving to another "
            f"primary for {time.monotonic() - since:.0f}s, and Redis refuses the limit's calls "
            f"until the move ends (CLUSTER SETSLOT ... NODE or STABLE): {error}")

    async def wait_out(self, call: Callable[[], Awaitable[T]],
                       within: float | None = None) -> T:
        """`call`, sent again while Redis refuses it for the slot moving, for at most
        `within` seconds, MOVING_SECONDS if None (a caller cancelled meanwhile stops it)."""
        within = MOVING_SECONDS if within is None else within
        since: float | None = None
        refusals = 0
        while True:
            sent = time.monotonic()
            try:
                reply = await call()
            except Exception as error:
                if not slot_moving(error):
                    raise
                self.refused(sent)
                since = sent if since is None else since
                refusals += 1
                left = within - (time.monotonic() - since)
                if left <= 0:
                    raise self.too_long(since, error) from error
                await asyncio.sleep(min(left, moving_pause(refusals)))
                continue
            self.answered(sent)
            return reply


@dataclass(frozen=True)
class Held:
    """A slot: `holder` names it in Redis, `waited` is the seconds from asking to the grant.
    `capped` is False when the serving declaration has no cap while this process's own has
    one (another pool declared the limit first, or the operator has not declared the new
    cap yet): the block then runs without a slot, as the serving declaration says."""

    limit: str
    holder: str
    waited: float
    capped: bool = True


@cache
def _lua() -> str:
    return (resources.files("agentpool") / "lua" / "slots.lua").read_text()


class Slots:
    """One limit's slots as one process uses them, on whichever event loop calls it (a
    ticker runs on the loop of the latest caller)."""

    def __init__(self, redis: aioredis.Redis, name: str, prefix: str, *,
                 undeclared: Callable[[], Exception],
                 declaration: tuple[str, ...] = ("", "", "", ""), capped: bool = False,
                 caller: str = "") -> None:
        """`undeclared` makes the error a caller gets when nothing declares the limit;
        `declaration` is this process's own (``LimitConfig.wire``), which a call sends to
        declare the limit where Redis lost it; `capped`: that declaration has a cap."""
        self.redis = redis
        self.name = name
        self.prefix = prefix
        self.declaration = declaration
        self.capped = capped
        self.caller = caller or "client"
        self._undeclared = undeclared
        self.lapsed = 0
        """Holds found lapsed when renewed (the process was frozen past HOLD_SECONDS)."""
        self._script: AsyncScript | None = None
        self._waiting: dict[str, asyncio.Future[bool]] = {}
        self._holding: set[str] = set()
        self._leaving: dict[str, float] = {}
        """Holders whose give-back failed, and when (monotonic) their hold or place would
        have lapsed anyway: the ticker sends them again, and never renews them."""
        self._ticker: asyncio.Future[None] | None = None
        self._wake = asyncio.Event()
        self._told = False
        """Subscribed to the ``freed`` channel: grants are told, not only polled for."""
        self._asked: set[str] = set()
        """Waiters Redis has put in line."""
        self._named: set[str] = set()
        """Waiters the ``freed`` channel said were handed a slot."""
        self._refresh = False
        """Ask for every waiter at the next turn."""
        self._listener: asyncio.Future[None] | None = None
        self.moves = SlotMoves(name)
        """The limit's pauses while its Redis Cluster slot moves (shared with its rates)."""

    async def _run(self, *args: Any) -> Any:
        if self._script is None:
            self._script = self.redis.register_script(_lua())
        return await self._script(keys=[self.prefix + "config"], args=[self.prefix, *args])

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[Held]:
        """Wait for a slot, hold it for the block, give it back after."""
        held = await self.acquire()
        try:
            yield held
        finally:
            await self.release(held)

    async def acquire(self) -> Held:
        """Wait for a slot. Cancelled while it waits, it leaves the line (and gives back a
        slot granted in that moment)."""
        holder = f"{self.caller}:{secrets.token_hex(6)}"
        granted: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting[holder] = granted
        began = time.monotonic()
        self._kick()
        try:
            capped = await granted
        except BaseException:
            self._waiting.pop(holder, None)
            self._holding.discard(holder)
            await _shielded(self._give_back(holder))
            raise
        return Held(self.name, holder, time.monotonic() - began, capped)

    async def release(self, held: Held) -> None:
        """Give the slot back; the next in line gets it at once."""
        self._holding.discard(held.holder)
        await _shielded(self._give_back(held.holder))
        if self._waiting and not self._told:  # a told process hears of its grants
            self._refresh = True
            self._kick()

    async def _leave(self, *holders: str) -> None:
        await self._run("leave", *_times(), *holders)

    async def _give_back(self, holder: str) -> None:
        """Leave now; failing, leave with the ticker's next call."""
        try:
            await self._leave(holder)
        except Exception:
            self._leave_later(holder)

    def _leave_later(self, holder: str) -> None:
        self._leaving.setdefault(holder, time.monotonic() + HOLD_SECONDS)
        self._kick()

    def _kick(self) -> None:
        """Ask Redis now; start this process's ticker if none runs on this loop."""
        ticker, loop = self._ticker, asyncio.get_running_loop()
        if ticker is None or ticker.done() or ticker.get_loop() is not loop:
            if ticker is not None and ticker.get_loop() is not loop:
                self._forget_other_loop(loop)
            self._wake = asyncio.Event()
            self._ticker = asyncio.ensure_future(self._tick())
        self._wake.set()

    def _forget_other_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """A ticker starts on another loop than the last one: what that loop's callers held
        or waited for, nobody will give back (a loop closed without cancelling its tasks),
        so it goes back to Redis now."""
        gone = [h for h, granted in self._waiting.items() if granted.get_loop() is not loop]
        gone += list(self._holding)
        for holder in gone:
            self._waiting.pop(holder, None)
            self._leaving.setdefault(holder, time.monotonic() + HOLD_SECONDS)
        self._holding.clear()
        self._listener, self._told = None, False  # it ended with its loop

    async def _listen(self) -> None:
        """Wake the ticker when Redis hands one of this process's waiters a slot (the
        ``freed`` channel), while the process has waiters. Without a subscription (Redis 6,
        a user whose rules predate the channel) the ticker's own polls find the grants."""
        while True:
            signal = DoneSignal(self.redis, self.prefix + "freed")
            loop_gone = False
            try:
                await signal.subscribe()
                while True:
                    if self._told != signal.subscribed:  # a refusal shows on the first read
                        self._told = signal.subscribed
                        self._refresh = True  # grants made before now were not told
                        self._wake.set()
                    message = await signal.next(RENEW_SECONDS)
                    named = [h for h in (message or "").split() if h in self._waiting]
                    if named:
                        self._named.update(named)
                        self._wake.set()
            except GeneratorExit:  # its loop closed under it: nothing can be awaited now
                loop_gone = True
                raise
            except Exception:  # a lost connection: subscribe again after a pause
                self._told = False
                await asyncio.sleep(POLL_SECONDS)
            finally:
                if not loop_gone:
                    with suppress(Exception):
                        await signal.aclose()

    async def _tick(self) -> None:
        try:
            await self._tick_until_idle()
        except Exception as error:  # a fault of ours: the waiters hear of it, none hangs
            self._fail(list(self._waiting), error)
        finally:
            listener, self._listener = self._listener, None
            self._told = False
            if self._ticker is asyncio.current_task():
                self._ticker = None  # from here an acquire starts a ticker of its own
            await _cancelled(listener)

    async def _stop_listening(self) -> None:
        listener, self._listener = self._listener, None
        self._told = False
        await _cancelled(listener)

    async def _tick_until_idle(self) -> None:
        """One call at a time: the give-backs that failed; the holds when due for renewal;
        the waiters that are new or were told of a grant; every waiter once a period, which
        keeps their places and finds grants nobody told of. Subscribed to the ``freed``
        channel while there are waiters. Calls that fail are sent again after a pause:
        waiters give up after FAILING_SECONDS of failures, or MOVING_SECONDS of refusals
        for the limit's slot moving."""
        renewed = asked_all = -math.inf
        failing_since: float | None = None
        moving_since: float | None = None
        failures = 0
        while self._waiting or self._holding or self._leaving:
            if self._waiting and self._listener is None:
                self._listener = asyncio.ensure_future(self._listen())
            elif not self._waiting and self._listener is not None:
                await self._stop_listening()
            self._wake.clear()
            self._asked &= self._waiting.keys()
            self._named &= self._waiting.keys()
            now = time.monotonic()
            for holder in _lapsed(self._leaving, now):
                del self._leaving[holder]
            leaving = sorted(self._leaving)[:HAND_BACK_MOST]
            period = TOLD_POLL_SECONDS if self._told else POLL_SECONDS
            renew = bool(self._holding or self._waiting) and now - renewed >= RENEW_SECONDS
            everyone = bool(self._waiting) and (self._refresh or now - asked_all >= period)
            waiting = [h for h in self._waiting
                       if everyone or h not in self._asked or h in self._named]
            pause: float | None = None
            if leaving or renew or waiting:
                holding = sorted(self._holding) if renew else []
                self._refresh = False
                self._named.difference_update(waiting)
                sent = time.monotonic()
                try:
                    if leaving:
                        await self._leave(*leaving)
                        for holder in leaving:
                            self._leaving.pop(holder, None)
                    reply = await self._run("poll", *_times(), *self.declaration,
                                            len(holding), *holding, *waiting) \
                        if renew or waiting else None
                except Exception as error:
                    failures += 1
                    self._refresh = True
                    if slot_moving(error):
                        self.moves.refused(sent)
                        failing_since, moving_since = None, moving_since or sent
                        if time.monotonic() - moving_since >= MOVING_SECONDS:
                            self._give_up(waiting, self.moves.too_long(moving_since, error))
                        pause = moving_pause(failures)
                    else:
                        failing_since, moving_since = failing_since or time.monotonic(), None
                        if time.monotonic() - failing_since >= FAILING_SECONDS:
                            self._give_up(waiting, error)
                        pause = min(FAILED_PAUSE_SECONDS, POLL_SECONDS * 2 ** failures)
                else:
                    failing_since, moving_since, failures = None, None, 0
                    self.moves.answered(sent)
                    if reply is not None:
                        renewed = now if renew else renewed
                        asked_all = now if everyone else asked_all
                        self._settle([int(x) for x in reply], holding, waiting)
            if pause is None:
                since = time.monotonic()
                due = [RENEW_SECONDS - (since - renewed)]
                if self._waiting:
                    due.append(period - (since - asked_all))
                pause = max(0.001, min(due))
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), pause)

    def _settle(self, reply: list[int], holding: list[str], waiting: list[str]) -> None:
        if reply[0] == -2 and self.capped:
            self._uncapped(waiting)
            return
        if reply[0] < 0:
            self._fail(waiting, self._refusal(reply[0]))
            return
        for holder, taken_again in zip(holding, reply[1:1 + len(holding)], strict=True):
            if not taken_again:
                continue
            if holder in self._holding:
                self.lapsed += 1
            else:  # given back while this call was on the wire, which took it again
                self._leave_later(holder)
        for holder, place in zip(waiting, reply[1 + len(holding):], strict=True):
            granted = self._waiting.get(holder)
            if granted is None:  # its caller left while this call was on the wire
                self._leave_later(holder)
            elif place == 0:
                del self._waiting[holder]
                self._holding.add(holder)
                if not granted.done():
                    granted.set_result(True)
            else:
                self._asked.add(holder)

    def _refusal(self, code: int) -> Exception:
        if code == -1:
            return self._undeclared()
        return NoConcurrencyLimit(
            f"rate limit {self.name!r} declares no maxConcurrent: add maxConcurrent to its "
            "entry in spec.rateLimits to hold slots of it")

    def _uncapped(self, waiting: list[str]) -> None:
        for holder in waiting:
            granted = self._waiting.pop(holder, None)
            if granted is not None and not granted.done():
                granted.set_result(False)

    def _give_up(self, waiting: list[str], error: Exception) -> None:
        """Redis has failed for FAILING_SECONDS: the waiters raise, and leave the line (a
        slot Redis granted them meanwhile goes back)."""
        self._fail(waiting, error)
        for holder in waiting:
            self._leave_later(holder)

    def _fail(self, waiting: list[str], error: Exception) -> None:
        for holder in waiting:
            granted = self._waiting.pop(holder, None)
            if granted is not None and not granted.done():
                granted.set_exception(error)


async def enter_unless(manager: AbstractAsyncContextManager[T],
                       stop: threading.Event) -> T | None:
    """Enter `manager` on this loop for a caller in another thread, unless that caller sets
    `stop` first (then None). Entered in the moment `stop` was set, it is exited at once: a
    slot nobody will give back is never left held."""
    entering = asyncio.ensure_future(manager.__aenter__())
    while True:
        done, _ = await asyncio.wait([entering], timeout=STOP_CHECK_SECONDS)
        if done:
            entered = entering.result()
            if not stop.is_set():
                return entered
            await manager.__aexit__(None, None, None)
            return None
        if stop.is_set():
            entering.cancel()
            with suppress(asyncio.CancelledError):
                await entering
                await manager.__aexit__(None, None, None)
            return None


async def _cancelled(task: asyncio.Future[None] | None) -> None:
    """Cancel `task` and wait for it to end; a cancellation of the caller itself goes on."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


def _times() -> tuple[int, int, int]:
    """A hold, a place in line and the quiet time after a lost declaration, in ms."""
    return (int(HOLD_SECONDS * 1000), int(GRACE_SECONDS * 1000), int(QUIET_SECONDS * 1000))


def _lapsed(leaving: dict[str, float], now: float) -> list[str]:
    """The failed give-backs no longer worth sending: their holds have lapsed anyway."""
    return [holder for holder, until in leaving.items() if until <= now]


async def _shielded(call: Awaitable[None], timeout: float = 5.0) -> None:
    """Run `call` to its end even while the caller is being cancelled."""
    task = asyncio.ensure_future(call)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task], timeout=timeout)
        raise

