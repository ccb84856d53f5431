"""One engine for every teacher request of a run.

Stages ask for completions with ``await engine.complete(request)``. The engine answers from the request cache
when it can, checks the budget, waits for a slot under the concurrency limit, sends the request through the
backend, retries transient failures with exponential backoff and jitter (a request waiting out its backoff holds
no slot), stores the answer in the cache the moment it arrives, and counts usage. Every stage and phase shares
the one window of slots, so a server is kept busy across phase boundaries instead of draining at each one.

Concurrency is either fixed or ``"auto"``: start modest, grow while latency stays flat and the window is full,
shrink on 429/503 and when latency climbs (a self-hosted server queues instead of refusing), never above the
configured ceiling. See ``AdaptiveLimit``. When requests wait for a slot, the one with the longest chain of requests
still to come after it goes first (``priority``): the requests that start work (a generation, a rewrite) are not
held behind the last steps of earlier work, so work is always queued and a stage's end drains quickly.

Hedging (``teacher.hedge``, off by default, on in ``configs/vllm_server.toml``): a request still unanswered after
``hedge`` x the median latency of its kind is sent a second time, ahead of every request waiting for a slot, and
the first answer wins; the loser is cancelled (a server that sees the connection close stops generating). A
straggler holds back in-order decisions and every later step of its chain, so its duplicate goes first even
when the window is full: with a 10x tail, the straggler's slot is freed after ``hedge`` x the median instead of
10x, so hedging returns more slot time than it takes. On a paid API each hedge is paid.

A request that can never succeed (HTTP 400: context too long, content filter, unsupported parameter; llama.cpp
rejecting a prompt) is not retried and does not end the run: it comes back as a completion with
``finish_reason == "refused"`` and the server's message as text, is cached like any answer (a resume does not
send it again), and the stage rejects its record with reason ``teacher_refused``.
"""
from __future__ import annotations

import asyncio
import contextvars
import heapq
import statistics
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Coroutine, Iterable, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from ..errors import TeacherError
from .base import REFUSED, Backend, ChatRequest, Completion, OnResult, Refused, Transient, Usage
from .cache import Budget, BudgetExhausted, RequestCache, Spent

T = TypeVar("T")
# Failed tries after which the server may have done, and billed, the work: it answered too late, or its answer was
# cut short or unreadable. Refusals, 429/5xx and connection errors are not billed. (Requests cancelled once sent, a
# hedge copy that lost its race or work a stage dropped past its target, are counted too, as "cancelled".)
BILLED_FAILURES = frozenset({"timeout", "truncated", "malformed_response",
                             "ray_block_failed"})  # a failed Ray block's requests may have been answered
# A hedge (the duplicate of a straggler) takes the next free slot before every waiting request.
HEDGE_PRIORITY = 1 << 30
# Copies of one request at most: a hedge can straggle too, and then the request gets a third.
MAX_COPIES = 3

# The stage a request is made for, so that stages running at once on one engine each get their own usage. A stage
# coroutine sets it once (``Engine.stage``); the tasks it starts inherit it.
current_stage: contextvars.ContextVar[str] = contextvars.ContextVar("current_stage", default="")


@dataclass
class LimitStats:
    """What the window did, for the manifest and the progress bar."""

    limit: int = 0
    peak_limit: int = 0
    peak_in_flight: int = 0
    increases: int = 0
    decreases: int = 0
    busy_seconds: float = 0.0  # integral of requests in flight over time


class AdaptiveLimit:
    """How many requests may be in flight.

    Fixed (``auto=False``): always ``ceiling``. Auto (in the manner of TCP Vegas): a server that queues answers
    later the more it is given beyond its width, so the engine watches how much longer requests take than they
    can. Per kind of request (a 4-token Yes/No is not a 384-token list) it keeps the quickest latencies seen
    (the 10th percentile of a window, the lowest over the run; a kind first seen while the server queues gets
    its 10th percentile divided by how slow the known kinds are at that moment, or the queue would read as its
    speed), and at the end of each window (about one round trip: ``limit`` completions) it takes the median of
    latency / quickest. Near 1: the server has room, and if the window was full and its upper quarter is flat
    too, the limit grows (x4 per round trip at first, from 16: a GPU server is reached in three or four round
    trips instead of six or seven, which at 2 s a request is most of a short run's idle time; then by an
    eighth). Above ``high`` (1.5): requests wait in the server's queue (every step of every chain pays that
    wait, and so does a hedge), and the limit shrinks in proportion, never below the highest level whose full
    window read flat: slowness there is no queue of ours (a kind's quickest was guessed too low, or the server
    slowed for everyone), and the kinds start their quickest again from that window. In between it holds: the
    server is full and a short queue keeps it from idling between answers. A 429 or 503 cuts the limit by a
    quarter (once per window) and caps it just under the level that was refused, a cap raised by one per window
    to probe again. Windows where the stages offered fewer requests than the limit say nothing about the server
    and change nothing.
    """

    def __init__(self, ceiling: int, auto: bool, initial: int = 16, low: float = 1.3, high: float = 1.5):
        self.ceiling, self.auto, self.low, self.high = max(1, ceiling), auto, low, high
        self.limit = min(self.ceiling, initial) if auto else self.ceiling
        self.in_flight = 0
        self.stats = LimitStats(limit=self.limit, peak_limit=self.limit)
        self._waiters: list[tuple[int, int, asyncio.Future]] = []  # (-priority, arrival, future): a heap
        self._seq = 0
        self._startup = True
        self._window: list[tuple[str, float]] = []
        self._window_full = False
        self._congested = False
        self._soft_cap: float = float(self.ceiling)
        self._quickest: dict[str, float] = {}
        self._flat = 0  # the highest limit whose full window read flat: no queue of ours below it
        self._last_change = time.monotonic()
        self._epoch = 0

    async def acquire(self, priority: int = 0) -> int:
        """Wait for a slot; returns the epoch (how many times the limit had changed) to give back to release.
        Waiting requests get slots highest ``priority`` first, then first come, first served."""
        if self.in_flight < self.limit and not self._waiters:
            self._take()
            return self._epoch
        self._window_full = True
        fut = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._waiters, (-priority, self._seq, fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # the slot was handed over as we were cancelled: pass it on
                self._account()
                self.in_flight -= 1
                self._wake()
            raise
        return self._epoch

    @property
    def quiet(self) -> bool:
        """Fewer than half the slots are taken and nobody is waiting: what is still out is the tail of the work,
        and the server has room."""
        return self.in_flight * 2 < self.limit and not self._waiters

    def _take(self) -> None:
        self._account()
        self.in_flight += 1
        if self.in_flight >= self.limit:
            self._window_full = True
        self.stats.peak_in_flight = max(self.stats.peak_in_flight, self.in_flight)

    def _wake(self) -> None:
        """Hand free slots to the waiting requests, best first."""
        while self._waiters and self.in_flight < self.limit:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                self._take()
                fut.set_result(None)

    def release(self, latency: float | None, congestion: bool = False, kind: str = "",
                epoch: int | None = None) -> None:
        self._account()
        self.in_flight -= 1
        if congestion:  # fixed or auto: a server that refuses gets less, whatever the config asked for
            self._on_congestion()
        elif self.auto or self._soft_cap < self.ceiling or self.limit < self.ceiling:
            if latency is not None and (epoch is None or epoch == self._epoch):
                # Only requests sent under the present limit say how it does: one sent before a cut waited
                # behind the overshoot, and counting it would cut again for a queue that is already gone.
                self._window.append((kind, latency))
                # A window is about one round trip (``limit`` answers). While starting up, the limit has just
                # grown x4, so 3/4 of it were sent at once under it: their answers are the round trip, and the
                # limit grows every round trip instead of every other.
                n = len(self._window)
                if n >= (max(8, self.limit * 3 // 4) if self._startup and self.auto else max(self.limit, 8)):
                    self._end_window()

        self._wake()

    def _account(self) -> None:
        now = time.monotonic()
        self.stats.busy_seconds += self.in_flight * (now - self._last_change)
        self._last_change = now

    def _set(self, limit: float) -> None:
        limit = int(max(1, min(self.ceiling, self._soft_cap, limit)))
        if limit > self.limit:
            self.stats.increases += 1
        elif limit < self.limit:
            self.stats.decreases += 1
        if limit != self.limit:
            self._epoch += 1
        self.limit = limit
        self.stats.limit = limit
        self.stats.peak_limit = max(self.stats.peak_limit, limit)

    def _on_congestion(self) -> None:
        if not self._congested:  # one cut per window, however many 429s the window saw
            self._congested = True
            self._startup = False
            self._soft_cap = max(1.0, float(self.in_flight))
            self._set(self.limit * 0.75)

    def _end_window(self) -> None:
        window, full, congested = self._window, self._window_full, self._congested
        self._window, self._window_full, self._congested = [], False, False
        by_kind: dict[str, list[float]] = {}
        for kind, latency in window:
            by_kind.setdefault(kind, []).append(latency)
        p10s = {kind: sorted(lats)[len(lats) // 10] for kind, lats in by_kind.items() if len(lats) >= 5}
        # A kind first seen while the server queues would take the queue for its speed, and the queue would
        # never read as one: its quickest is its 10th percentile divided by how slow the known kinds are now
        # (one server, one queue).
        known = sorted(lat / self._quickest[kind] for kind, lat in window if kind in self._quickest)
        now = max(1.0, known[len(known) // 2]) if known else 1.0
        for kind, p10 in p10s.items():
            self._quickest[kind] = min(self._quickest[kind], p10) if kind in self._quickest else p10 / now
        ratios = sorted(lat / self._quickest[kind] for kind, lat in window if kind in self._quickest)
        if congested:
            return
        if not self.auto:  # fixed: only the way back up after 429s, an eighth a window, to the configured number
            self._soft_cap = min(float(self.ceiling), self._soft_cap + max(1, self.limit // 8))
            if full:
                self._set(self.limit + max(1, self.limit // 8))
            return
        if not ratios:
            return
        self._soft_cap = min(float(self.ceiling), self._soft_cap + 1)
        inflation = ratios[len(ratios) // 2]
        # Growth asks more than a flat median: the first answers of a window are the ones the server did not
        # queue, so a queue shows in the upper quarter first.
        upper = ratios[len(ratios) * 3 // 4]
        if inflation > self.high:
            self._startup = False
            if self.limit <= self._flat:
                # This level read flat before: the slowness is not a queue of ours. A kind's quickest was set
                # too low (first seen while the server queued, divided by a guess of the queue), or the server
                # got slower for everyone. Shrinking further would not help (it once took the limit down to 1
                # slot: the heavy-tail bench's "stall"); the kinds of this window start again from now.
                for kind, p10 in p10s.items():
                    self._quickest[kind] = p10
                return
            self._set(max(self._flat, self.limit * max(0.5, self.high * 0.75 / inflation)))
        elif upper < self.low and full:
            self._flat = max(self._flat, self.limit)
            self._set(self.limit * 4 if self._startup else self.limit + max(1, self.limit // 8))
        elif inflation >= self.low:
            self._startup = False


def _retry_wait(initial: float, maximum: float):
    backoff = wait_exponential_jitter(multiplier=initial, max=maximum)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return max(backoff(state), getattr(exc, "retry_after", 0.0))

    return wait


@dataclass(eq=False)
class _Held:
    """A slot taken under the limit (``epoch``: the limit's epoch when it was taken), given back exactly once."""

    epoch: int
    released: bool = False


@dataclass(eq=False)
class _Try:
    """One try of a request with hedging on: its copies in flight, and the first answer."""

    req: ChatRequest
    kind: str
    t0: float  # when its newest copy was sent
    result: asyncio.Future
    tasks: list = field(default_factory=list)
    hedge: asyncio.Task | None = None  # a duplicate waiting for its slot (see Engine._hedge)
    closing: bool = False  # the try is over: its copies are being cancelled


@dataclass
class EngineStats:
    sent: int = 0
    cache_hits: int = 0
    refused: int = 0
    hedged: int = 0  # duplicates sent for slow requests (teacher.hedge)
    hedge_wins: int = 0  # of which answered first
    by_kind: dict[str, int] = field(default_factory=dict)


class Engine:
    """The run's one scheduler of teacher requests (see the module docstring)."""

    def __init__(self, backend: Backend, cache: RequestCache | None = None, budget: Budget | None = None, *,
                 concurrency: int = 8, auto: bool = False, max_retries: int = 6, backoff_initial_s: float = 0.5,
                 backoff_max_s: float = 30.0, hedge: float = 0.0):
        self.backend = backend
        self.backend_name, self.model_name = backend.backend, backend.model_name
        # How the backend constrains a request's format (``formats.py``): "json_schema", "grammar" or "off" (then
        # stages send no formats). Fixed for the run: a backend that later stops sending formats (openai "auto"
        # after a refusal) is still given the same requests, so a resume replays them from the cache.
        self.structured: str = getattr(backend, "structured", "off")
        self.cache, self.budget = cache, budget or Budget()
        ceiling = min(concurrency, backend.max_parallel or concurrency)
        self.limit = AdaptiveLimit(ceiling, auto=auto and ceiling > 1)
        self.max_retries = max_retries
        self.hedge = hedge  # 0 = off; else hedge a request slower than this many times its kind's median latency
        self._latencies: dict[str, deque] = {}
        self._tries: set[_Try] = set()
        self._scanner: asyncio.Task | None = None
        self._wait = _retry_wait(backoff_initial_s, backoff_max_s)
        self.usage = Usage()
        self.usage_by_stage: dict[str, Usage] = {}
        self.stats = EngineStats()
        self._spent = cache.spent() if cache is not None else Spent(0, 0, 0)
        self._reserved = 0  # requests sent and not yet answered: the request budget is exact
        self._pending: dict[str, asyncio.Future] = {}  # identical requests in flight are sent once
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._flush_timer: asyncio.TimerHandle | None = None
        self._closed = False

    def flush(self) -> None:
        """Make every answer received so far durable (the cache commits in groups). The run calls it before it
        writes records built from answers, on the engine's thread."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self.cache is not None:
            self.cache.flush()

    # -- the one call stages make -------------------------------------------------------------------------------
    async def complete(self, req: ChatRequest, kind: str = "", priority: int = 0) -> Completion:
        """The answer to ``req``. ``kind`` names the sort of request (for latency tracking and counts);
        ``priority``: how many more requests its chain will need after it. When requests wait for a slot, the
        ones that start the longest chains go first, so that the last answers of a stage do not wait behind
        work that could have been done meanwhile, and the teacher stays busy to the end."""
        key = req.key(self.backend_name, self.model_name)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.usage.cache_hits += 1
                self.stage_usage().cache_hits += 1
                self.stats.cache_hits += 1
                return hit
        if key in self._pending:  # the same request is already out: share its answer, pay once
            return await asyncio.shield(self._pending[key])
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        try:
            c = await self._send(req, key, kind, priority)
        except BaseException as e:
            if not fut.done():
                fut.set_exception(e)
                fut.exception()  # retrieved: no "never retrieved" warning when nobody shares it
            raise
        finally:
            self._pending.pop(key, None)
        fut.set_result(c)
        return c

    # -- sending ------------------------------------------------------------------------------------------------
    def _check_budget(self) -> None:
        spent = Spent(self._spent.requests + self._reserved, self._spent.prompt_tokens,
                      self._spent.completion_tokens)
        reason = self.budget.exceeded(spent)
        if reason:
            raise BudgetExhausted(reason)

    async def _send(self, req: ChatRequest, key: str, kind: str, priority: int = 0) -> Completion:
        self._check_budget()
        self._reserved += 1
        try:
            c = await self._send_with_retries(req, kind, priority)
        finally:
            self._reserved -= 1
        if self.cache is not None:
            self.cache.put(key, c)
            if self.cache.pending and self._flush_timer is None:  # commit a lone answer soon, not at the next put
                self._flush_timer = asyncio.get_running_loop().call_later(self.cache.max_delay_s, self.flush)
        self._spent = Spent(self._spent.requests + 1, self._spent.prompt_tokens + c.prompt_tokens,
                            self._spent.completion_tokens + c.completion_tokens, self._spent.billed_failures)
        self.usage.add(c)
        self.stage_usage().add(c)
        self.stats.sent += 1
        if kind:
            self.stats.by_kind[kind] = self.stats.by_kind.get(kind, 0) + 1
        if c.finish_reason == REFUSED:
            self.stats.refused += 1
        return c

    async def _attempt(self, req: ChatRequest, kind: str, priority: int = 0) -> Completion:
        """One try: a slot under the limit for the time the request is out, and what its latency says. With
        hedging on, the hedge scanner may send a duplicate of a slow try (see ``_scan_for_hedges``); the first
        answer wins and the other is cancelled."""
        epoch = await self.limit.acquire(priority)
        if not self.hedge:
            return await self._send_once(req, kind, _Held(epoch))
        tr = _Try(req, kind, time.monotonic(), asyncio.get_running_loop().create_future())
        self._launch(tr, epoch)
        self._tries.add(tr)
        if self._scanner is None or self._scanner.done():
            self._scanner = asyncio.ensure_future(self._scan_for_hedges())
        try:
            return await tr.result
        finally:
            tr.closing = True
            self._tries.discard(tr)
            if tr.hedge is not None:
                tr.hedge.cancel()
            for t in tr.tasks:
                t.cancel()

    def _launch(self, tr: "_Try", epoch: int) -> None:
        held = _Held(epoch)
        task = asyncio.ensure_future(self._send_once(tr.req, tr.kind, held))
        tr.tasks.append(task)

        def done(t: asyncio.Task) -> None:
            # A copy cancelled before its coroutine ever ran (its try was answered in the same turn of the loop)
            # never reached the ``finally`` that gives its slot back: give it back here, or the slot is lost.
            if not held.released:
                held.released = True
                self.limit.release(None, kind=tr.kind, epoch=held.epoch)
            self._try_done(tr, t)
        task.add_done_callback(done)

    def _try_done(self, tr: "_Try", task: asyncio.Task) -> None:
        if task.cancelled():
            # Cancelled by the try's own end (another copy won), or from inside the transport without anyone
            # asking: then, with no other copy out or coming, the try would wait forever. It fails instead, as
            # a connection error, and is retried.
            if not (tr.result.done() or tr.closing or tr.hedge is not None or not all(t.done() for t in tr.tasks)):
                tr.result.set_exception(Transient("connection", "the request was cancelled before it was answered"))
            return
        if tr.result.done():
            task.exception()  # retrieved: a loser's failure is not news
            return
        if task.exception() is None:
            if task is not tr.tasks[0]:
                self.stats.hedge_wins += 1
            tr.result.set_result(task.result())
        elif all(t.done() for t in tr.tasks):  # every copy failed: the first one's error decides what is next
            first = tr.tasks[0]
            tr.result.set_exception(first.exception() if not first.cancelled() and first.exception() else
                                    task.exception())

    async def _scan_for_hedges(self) -> None:
        """Four times a second, while hedged tries are out: a try whose newest copy is still unanswered gets
        another copy (up to ``MAX_COPIES``), which takes the next free slot before any waiting request. How long
        a copy may take: ``hedge`` x the median latency of its kind; while the engine is quiet (under half its
        slots taken, nobody waiting: the last chains of a stage), the median itself, since a copy then costs only
        idle capacity and the stragglers are all there is to wait for."""
        while self._tries:
            await asyncio.sleep(0.25)
            now, quiet, delays = time.monotonic(), self.limit.quiet, {}
            for tr in self._tries:
                if tr.hedge is not None or tr.result.done() or len(tr.tasks) >= MAX_COPIES:
                    continue
                if tr.kind not in delays:
                    delays[tr.kind] = self._hedge_delay(tr.kind, quiet)
                delay = delays[tr.kind]
                if delay is not None and now - tr.t0 >= delay:
                    tr.hedge = asyncio.ensure_future(self._hedge(tr))

    async def _hedge(self, tr: "_Try") -> None:
        """Send another copy of a slow try as soon as a slot is free, before any waiting request (the try's
        ``finally`` cancels this while it waits, if an earlier copy answers meanwhile)."""
        epoch = await self.limit.acquire(HEDGE_PRIORITY)
        self.stats.hedged += 1
        tr.t0, tr.hedge = time.monotonic(), None
        self._launch(tr, epoch)

    async def _send_once(self, req: ChatRequest, kind: str, held: "_Held") -> Completion:
        t0, congestion, latency = time.monotonic(), False, None
        try:
            c = await self.backend.send(req)
            latency = time.monotonic() - t0
            if self.hedge:
                self._latencies.setdefault(kind, deque(maxlen=256)).append(latency)
            return c
        except Transient as e:
            congestion = e.congestion
            if e.kind in BILLED_FAILURES:
                self._billed_failure(req, e.kind)
            raise
        except asyncio.CancelledError:  # a hedge copy that lost, or work a stage dropped: sent, so paid
            self._billed_failure(req, "cancelled")
            raise
        finally:
            held.released = True
            self.limit.release(latency, congestion, kind, held.epoch)

    def _billed_failure(self, req: ChatRequest, kind: str) -> None:
        """Count a failed try the server may have billed (``BILLED_FAILURES``) in the budget, at the prompt's
        size (4 characters a token) and the most it could have generated: over-counting stops a night early,
        under-counting overspends."""
        prompt = sum(len(m.get("content") or "") for m in req.messages if isinstance(m.get("content"), str)) // 4
        completion = req.decoding.max_tokens or 0
        self._spent = Spent(self._spent.requests + 1, self._spent.prompt_tokens + prompt,
                            self._spent.completion_tokens + completion, self._spent.billed_failures + 1)
        if self.cache is not None:
            self.cache.put_billed_failure(req.key(self.backend_name, self.model_name), kind, prompt, completion)

    def _hedge_delay(self, kind: str, quiet: bool = False) -> float | None:
        """How long a copy of a request of this kind may take before the next copy is sent (see
        ``_scan_for_hedges``); None: no hedging (off, or too few answers of the kind seen yet to know its
        median)."""
        lats = self._latencies.get(kind) if self.hedge else None
        if not lats or len(lats) < 20:
            return None
        return max((min(self.hedge, 1.0) if quiet else self.hedge) * statistics.median(lats), 0.05)

    def _count_retry(self, exc: BaseException) -> None:
        kind = getattr(exc, "kind", type(exc).__name__)
        for usage in (self.usage, self.stage_usage()):
            usage.retries += 1
            usage.retries_by_kind[kind] = usage.retries_by_kind.get(kind, 0) + 1

    # -- per-stage accounting -----------------------------------------------------------------------------------
    @staticmethod
    def stage(name: str) -> None:
        """Attribute the requests of the calling coroutine (and the tasks it starts from now on) to stage
        ``name``."""
        current_stage.set(name)

    def stage_usage(self, name: str | None = None) -> Usage:
        """The usage of one stage in this session (default: the stage of the calling coroutine)."""
        name = current_stage.get() if name is None else name
        if name not in self.usage_by_stage:
            self.usage_by_stage[name] = Usage()
        return self.usage_by_stage[name]

    def _give_up(self, failures: Counter) -> bool:
        """``max_retries`` bounds the retries of failures (5xx, timeouts, resets); a server saying it is busy (429,
        503) is a queue, not a failure: those get ten times as many, so a storm slows a night down, never ends it."""
        return failures[False] > self.max_retries or failures[True] > 10 * self.max_retries

    async def _send_with_retries(self, req: ChatRequest, kind: str, priority: int = 0) -> Completion:
        """The first try runs bare (most requests need one, and tenacity's machinery costs CPU on every call);
        after a transient failure, tenacity retries with exponential backoff and jitter, honouring Retry-After."""
        failures: Counter = Counter()
        try:
            try:
                return await self._attempt(req, kind, priority)
            except Transient as first:
                failures[first.congestion] += 1
                if self._give_up(failures):
                    raise
                self._count_retry(first)
                state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
                state.set_exception((type(first), first, first.__traceback__))
                await asyncio.sleep(self._wait(state))

            def stop(st: RetryCallState) -> bool:
                failures[st.outcome.exception().congestion] += 1
                return self._give_up(failures)

            retrying = AsyncRetrying(retry=retry_if_exception_type(Transient), wait=self._wait, stop=stop,
                                     before_sleep=lambda st: self._count_retry(st.outcome.exception()), reraise=True)
            async for attempt in retrying:
                with attempt:
                    c = await self._attempt(req, kind, priority)
            return c
        except Transient as e:
            raise TeacherError(f"teacher {self.model_name} failed after {sum(failures.values()) - 1} retries: "
                               f"{e.kind}: {e}") from None
        except Refused as e:
            return Completion(text=str(e)[:2000], finish_reason=REFUSED)

    # -- the engine's own event loop, so that sync callers and one run's stages share one connection pool ---------
    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` (a stage, a batch) on the engine's loop and wait for it. Ctrl-C or SIGTERM in the caller
        cancels it: records written so far stay written, requests in flight are dropped (and resent on resume)."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="teacher-engine", daemon=True)
            self._thread.start()
        loop = self._loop
        finished = threading.Event()
        box: dict[str, asyncio.Task] = {}

        def start() -> None:
            box["task"] = task = loop.create_task(coro)
            task.add_done_callback(lambda _: finished.set())

        loop.call_soon_threadsafe(start)
        try:
            finished.wait()  # a signal in this (the main) thread interrupts the wait
        except BaseException:
            # Cancel and wait until the coroutine has really ended: a stage records itself as it is torn down,
            # and the caller's own bookkeeping (the final manifest) must come after that, never beside it.
            loop.call_soon_threadsafe(lambda: box["task"].cancel())  # runs after start(): FIFO
            finished.wait(timeout=30)
            raise
        task = box["task"]
        if task.cancelled():
            raise asyncio.CancelledError
        return task.result()

    def generate(self, requests: list[ChatRequest], on_result: OnResult | None = None,
                 kind: str = "") -> list[Completion]:
        """The synchronous form: answers for ``requests``, in order, all in flight at once under the limit;
        ``on_result(i, completion)`` as each one arrives."""
        async def one(i: int, r: ChatRequest) -> Completion:
            c = await self.complete(r, kind)
            if on_result:
                on_result(i, c)
            return c

        return self.run(gather_or_cancel(one(i, r) for i, r in enumerate(requests)))

    def close(self, close_backend: bool = True) -> None:
        """Stop the engine's loop and release the backend (its model, its GPU memory, its connections). Closing
        again does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._loop is None:
            if close_backend:
                asyncio.run(self.backend.aclose())
            return
        try:
            self._loop.call_soon_threadsafe(self.flush)
            if self._scanner is not None:
                self._loop.call_soon_threadsafe(self._scanner.cancel)
            if close_backend:
                asyncio.run_coroutine_threadsafe(self.backend.aclose(), self._loop).result(timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop.close()
            self._loop = None

    def describe(self) -> dict:
        s = self.limit.stats
        return {"concurrency": {"auto": self.limit.auto, "ceiling": self.limit.ceiling, "final": s.limit,
                                "peak": s.peak_limit, "peak_in_flight": s.peak_in_flight,
                                "increases": s.increases, "decreases": s.decreases},
                "sent": self.stats.sent, "cache_hits": self.stats.cache_hits, "refused": self.stats.refused,
                "hedged": self.stats.hedged, "hedge_wins": self.stats.hedge_wins,
                "requests_by_kind": dict(self.stats.by_kind),
                **({"backend": self.backend.describe()} if hasattr(self.backend, "describe") else {})}


async def gather_or_cancel(aws: Iterable[Awaitable[T]]) -> list[T]:
    """``asyncio.gather`` for a stage's requests. When one fails for good (the teacher is down), the rest are
    cancelled. When one hits the budget, the others already sent are let finish (they are paid for, and cached)
    before the budget stop is raised: the request budget is exact."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            errors = [t.exception() for t in done if not t.cancelled() and t.exception() is not None]
            if any(not isinstance(e, BudgetExhausted) for e in errors):
                raise next(e for e in errors if not isinstance(e, BudgetExhausted))
            if errors:
                if pending:
                    await asyncio.wait(pending)
                rest = [t.exception() for t in pending if not t.cancelled() and t.exception() is not None]
                raise next((e for e in rest if not isinstance(e, BudgetExhausted)), errors[0])
        return [t.result() for t in tasks]
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
