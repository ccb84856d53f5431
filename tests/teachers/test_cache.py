"""The engine's request cache and budget in front of the real embedded teacher: a repeated request is answered from
the cache, never sent twice; the request budget is exact; a model with no price has an unknown cost, never $0."""
import sqlite3

import pytest

from pipeline.config import Decoding, TeacherConfig
from pipeline.teachers import ChatRequest, Engine, make_backend
from pipeline.teachers.cache import Budget, BudgetExhausted, RequestCache, describe_spent

SHORT = Decoding(temperature=0.0, top_p=1.0, max_tokens=6)
QUESTIONS = ["Name a colour.", "Name a fruit.", "Name a planet."]


@pytest.fixture(scope="module")
def backend():
    b = make_backend(TeacherConfig())
    yield b
    Engine(b).close()


@pytest.fixture
def engines(backend):
    """Engines over the one real backend, each with its own cache and budget, as successive sessions would be."""
    made: list[Engine] = []

    def make(cache, budget=None) -> Engine:
        made.append(Engine(backend, cache, budget))
        return made[-1]

    yield make
    for e in made:
        e.close(close_backend=False)


def _requests() -> list[ChatRequest]:
    return [ChatRequest([{"role": "user", "content": q}], SHORT) for q in QUESTIONS]


def _rows(path, cache: RequestCache | None = None) -> int:
    """Rows another process would see (after the cache's group commit, when ``cache`` is given)."""
    if cache is not None:
        cache.flush()
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]


def test_a_repeated_request_is_answered_from_the_cache(engines, tmp_path):
    cache = RequestCache(tmp_path / "cache.sqlite")
    first = engines(cache)
    texts = [c.text for c in first.generate(_requests())]
    assert first.usage.requests == 3 and first.usage.cache_hits == 0 and all(texts)
    again = engines(cache)
    assert [c.text for c in again.generate(_requests())] == texts
    assert again.usage.requests == 0 and again.usage.cache_hits == 3
    assert _rows(tmp_path / "cache.sqlite", cache) == 3


def test_the_request_budget_is_exact_and_a_larger_one_resumes(engines, tmp_path):
    cache = RequestCache(tmp_path / "cache.sqlite")
    seen: list[int] = []
    capped = engines(cache, Budget(max_requests=2))
    with pytest.raises(BudgetExhausted, match="request budget reached"):
        capped.generate(_requests(), on_result=lambda i, c: seen.append(i))
    assert sorted(seen) == [0, 1] and _rows(tmp_path / "cache.sqlite", cache) == 2  # paid answers are kept
    with pytest.raises(BudgetExhausted):  # nothing more is sent once the budget is spent
        engines(cache, Budget(max_requests=2)).generate(_requests()[2:])
    larger = engines(cache, Budget(max_requests=5))
    assert len(larger.generate(_requests())) == 3
    assert larger.usage.cache_hits == 2 and larger.usage.requests == 1 and _rows(tmp_path / "cache.sqlite", cache) == 3


def test_cost_is_unknown_without_a_price_and_counted_with_one(engines, tmp_path):
    cache = RequestCache(tmp_path / "cache.sqlite")
    engines(cache).generate(_requests()[:1])
    spent = cache.spent()
    assert describe_spent(spent, Budget())["cost_usd"].startswith("unknown")
    priced = describe_spent(spent, Budget(price=(0.5, 1.5)))
    assert priced["cost_usd"] == pytest.approx((spent.prompt_tokens * 0.5 + spent.completion_tokens * 1.5) / 1e6)
    assert spent.requests == 1 and spent.prompt_tokens > 0 and spent.completion_tokens > 0


def test_identical_requests_in_one_batch_are_sent_once(engines, tmp_path):
    cache = RequestCache(tmp_path / "cache.sqlite")
    seen: list[int] = []
    cached = engines(cache, Budget(max_requests=1))
    same = _requests()[:1] * 3
    out = cached.generate(same, on_result=lambda i, c: seen.append(i))
    assert len({c.text for c in out}) == 1 and sorted(seen) == [0, 1, 2]
    assert cached.usage.requests == 1 and cache.spent().requests == 1  # paid once, counted once, within budget


def test_the_instances_of_one_task_are_different_requests():
    from pipeline.stages.instances import instance_request

    messages = [{"role": "user", "content": "Write an input for: Summarize the text."}]
    keys = {instance_request(messages, SHORT, k).key("llamacpp", "m") for k in range(3)}
    assert len(keys) == 3
    # The first instance keeps the plain request's key, so caches of earlier runs still answer it.
    assert instance_request(messages, SHORT, 0).key("llamacpp", "m") == ChatRequest(messages, SHORT).key("llamacpp", "m")


def test_answers_are_committed_in_groups_and_on_flush(tmp_path):
    from pipeline.teachers import Completion

    path = tmp_path / "cache.sqlite"
    cache = RequestCache(path, max_pending=4, max_delay_s=3600)
    for k in range(3):
        cache.put(f"k{k}", Completion(f"answer {k}", "stop", 1, 1))
    assert _rows(path) == 0 and cache.get("k2").text == "answer 2"  # stored, readable here, not yet committed
    cache.put("k3", Completion("answer 3", "stop", 1, 1))  # the 4th: the group is committed
    assert _rows(path) == 4 and cache.commits == 1
    cache.put("k4", Completion("answer 4", "stop", 1, 1))
    cache.flush()
    assert _rows(path) == 5 and cache.commits == 2
    cache.put("k5", Completion("answer 5", "stop", 1, 1))
    cache.close()  # closing commits what is left
    assert _rows(path) == 6
    late = RequestCache(path, max_pending=100, max_delay_s=0.0)  # no delay allowed: every answer commits at once
    late.put("k6", Completion("answer 6", "stop", 1, 1))
    assert _rows(path) == 7
    late.close()
