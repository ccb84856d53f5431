"""Evaluation metrics against the libraries they claim to equal, and the bootstrap intervals' behaviour."""
from __future__ import annotations

import random
import statistics

import pytest

from pipeline.train import metrics

WORDS = "the cat sat on a mat while dogs ran across green fields and birds sang loudly in tall trees".split()


def _sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 20))) for _ in range(n)]


def test_rouge_l_equals_rouge_score():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    answers, refs = _sentences(200, 1), _sentences(200, 2)
    ours = metrics.rouge_l_scores(answers, refs)
    theirs = [scorer.score(r, a)["rougeL"].fmeasure for a, r in zip(answers, refs)]
    assert ours == theirs  # bit for bit


def test_bleu_equals_sacrebleu():
    import sacrebleu

    answers, refs = _sentences(50, 3), _sentences(50, 4)
    assert metrics.corpus_bleu(answers, refs) == sacrebleu.corpus_bleu(answers, [refs]).score
    assert metrics.corpus_bleu(refs, refs) == pytest.approx(100.0)
    assert metrics.corpus_bleu([], []) == 0.0


def test_exact_match_for_labels():
    assert metrics.exact_match("Positive", "positive")
    assert metrics.exact_match("Answer: Positive.", "Positive")
    assert metrics.exact_match("Negative\nBecause the review complains.", "Negative")
    assert not metrics.exact_match("Not positive", "Positive")
    assert not metrics.exact_match("anything", "")


def test_pair_score_cancels_position():
    assert metrics.pair_score("A", "B") == 1.0  # won in both orders
    assert metrics.pair_score("B", "A") == 0.0
    assert metrics.pair_score("A", "A") == 0.5  # a judge that always says "A" has no preference
    assert metrics.pair_score("tie", "B") == 0.75
    assert metrics.pair_score("invalid", "B") == 1.0 and metrics.pair_score("invalid", "invalid") is None


def test_bootstrap_interval_brackets_the_mean_and_is_seeded():
    rng = random.Random(5)
    xs = [rng.random() for _ in range(40)]
    m = metrics.mean_ci(xs, rounds=500, seed=1)
    assert m["value"] == round(statistics.fmean(xs), 4) and m["n"] == 40
    lo, hi = m["ci"]
    assert lo < m["value"] < hi and hi - lo < 0.4
    assert metrics.mean_ci(xs, rounds=500, seed=1) == m  # same seed, same interval
    assert metrics.mean_ci([None, None])["value"] is None
    wide = metrics.mean_ci(xs[:8], rounds=500, seed=1)["ci"]
    assert wide[1] - wide[0] > hi - lo  # fewer tasks, wider interval


def test_paired_difference_interval():
    a = [0.1 * i for i in range(20)]
    b = [x + 0.2 for x in a]  # better by 0.2 on every task: the paired interval is exactly 0.2
    d = metrics.paired_diff_ci(a, b, rounds=200)
    assert d["value"] == pytest.approx(0.2) and d["ci"] == [pytest.approx(0.2), pytest.approx(0.2)]
    unpaired = metrics.mean_ci(b, rounds=200)["ci"]
    assert unpaired[1] - unpaired[0] > 0.1  # the per-model interval is wide; the paired one is not


def test_bleu_interval():
    answers, refs = _sentences(30, 6), _sentences(30, 7)
    b = metrics.bleu_ci(answers, refs, rounds=100)
    assert b["value"] == round(metrics.corpus_bleu(answers, refs), 4) and b["ci"][0] <= b["ci"][1]
