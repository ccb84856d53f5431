"""Lineage-aware novelty: an evolved instruction is not compared with its own ancestors and descendants, and still
is with its siblings and every other lineage (Evol-Instruct never deduplicates a rewrite against its parent)."""
from __future__ import annotations

import pytest
from rouge_score import rouge_scorer

from pipeline.config import FilterConfig
from pipeline.filters.chain import filter_records, lineages
from pipeline.records import Record

SEA = "Write a short poem about the sea at night for a children's book."
SEA_1 = "Write a short poem about the sea at night for a children's book, using only rhyming couplets."
SEA_2 = ("Write a short poem about the sea at night for a children's book, using only rhyming couplets and "
         "mentioning three sea animals.")
OTHER = "Explain how a bicycle gear system changes the effort needed to climb a hill."


def seed(tid: str, instruction: str) -> Record:
    return Record(id=tid, task_id=tid, instruction=instruction, output="An answer of several words here.")


def evolved(rid: str, parent: str, root: str, instruction: str, rnd: int) -> Record:
    return Record(id=rid, task_id=rid, instruction=instruction, source="evolve", parent_id=parent, root_id=root,
                  round=rnd, output=f"A different answer for {rid} with enough words.")


def rouge(a: str, b: str) -> float:
    return rouge_scorer.RougeScorer(["rougeL"]).score(a, b)["rougeL"].fmeasure


def test_the_rewrites_are_near_duplicates_of_their_parent():
    assert rouge(SEA, SEA_1) > 0.7 and rouge(SEA_1, SEA_2) > 0.7 and rouge(SEA, SEA_2) > 0.7


def test_lineages_are_ancestors_and_descendants_only():
    recs = [evolved("s-r1", "s", "s", SEA_1, 1), evolved("s-r2", "s-r1", "s", SEA_2, 2),
            evolved("t-r1", "t", "t", OTHER, 1)]
    lin = lineages(recs, [seed("s", SEA), seed("t", OTHER)])
    assert lin["s"] == {"s-r1", "s-r2"} and lin["s-r1"] == {"s", "s-r2"} and lin["s-r2"] == {"s", "s-r1"}
    assert lin["t-r1"] == {"t"}


@pytest.mark.parametrize("mode", ["incremental", "batch"])
def test_a_deepening_is_kept_against_its_own_lineage_only(mode):
    reference = [seed("s", SEA), seed("t", OTHER)]
    recs = [evolved("s-r1", "s", "s", SEA_1, 1), evolved("s-r2", "s-r1", "s", SEA_2, 2)]
    before = filter_records(recs, FilterConfig(lineage_aware=False, novelty_mode=mode), reference)
    assert [r.reason for r in before.rejected] == ["rouge_duplicate", "rouge_duplicate"]
    after = filter_records(recs, FilterConfig(novelty_mode=mode), reference)
    assert [r.id for r in after.kept] == ["s-r1", "s-r2"]
    # The nearest reported for a kept record is outside its lineage.
    assert all(r.nearest_id not in ("s", "s-r1", "s-r2") for r in after.kept)


@pytest.mark.parametrize("mode", ["incremental", "batch"])
def test_a_rewrite_that_copies_another_lineage_or_a_sibling_is_still_a_duplicate(mode):
    reference = [seed("s", SEA), seed("u", SEA_1)]  # another seed task that reads like s's first deepening
    recs = [evolved("s-r1", "s", "s", SEA_1, 1),  # a duplicate of u, which is not its lineage
            evolved("t-r1", "t", "t", SEA + " Keep it gentle.", 1)]  # a copy of s from lineage t
    res = filter_records(recs, FilterConfig(novelty_mode=mode), reference)
    got = {r.record.id: r.details["nearest_id"] for r in res.rejected}
    assert got == {"s-r1": "u", "t-r1": "s"}
