"""One engine for every teacher request of a run.

Stages ask for completions with ``await engine.complete(request)``. The engine answers from the request cache
when it can, checks the budget, waits for a slot under the concurrency limit, sends the request through the
backend, retries transient failures with exponential backoff and jitter (a request waiting out its backoff holds
no slot), stores the answer in the cache the moment it arrives, and counts usage. Every stage and phase shares
the one window of slots, so a server is kept busy across phase boundaries instead of draining at each one.

Concurrency is either fixed or ``"auto"``: start modest, grow while latency stays flat and the window is full,
shrink on 429/503 and when latency climbs (a self-hosted server queues instead of refusing), never above the
configured ceiling. See ``AdaptiveLimit``.

A request that can never succeed (HTTP 400: context too long, content filter, unsupported parameter; llama.cpp
rejecting a prompt) is not retried and does not end the run: it comes back as a completion with
``finish_reason == "refused"`` and the server's message as text, is cached like any answer (a resume does not
send it again), and the stage rejects its record with reason ``teacher_refused``.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Coroutine, Iterable, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from ..errors import TeacherError
from .base import REFUSED, Backend, ChatRequest, Completion, OnResult, Refused, Transient, Usage
from .cache import Budget, BudgetExhausted, RequestCache, Spent

T = TypeVar("T")


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
    (the 10th percentile of a window, the lowest over the run), and at the end of each window (about one round
    trip: ``limit`` completions) it takes the median of latency / quickest. Near 1: the server has room, and if
    the window was full the limit grows (doubling at first, then by an eighth). Above ``high`` (2): requests wait
    in the server's queue, and the limit shrinks in proportion. In between it holds: the server is full and a
    short queue keeps it from idling between answers. A 429 or 503 cuts the limit by a quarter (once per window)
    and caps it just under the level that was refused, a cap raised by one per window to probe again. Windows
    where the stages offered fewer requests than the limit say nothing about the server and change nothing.
    """

    def __init__(self, ceiling: int, auto: bool, initial: int = 8, low: float = 1.3, high: float = 2.0):
        self.ceiling, self.auto, self.low, self.high = max(1, ceiling), auto, low, high
        self.limit = min(self.ceiling, initial) if auto else self.ceiling
        self.in_flight = 0
        self.stats = LimitStats(limit=self.limit, peak_limit=self.limit)
        self._cond = asyncio.Condition()
        self._startup = True
        self._window: list[tuple[str, float]] = []
        self._window_full = False
        self._congested = False
        self._soft_cap: float = float(self.ceiling)
        self._quickest: dict[str, float] = {}
        self._last_change = time.monotonic()

    async def acquire(self) -> None:
        async with self._cond:
            while self.in_flight >= self.limit:
                self._window_full = True
                await self._cond.wait()
            self._account()
            self.in_flight += 1
            if self.in_flight >= self.limit:
                self._window_full = True
            self.stats.peak_in_flight = max(self.stats.peak_in_flight, self.in_flight)

    async def release(self, latency: float | None, congestion: bool = False, kind: str = "") -> None:
        async with self._cond:
            self._account()
            self.in_flight -= 1
            if self.auto:
                if congestion:
                    self._on_congestion()
                elif latency is not None:
                    self._window.append((kind, latency))
                    if len(self._window) >= max(self.limit, 8):
                        self._end_window()
            self._cond.notify(max(1, self.limit - self.in_flight))

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
        for kind, lats in by_kind.items():
            if len(lats) >= 5:
                lats.sort()
                p10 = lats[len(lats) // 10]
                self._quickest[kind] = min(self._quickest.get(kind, p10), p10)
        ratios = sorted(lat / self._quickest[kind] for kind, lat in window if kind in self._quickest)
        if congested or not ratios:
            return
        self._soft_cap = min(float(self.ceiling), self._soft_cap + 1)
        inflation = ratios[len(ratios) // 2]
        if inflation > self.high:
            self._startup = False
            self._set(self.limit * max(0.5, self.high * 0.75 / inflation))
        elif inflation < self.low and full:
            self._set(self.limit * 2 if self._startup else self.limit + max(1, self.limit // 8))
        elif inflation >= self.low:
            self._startup = False


def _retry_wait(initial: float, maximum: float):
    backoff = wait_exponential_jitter(multiplier=initial, max=maximum)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return max(backoff(state), getattr(exc, "retry_after", 0.0))

    return wait


@dataclass
class EngineStats:
    sent: int = 0
    cache_hits: int = 0
    refused: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


class Engine:
    """The run's one scheduler of teacher requests (see the module docstring)."""

    def __init__(self, backend: Backend, cache: RequestCache | None = None, budget: Budget | None = None, *,
                 concurrency: int = 8, auto: bool = False, max_retries: int = 6, backoff_initial_s: float = 0.5,
                 backoff_max_s: float = 30.0):
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
        self._wait = _retry_wait(backoff_initial_s, backoff_max_s)
        self.usage = Usage()
        self.stats = EngineStats()
        self._spent = cache.spent() if cache is not None else Spent(0, 0, 0)
        self._reserved = 0  # requests sent and not yet answered: the request budget is exact
        self._pending: dict[str, asyncio.Future] = {}  # identical requests in flight are sent once
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- the one call stages make -------------------------------------------------------------------------------
    async def complete(self, req: ChatRequest, kind: str = "") -> Completion:
        key = req.key(self.backend_name, self.model_name)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.usage.cache_hits += 1
                self.stats.cache_hits += 1
                return hit
        if key in self._pending:  # the same request is already out: share its answer, pay once
            return await asyncio.shield(self._pending[key])
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        try:
            c = await self._send(req, key, kind)
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

    async def _send(self, req: ChatRequest, key: str, kind: str) -> Completion:
        self._check_budget()
        self._reserved += 1
        try:
            c = await self._send_with_retries(req, kind)
        finally:
            self._reserved -= 1
        if self.cache is not None:
            self.cache.put(key, c)
        self._spent = Spent(self._spent.requests + 1, self._spent.prompt_tokens + c.prompt_tokens,
                            self._spent.completion_tokens + c.completion_tokens)
        self.usage.add(c)
        self.stats.sent += 1
        if kind:
            self.stats.by_kind[kind] = self.stats.by_kind.get(kind, 0) + 1
        if c.finish_reason == REFUSED:
            self.stats.refused += 1
        return c

    async def _send_with_retries(self, req: ChatRequest, kind: str) -> Completion:
        def count(state: RetryCallState) -> None:
            exc = state.outcome.exception()
            kind = getattr(exc, "kind", type(exc).__name__)
            self.usage.retries += 1
            self.usage.retries_by_kind[kind] = self.usage.retries_by_kind.get(kind, 0) + 1

        retrying = AsyncRetrying(retry=retry_if_exception_type(Transient), wait=self._wait,
                                 stop=stop_after_attempt(self.max_retries + 1), before_sleep=count, reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    await self.limit.acquire()
                    t0, congestion, latency = time.monotonic(), False, None
                    try:
                        c = await self.backend.send(req)
                        latency = time.monotonic() - t0
                    except Transient as e:
                        congestion = e.congestion
                        raise
                    finally:
                        await self.limit.release(latency, congestion, kind)
        except Transient as e:
            raise TeacherError(f"teacher {self.model_name} failed after {self.max_retries} retries: "
                               f"{e.kind}: {e}") from None
        except Refused as e:
            return Completion(text=str(e)[:2000], finish_reason=REFUSED)
        return c

    # -- the engine's own event loop, so that sync callers and one run's stages share one connection pool ---------
    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` (a stage, a batch) on the engine's loop and wait for it. Ctrl-C or SIGTERM in the caller
        cancels it: records written so far stay written, requests in flight are dropped (and resent on resume)."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="teacher-engine", daemon=True)
            self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result()
        except BaseException:
            if not fut.done():
                fut.cancel()
                try:
                    fut.result(timeout=30)
                except BaseException:  # noqa: BLE001 - cancelled, or it failed on its way out: the first error wins
                    pass
            raise

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
        if self._loop is None:
            if close_backend:
                asyncio.run(self.backend.aclose())
            return
        try:
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
                "requests_by_kind": dict(self.stats.by_kind)}


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
