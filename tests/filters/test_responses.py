"""Repeated responses across tasks (``filters/responses.py``): exact and near repeats of another task's output are
found, with rouge-score's own similarity; repeats within one task, short outputs and pairs at or below the
threshold are not; "off" compares nothing; the decisions equal a brute-force reference built on rouge-score."""
from __future__ import annotations

import random
import unicodedata

import pytest
from rouge_score import rouge_scorer

from pipeline.config import FilterConfig
from pipeline.filters.chain import filter_records
from pipeline.filters.responses import DUPLICATE_RESPONSE, find_duplicate_responses
from pipeline.records import Record

SCORER = rouge_scorer.RougeScorer(["rougeL"])
STOCK = "I am happy to help with that request, here is a clear and complete answer for you today."
NEAR = "I am happy to help with that request, here is a clear and complete answer for you now."
OTHER = "The mitochondria produce most of the chemical energy a cell needs to power its reactions."


def rouge_l(a: str, b: str) -> float:
    return SCORER.score(a, b)["rougeL"].fmeasure


def rec(rid: str, task: str, output: str, instruction: str = "") -> Record:
    return Record(id=rid, task_id=task, instruction=instruction or f"Instruction for task {task} here.",
                  output=output)


def test_an_exact_repeat_of_another_tasks_output_is_flagged_after_normalising():
    copy = "  i AM happy to help with that\trequest,  here is a clear and complete answer for you ｔｏｄａｙ. \n"
    recs = [rec("a", "t1", STOCK), rec("b", "t2", copy), rec("d", "t4", OTHER)]
    found = find_duplicate_responses(recs, FilterConfig())
    assert found.duplicates == {1: (DUPLICATE_RESPONSE, {"kind": "exact", "nearest_id": "a", "similarity": 1.0,
                                                         "threshold": 0.9})}
    assert found.stats["compared"] == 3 and found.stats["exact"] == 1 and found.stats["near"] == 0
    example = found.stats["examples"][0]
    assert example["id"] == "b" and example["nearest_id"] == "a" and example["kind"] == "exact"
    assert example["output"] == copy[:80] and example["nearest_output"] == STOCK[:80]


def test_records_without_a_task_id_are_their_own_task():
    recs = [Record(id="a", instruction="x", output=STOCK), Record(id="b", instruction="y", output=STOCK)]
    assert list(find_duplicate_responses(recs, FilterConfig()).duplicates) == [1]


def test_repeats_within_one_task_are_not_flagged():
    recs = [rec("a1", "t1", STOCK), rec("a2", "t1", STOCK), rec("a3", "t1", NEAR), rec("d", "t4", OTHER)]
    found = find_duplicate_responses(recs, FilterConfig())
    assert found.duplicates == {} and found.stats["compared"] == 4
    # ... even after another task copied the output: the task the first occurrence belongs to keeps its repeats.
    recs = [rec("a1", "t1", STOCK), rec("b", "t2", STOCK), rec("a3", "t1", STOCK)]
    assert list(find_duplicate_responses(recs, FilterConfig()).duplicates) == [1]


def test_outputs_shorter_than_response_min_words_are_not_compared():
    short = "Positive sentiment, clearly so."  # 4 words
    recs = [rec("a", "t1", short), rec("b", "t2", short), rec("c", "t3", short.upper())]
    found = find_duplicate_responses(recs, FilterConfig())  # response_min_words = 8
    assert found.duplicates == {} and found.stats["compared"] == 0
    # At exactly response_min_words words they are compared.
    found = find_duplicate_responses(recs, FilterConfig(response_min_words=4))
    assert set(found.duplicates) == {1, 2} and found.stats["compared"] == 3


def test_a_near_repeat_carries_rouge_scores_exact_similarity():
    recs = [rec("a", "t1", STOCK), rec("c", "t3", NEAR), rec("d", "t4", OTHER)]
    found = find_duplicate_responses(recs, FilterConfig())
    expected = rouge_l(STOCK, NEAR)
    assert expected > 0.9
    assert found.duplicates == {1: (DUPLICATE_RESPONSE, {"kind": "near", "nearest_id": "a", "similarity": expected,
                                                         "threshold": 0.9})}
    assert found.stats["near"] == 1 and found.stats["exact"] == 0


def test_the_threshold_is_strict():
    score = rouge_l(STOCK, NEAR)
    pair = [rec("a", "t1", STOCK), rec("c", "t3", NEAR)]
    assert list(find_duplicate_responses(pair, FilterConfig(response_similarity=score - 1e-9)).duplicates) == [1]
    assert find_duplicate_responses(pair, FilterConfig(response_similarity=score)).duplicates == {}
    below = FilterConfig(response_similarity=min(score + 0.01, 1.0))
    found = find_duplicate_responses(pair, below)
    assert found.duplicates == {} and found.stats["compared"] == 2 and found.stats["near"] == 0


def test_a_same_task_output_does_not_hide_another_tasks_repeat():
    # c is nearest to b (its own task, 0.875) and still a repeat of a (another task, 0.625 > 0.5).
    a = "alpha beta gamma delta epsilon zeta eta theta"
    b = "alpha beta gamma delta iota kappa lambda mu"  # 0.5 against a: not a repeat
    c = "alpha beta gamma delta epsilon iota kappa lambda"
    assert rouge_l(b, c) == 0.875 and rouge_l(a, c) == 0.625 and rouge_l(a, b) == 0.5
    recs = [rec("a", "t1", a), rec("b", "t2", b), rec("c", "t2", c)]
    found = find_duplicate_responses(recs, FilterConfig(response_similarity=0.5))
    assert found.duplicates == {2: (DUPLICATE_RESPONSE, {"kind": "near", "nearest_id": "a", "similarity": 0.625,
                                                         "threshold": 0.5})}


def test_the_first_occurrence_stays_and_repeats_do_not_join_the_pool():
    a = "one two three four five six seven eight nine ten"
    b = "one two three four five six seven eight nine eleven"  # 0.9 against a
    c = "one two three four five six seven eight twelve eleven"  # 0.9 against b, 0.8 against a
    assert rouge_l(a, b) == pytest.approx(0.9) and rouge_l(b, c) == pytest.approx(0.9)
    assert rouge_l(a, c) == pytest.approx(0.8)
    recs = [rec("a", "t1", a), rec("b", "t2", b), rec("c", "t3", c), rec("b2", "t4", b.upper())]
    found = find_duplicate_responses(recs, FilterConfig(response_similarity=0.85))
    assert set(found.duplicates) == {1, 3}
    # The copy of the repeat b points to the first occurrence a, not to b.
    assert found.duplicates[3][1] == {"kind": "near", "nearest_id": "a", "similarity": rouge_l(a, b),
                                      "threshold": 0.85}


def test_off_compares_nothing():
    recs = [rec("a", "t1", STOCK), rec("b", "t2", STOCK), rec("c", "t3", NEAR)]
    assert set(find_duplicate_responses(recs, FilterConfig(response_dedup="report")).duplicates) == {1, 2}
    found = find_duplicate_responses(recs, FilterConfig(response_dedup="off"))
    assert found.duplicates == {}
    assert found.stats == {"compared": 0, "exact": 0, "near": 0, "examples": []}


def _reference(records: list[Record], cfg: FilterConfig) -> dict[int, tuple[str, str, float]]:
    """Brute force over rouge-score: position -> (kind, nearest id, similarity)."""
    def normal(t: str) -> str:
        return " ".join(unicodedata.normalize("NFKC", t).lower().split())

    pool: list[Record] = []
    out = {}
    for pos, r in enumerate(records):
        if len(r.output.split()) < cfg.response_min_words:
            continue
        task = r.task_id or r.id
        others = [p for p in pool if (p.task_id or p.id) != task]
        same = [p for p in others if normal(p.output) == normal(r.output)]
        if same:
            out[pos] = ("exact", same[0].id, 1.0)
            continue
        best, best_id = 0.0, None
        for p in others:
            s = rouge_l(r.output, p.output)
            if s > best:
                best, best_id = s, p.id
        if best > cfg.response_similarity:
            out[pos] = ("near", best_id, best)
        else:
            pool.append(r)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_the_decisions_equal_a_brute_force_reference(seed):
    rng = random.Random(seed)
    words = "red green blue cyan magenta yellow black white grey pink".split()
    recs: list[Record] = []
    for i in range(150):
        if recs and rng.random() < 0.3:  # a copy or an edit of an earlier output, sometimes within its task
            src = rng.choice(recs)
            toks = src.output.split()
            if rng.random() < 0.5:
                toks[rng.randrange(len(toks))] = rng.choice(words)
            text = " ".join(toks) if rng.random() < 0.7 else "  " + " ".join(toks).upper()
        else:
            text = " ".join(rng.choice(words) for _ in range(rng.randint(5, 14)))
        task = f"t{i // 3}" if rng.random() < 0.5 else f"t{rng.randrange(40)}"
        recs.append(rec(f"r{i}", task, text))
    cfg = FilterConfig(response_similarity=rng.choice([0.6, 0.75, 0.9]), response_min_words=6)
    found = find_duplicate_responses(recs, cfg)
    got = {pos: (d["kind"], d["nearest_id"], d["similarity"]) for pos, (_, d) in found.duplicates.items()}
    want = _reference(recs, cfg)
    assert got == want
    assert len(want) > 10  # the data holds repeats of both kinds
    assert {k for k, _, _ in want.values()} == {"exact", "near"}


@pytest.mark.parametrize("mode,kept", [("off", 3), ("report", 3), ("reject", 2)])
def test_the_chain_reports_or_rejects(mode, kept):
    recs = [rec("a", "t1", STOCK, "Greet the customer politely and offer help."),
            rec("b", "t2", STOCK, "Explain how photosynthesis turns light into sugar."),
            rec("c", "t3", OTHER, "Describe what mitochondria do inside a cell.")]
    res = filter_records(recs, FilterConfig(response_dedup=mode))
    assert len(res.kept) == kept
    assert res.stats["responses"]["mode"] == mode
    assert res.stats["responses"]["exact"] == (0 if mode == "off" else 1)
    if mode == "reject":
        assert res.rejected[0].record.id == "b" and res.rejected[0].reason == DUPLICATE_RESPONSE
