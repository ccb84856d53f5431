"""Benchmark decontamination: planted overlaps are all found, near misses are not, and the index is exact."""
from __future__ import annotations

import random

from pipeline.filters.decontaminate import CONTAMINATED, BenchmarkItem, ContaminationIndex, normal_words
from pipeline.records import Record

ITEM = ("Write a function that takes a list of integers and returns the sum of the squares of the odd numbers "
        "in the list, ignoring negative values.")


def rec(instruction: str, inp: str = "", out: str = "") -> Record:
    return Record(id="r", instruction=instruction, input=inp, output=out)


def test_a_thirteen_word_overlap_rejects_and_names_item_and_ngram():
    index = ContaminationIndex([BenchmarkItem("humaneval", "HumanEval/7", ITEM)])
    words = normal_words(ITEM)
    planted = "Here is a task for you. " + " ".join(words[3:16]).upper() + "! Please solve it."
    verdict = index.check(rec(planted))
    assert verdict is not None and verdict[0] == CONTAMINATED
    assert verdict[1]["benchmark"] == "humaneval" and verdict[1]["item"] == "HumanEval/7"
    assert verdict[1]["ngram"] == " ".join(words[3:16])
    assert index.stats.hits_by_benchmark == {"humaneval": 1}


def test_twelve_shared_words_or_a_broken_run_are_kept():
    index = ContaminationIndex([BenchmarkItem("b", "1", ITEM)])
    words = normal_words(ITEM)
    assert index.check(rec(" ".join(words[0:12]))) is None
    broken = words[0:7] + ["banana"] + words[8:20]
    assert index.check(rec(" ".join(broken))) is None


def test_an_overlap_across_instruction_input_and_output_counts():
    index = ContaminationIndex([BenchmarkItem("b", "1", ITEM)])
    words = normal_words(ITEM)
    verdict = index.check(rec(" ".join(words[:5]), " ".join(words[5:9]), " ".join(words[9:14])))
    assert verdict is not None and verdict[0] == CONTAMINATED


def test_short_items_are_matched_whole_and_tiny_ones_skipped():
    index = ContaminationIndex([BenchmarkItem("b", "short", "Name the capital city of Australia please."),
                                BenchmarkItem("b", "tiny", "What is two plus two?")])
    assert index.stats.short_items == 1 and index.stats.skipped_items == 1
    assert index.check(rec("Quiz: name the capital city of Australia, please!"))[1]["item"] == "short"
    assert index.check(rec("Name the capital city of Austria please.")) is None
    assert index.check(rec("what is two plus two")) is None


def test_every_planted_row_is_found_among_many_clean_ones():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)]
    items = [BenchmarkItem("mine", str(i), " ".join(rng.choices(vocab, k=40))) for i in range(500)]
    index = ContaminationIndex(items)
    clean = [rec(" ".join(rng.choices(vocab, k=60))) for _ in range(2000)]
    planted = []
    for i in range(0, 500, 10):
        w = items[i].text.split()
        start = rng.randrange(0, len(w) - 13)
        planted.append((i, rec("please " + " ".join(w[start:start + 13]) + " thanks")))
    assert all(index.check(r) is None for r in clean)
    for i, r in planted:
        verdict = index.check(r)
        assert verdict is not None and verdict[1]["item"] == str(i)


def test_the_chain_rejects_contaminated_records_and_counts_hits_per_benchmark():
    from pipeline.config import FilterConfig
    from pipeline.filters.chain import Checks, filter_records

    index = ContaminationIndex([BenchmarkItem("humaneval", "HumanEval/7", ITEM), BenchmarkItem("mine", "m1", ITEM)])
    words = normal_words(ITEM)
    recs = [Record(id="a", task_id="a", instruction="Solve the following programming exercise carefully.",
                   input=" ".join(words[2:15]), output="def f(xs): return sum(x * x for x in xs if x > 0 and x % 2)"),
            Record(id="b", task_id="b", instruction="Name three rivers that flow through Europe.",
                   output="The Danube, the Rhine and the Loire.")]
    res = filter_records(recs, FilterConfig(), checks=Checks(contamination=index))
    assert [r.id for r in res.kept] == ["b"]
    assert res.rejected[0].reason == CONTAMINATED and res.rejected[0].details["item"] == "HumanEval/7"
    assert res.stats["contamination"]["hits_by_benchmark"] == {"humaneval": 1}
    assert filter_records(recs, FilterConfig()).stats["contamination"] is None
