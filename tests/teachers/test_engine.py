"""The request engine's own logic against scripted backends (exact timing and faults): adaptive concurrency, retries
that hold no slot, refusals that are recorded and cached, bugs that are not retried, identical requests sent once."""
from __future__ import annotations

import asyncio
import time

import pytest

from pipeline.config import Decoding
from pipeline.errors import TeacherError
from pipeline.teachers import ChatRequest, Completion, Engine
from pipeline.teachers.base import REFUSED, Refused, Transient
from pipeline.teachers.cache import RequestCache
from pipeline.teachers.engine import AdaptiveLimit
from pipeline.teachers.openai_api import retry_after_seconds

D = Decoding(temperature=0.0, top_p=1.0, max_tokens=8)


def req(i: int) -> ChatRequest:
    return ChatRequest([{"role": "user", "content": f"question {i}"}], D)


class Server:
    """A scripted backend: ``slots`` parallel slots (more requests queue, as vLLM's do), ``latency`` seconds each,
    optional refusal above ``refuse_above`` in flight (429), and a script of failures per request text."""

    backend, model_name, max_parallel = "scripted", "m", None

    def __init__(self, slots=4, latency=0.02, refuse_above=None, script=None):
        self.slots, self.latency, self.refuse_above = slots, latency, refuse_above
        self.script = dict(script or {})
        self.in_flight = self.peak = self.calls = 0
        self.busy = 0.0
        self._sem: asyncio.Semaphore | None = None

    async def send(self, r: ChatRequest) -> Completion:
        self.calls += 1
        text = r.messages[-1]["content"]
        todo = self.script.get(text)
        if todo:
            exc = todo.pop(0)
            if exc is not None:
                raise exc
        if self.refuse_above is not None and self.in_flight >= self.refuse_above:
            raise Transient("http_429", "busy", retry_after=0.0, congestion=True)
        self._sem = self._sem or asyncio.Semaphore(self.slots)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            async with self._sem:
                t0 = time.monotonic()
                await asyncio.sleep(self.latency)
                self.busy += time.monotonic() - t0
        finally:
            self.in_flight -= 1
        return Completion(text=f"answer to {text}", finish_reason="stop", prompt_tokens=3, completion_tokens=2)

    async def aclose(self) -> None:
        pass


@pytest.fixture
def engines():
    made = []

    def make(backend, **kw) -> Engine:
        kw.setdefault("backoff_initial_s", 0.01)
        kw.setdefault("backoff_max_s", 0.05)
        made.append(Engine(backend, **kw))
        return made[-1]

    yield make
    for e in made:
        e.close()


def test_fixed_concurrency_never_exceeds_the_ceiling(engines):
    server = Server(slots=64, latency=0.01)
    out = engines(server, concurrency=5).generate([req(i) for i in range(60)])
    assert [c.text for c in out] == [f"answer to question {i}" for i in range(60)]
    assert server.peak == 5


def test_auto_concurrency_grows_to_fill_a_queueing_server_and_stops_there(engines):
    # 24 slots, 100 ms: latency is flat up to 24 in flight, then grows with the queue (slow enough that the client's
    # own CPU is never the limit, even on a busy 2-core machine). The limit starts at 16, grows (x4) past the
    # width, sees the queue and comes back to between 1x and 2x the width.
    server = Server(slots=24, latency=0.1)
    e = engines(server, concurrency=512, auto=True)
    t0 = time.monotonic()
    e.generate([req(i) for i in range(1500)])
    wall = time.monotonic() - t0
    s = e.limit.stats
    # Near the server's width (noise on a busy client can dip it a little below), never near the 512 ceiling.
    assert 18 <= s.limit <= 48, s
    assert s.increases >= 1 and s.decreases >= 1 and s.peak_limit <= 64
    assert server.busy / (24 * wall) > 0.8  # and the server was kept busy


def test_auto_concurrency_backs_off_on_429_and_retries_everything(engines):
    server = Server(slots=1000, latency=0.01, refuse_above=16)
    e = engines(server, concurrency=256, auto=True, max_retries=50)
    out = e.generate([req(i) for i in range(1500)])
    assert len(out) == 1500 and all(c.finish_reason == "stop" for c in out)
    assert e.usage.retries_by_kind.get("http_429", 0) >= 1
    assert e.limit.stats.limit <= 24  # settled near the server's 16, not at the 256 ceiling


def test_a_request_waiting_out_its_backoff_holds_no_slot(engines):
    # One slot. Request 0 fails once and must wait 0.5 s; request 1 is served meanwhile, not after.
    server = Server(slots=1, latency=0.01, script={"question 0": [Transient("http_503", "down", retry_after=0.5)]})
    e = engines(server, concurrency=1)
    finished: dict[int, float] = {}
    t0 = time.monotonic()
    e.generate([req(0), req(1)], on_result=lambda i, c: finished.setdefault(i, time.monotonic() - t0))
    assert finished[1] < 0.3 <= 0.5 <= finished[0]
    assert e.usage.retries_by_kind == {"http_503": 1}


def test_a_refused_request_becomes_a_cached_refusal_and_is_not_sent_again(engines, tmp_path):
    cache = RequestCache(tmp_path / "cache.sqlite")
    server = Server(script={"question 1": [Refused("HTTP 400: maximum context length is 4096 tokens")]})
    out = engines(server, cache=cache).generate([req(0), req(1), req(2)])
    assert out[1].finish_reason == REFUSED and "maximum context length" in out[1].text
    assert out[0].finish_reason == out[2].finish_reason == "stop"
    calls = server.calls
    again = engines(server, cache=cache).generate([req(1)])
    assert again[0].finish_reason == REFUSED and server.calls == calls  # the resume asks the cache, not the server


def test_a_bug_in_our_code_is_not_retried(engines):
    server = Server(script={"question 0": [TypeError("unsupported operand")]})
    with pytest.raises(TypeError):
        engines(server, max_retries=5).generate([req(0)])
    assert server.calls == 1


def test_a_teacher_down_for_good_is_one_teacher_error_after_bounded_retries(engines):
    down = [Transient("connection", "connection refused")] * 10
    server = Server(script={"question 0": list(down)})
    with pytest.raises(TeacherError, match="failed after 3 retries: connection"):
        engines(server, max_retries=3).generate([req(0)])
    assert server.calls == 4


def test_a_busy_server_gets_ten_times_the_retries_of_a_failing_one(engines):
    busy = [Transient("http_429", "slow down", congestion=True)] * 12
    server = Server(script={"question 0": list(busy[:9]), "question 1": list(busy)})
    e = engines(server, max_retries=1)
    assert e.generate([req(0)])[0].text  # nine 429s in a row: still within 10 x max_retries
    with pytest.raises(TeacherError, match="failed after 10 retries: http_429"):
        e.generate([req(1)])


def test_fixed_concurrency_still_backs_off_on_429(engines):
    server = Server(slots=1000, latency=0.01, refuse_above=16)
    e = engines(server, concurrency=64, auto=False)
    out = e.generate([req(i) for i in range(400)])
    assert len(out) == 400 and e.limit.stats.decreases >= 1


def test_identical_requests_in_flight_are_sent_once(engines):
    server = Server(latency=0.05)
    out = engines(server, concurrency=8).generate([req(7)] * 5)
    assert len({c.text for c in out}) == 1 and server.calls == 1


def test_retry_after_in_seconds_or_as_an_http_date():
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("Wed, 21 Oct 2026 07:28:10 GMT", now=1792567680.0) == pytest.approx(10.0)
    assert retry_after_seconds("soon") == 0.0 and retry_after_seconds(None) == 0.0


def test_limit_stats_count_busy_time():
    async def go():
        lim = AdaptiveLimit(ceiling=4, auto=False)
        await lim.acquire()
        await lim.acquire()
        await asyncio.sleep(0.1)
        lim.release(0.1)
        lim.release(0.1)
        return lim.stats

    stats = asyncio.run(go())
    assert stats.busy_seconds == pytest.approx(0.2, abs=0.05) and stats.peak_in_flight == 2


class Straggling(Server):
    """``Server`` where the first ``copies`` sends of one request take ``slow`` seconds (a heavy tail)."""

    def __init__(self, slow_text: str, slow: float, copies: int = 1, **kw):
        super().__init__(**kw)
        self.slow_text, self.slow, self.slow_left = slow_text, slow, copies

    async def send(self, r: ChatRequest) -> Completion:
        if r.messages[-1]["content"] == self.slow_text and self.slow_left:
            self.slow_left -= 1
            await asyncio.sleep(self.slow)
            return Completion(text="slow answer", finish_reason="stop", prompt_tokens=3, completion_tokens=2)
        return await super().send(r)


def _finish_times(e: Engine, n: int) -> dict[int, float]:
    done: dict[int, float] = {}

    async def go():
        t0 = time.monotonic()

        async def one(i):
            await e.complete(req(i), "q")
            done[i] = time.monotonic() - t0
        await asyncio.gather(*(one(i) for i in range(n)))
    e.run(go())
    return done


def test_a_straggler_is_hedged_ahead_of_the_requests_waiting_for_slots(engines):
    # 4 slots full all along (300 requests of 50 ms behind them); the first send of request 0 takes 4 s. Its copy
    # (after 3 x the 50 ms median) goes before the waiting requests, so request 0 is answered long before 4 s,
    # while the rest are still being worked through.
    server = Straggling("question 0", slow=4.0, slots=64, latency=0.05)
    e = engines(server, concurrency=4, hedge=3.0)
    done = _finish_times(e, 300)
    assert done[0] < 2.0 < max(done.values()), (done[0], max(done.values()))
    assert e.stats.hedged >= 1 and e.stats.hedge_wins == 1


def test_a_copy_that_straggles_too_gets_a_third(engines):
    server = Straggling("question 0", slow=4.0, copies=2, slots=64, latency=0.05)
    e = engines(server, concurrency=4, hedge=3.0)
    done = _finish_times(e, 100)
    assert done[0] < 3.0, done[0]
    assert e.stats.hedged == 2 and e.stats.hedge_wins == 1


def test_no_hedging_when_off(engines):
    server = Straggling("question 0", slow=1.0, slots=64, latency=0.02)
    e = engines(server, concurrency=4)
    done = _finish_times(e, 60)
    assert done[0] >= 1.0 and e.stats.hedged == 0


def test_a_kind_first_seen_while_the_server_queues_does_not_take_the_queue_for_its_speed():
    # Kind "a" is learnt on an idle server (1 s); then the server queues: "a" takes 3 s, and kind "b", new, 3 s too.
    # b's quickest is its 3 s over the 3x that "a" shows now: 1 s, and the window reads as a queue (limit cut).
    lim = AdaptiveLimit(1024, auto=True, initial=64)

    async def go():
        for lat in [1.0] * 48:
            await lim.acquire()
            lim.release(lat, kind="a", epoch=lim._epoch)
        before = lim.limit
        for i in range(int(before * 0.75) + 1):
            await lim.acquire()
            lim.release(3.0, kind="a" if i % 2 else "b", epoch=lim._epoch)
        return before
    before = asyncio.run(go())
    assert lim._quickest["b"] == pytest.approx(1.0)
    assert lim.limit < before


def test_when_the_engine_is_quiet_a_copy_goes_after_the_median(engines):
    # hedge = 40: a copy after 2 s while slots are in demand; once the other 40 are answered and only the
    # straggler is out, it gets a copy after the 50 ms median instead.
    server = Straggling("question 0", slow=4.0, slots=64, latency=0.05)
    e = engines(server, concurrency=8, hedge=40.0)
    done = _finish_times(e, 41)
    assert done[0] < 1.5, done[0]
    assert e.stats.hedge_wins == 1


def test_a_copy_cancelled_after_it_was_sent_is_counted_as_spent(engines, tmp_path):
    # A paid API bills the straggling copy whose race the hedge won: the budget counts it (prompt size and the
    # most it could generate), beside the answers in the cache.
    cache = RequestCache(tmp_path / "cache.sqlite")
    server = Straggling("question 0", slow=4.0, slots=64, latency=0.05)
    e = engines(server, concurrency=4, hedge=3.0, cache=cache)
    _finish_times(e, 60)
    e.close()
    spent = cache.spent()
    assert e.stats.hedge_wins == 1 and spent.billed_failures == 1
    assert spent.requests == 61 and spent.completion_tokens == 60 * 2 + D.max_tokens


def test_a_copy_cancelled_before_it_ever_ran_gives_its_slot_back(engines):
    # A hedge copy launched in the same turn of the loop as its try is answered is cancelled before its coroutine
    # starts; its slot must come back all the same (a lost slot a time, a long run ends with none: a hang).
    from pipeline.teachers.engine import _Try

    e = engines(Server(), concurrency=4, hedge=3.0)

    async def go():
        epoch = await e.limit.acquire()
        tr = _Try(req(0), "q", time.monotonic(), asyncio.get_running_loop().create_future())
        e._launch(tr, epoch)
        tr.tasks[0].cancel()
        await asyncio.gather(*tr.tasks, return_exceptions=True)
        return e.limit.in_flight
    assert e.run(go()) == 0


def test_a_copy_cancelled_from_inside_the_transport_is_retried_not_waited_for_forever(engines):
    # A transport that ends a request with CancelledError although nobody cancelled it (suspected, never shown,
    # when a heavy-tail run seemed to hang; that was the auto limit at one slot): the try fails as a connection
    # error and is sent again instead of waiting forever.
    e = engines(Server(script={"question 3": [asyncio.CancelledError()]}), concurrency=4, hedge=3.0)

    async def go():
        return await asyncio.wait_for(asyncio.gather(*(e.complete(req(i), "q") for i in range(8))), timeout=10)
    out = e.run(go())
    assert [c.text for c in out] == [f"answer to question {i}" for i in range(8)]
    assert e.usage.retries_by_kind.get("connection") == 1


def test_an_interrupted_run_returns_only_after_the_coroutine_has_torn_down(engines):
    """Ctrl-C (or SIGTERM, mapped to it) in the caller cancels the stage; the caller's own bookkeeping after the
    interrupt (the final manifest) must see the stage's teardown done, never race it."""
    import os
    import signal
    import threading

    engine = engines(Server())
    events: list[str] = []

    async def stage() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(0.3)  # a teardown that itself waits (in-flight requests being cancelled)
            events.append("stage recorded")

    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        engine.run(stage())
    events.append("caller's finally")
    assert events == ["stage recorded", "caller's finally"]


def test_auto_limit_never_shrinks_below_a_level_that_read_flat():
    """A kind first seen while the server queued gets its quickest latency guessed (its latency divided by how
    slow the known kinds were), and a wrong guess must not make every later answer read as a queue: it once cut
    the limit to one slot, and a 2000-task run crawled at one request at a time (the heavy-tail bench)."""
    async def window(lim: AdaptiveLimit, samples: list[tuple[str, float]]) -> None:
        epochs = [await lim.acquire() for _ in range(min(len(samples), lim.limit))]
        for i, (kind, latency) in enumerate(samples):
            if i >= len(epochs):
                epochs.append(await lim.acquire())
            lim.release(latency, kind=kind, epoch=epochs[i])

    async def scenario() -> AdaptiveLimit:
        lim = AdaptiveLimit(ceiling=1024, auto=True)  # a server 64 wide, 2 s a request
        while lim.limit < 64:
            await window(lim, [("generate", 2.0)] * lim.limit)  # flat and full: the limit grows x4
        await window(lim, [("generate", 2.0)] * 64)  # 64 reads flat: it grows to 256, four times the width
        assert lim.limit == 256
        # Queued 4x: the known kind reads 8 s. A new kind's first answers came when the queue had gone down
        # (2 s): divided by the known kind's inflation (4), its quickest is guessed at 0.5 s, four times too low.
        await window(lim, [("generate", 8.0)] * 160 + [("answer", 2.0)] * 32)
        for _ in range(40):  # from now on only answers, at the server's true speed
            await window(lim, [("answer", 2.0)] * max(lim.limit, 8))
        return lim

    lim = asyncio.run(scenario())
    assert lim.limit >= 64
