"""Scores of answers against human references, and their bootstrap confidence intervals (``pipeline eval``).

- ROUGE-L F per answer: ``pipeline.filters.rouge.rouge_l``, the numbers of rouge-score 0.1.2 (tested against it);
- BLEU over the set: sacrebleu's ``corpus_bleu`` with its defaults (13a tokenizer, exponential smoothing off, as
  sacrebleu reports it), 0-100;
- exact match for classification tasks: the answer equals the reference after lower-casing, trimming and dropping
  punctuation at the ends and a leading "Answer:"/"Label:", or the answer's first line does;
- the share of answers the model ended itself (end-of-turn) rather than at the token limit;
- the toxicity rate: the share of answers the ``[safety]`` classifier scores at or above its threshold;
- a pairwise judge score: each task is judged in both orders (A/B swapped); a win counts 1, a tie 0.5, a loss 0,
  averaged over the two orders, so a judge that always says "A" scores every task 0.5.

Intervals: percentile bootstrap over tasks (resample the tasks with replacement ``n`` times, seeded, recompute the
statistic, take the 2.5th and 97.5th percentiles). Differences between two models are bootstrapped paired (the
same resampled tasks for both), which is narrower than comparing two separate intervals.
"""
from __future__ import annotations

import random
import re
import statistics
from typing import Callable, Sequence

from ..filters.rouge import rouge_l
from ..stages.judge import pair_score  # noqa: F401 (scores of the pairwise judge: one copy, in stages.judge)

CI_LEVEL = 0.95


def rouge_l_scores(answers: Sequence[str], references: Sequence[str]) -> list[float]:
    return [rouge_l(a, r) for a, r in zip(answers, references)]


def corpus_bleu(answers: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus BLEU (0-100) of the answers against one reference each."""
    import sacrebleu

    if not answers:
        return 0.0
    return float(sacrebleu.corpus_bleu(list(answers), [list(references)]).score)


_LEAD = re.compile(r"^\s*(?:the\s+)?(?:answer|label|output|category|class)\s*(?:is)?\s*[:\-]\s*", re.I)
_ENDS = re.compile(r"^[\W_]+|[\W_]+$")


def _norm(text: str) -> str:
    text = _LEAD.sub("", text.strip())
    return " ".join(_ENDS.sub("", text.lower()).split())


def exact_match(answer: str, reference: str) -> bool:
    """Classification answers: equal after normalising, or the answer's first line equal (a label then a reason)."""
    ref = _norm(reference)
    if not ref:
        return False
    first = answer.strip().split("\n", 1)[0]
    return _norm(answer) == ref or _norm(first) == ref


# ------------------------------------------------------------------------------------------------ bootstrap


def _resamples(n: int, rounds: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(n) for _ in range(n)] for _ in range(rounds)]


def _percentiles(values: list[float]) -> list[float]:
    values = sorted(values)
    lo_q, hi_q = (1 - CI_LEVEL) / 2, 1 - (1 - CI_LEVEL) / 2

    def at(q: float) -> float:  # linear interpolation between order statistics (numpy's default)
        pos = q * (len(values) - 1)
        i = int(pos)
        j = min(i + 1, len(values) - 1)
        return values[i] + (values[j] - values[i]) * (pos - i)

    return [at(lo_q), at(hi_q)]


def bootstrap(n: int, statistic: Callable[[list[int]], float], rounds: int = 1000, seed: int = 0) -> list[float] | None:
    """95% percentile interval of ``statistic(indices)`` over ``rounds`` resamples of ``range(n)``."""
    if n == 0 or rounds <= 0:
        return None
    return [round(v, 4) for v in _percentiles([statistic(ix) for ix in _resamples(n, rounds, seed)])]


def mean_ci(values: Sequence[float | None], rounds: int = 1000, seed: int = 0) -> dict:
    """Mean of the values (None = missing, left out) with its bootstrap interval."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return {"value": None, "ci": None, "n": 0}
    return {"value": round(statistics.fmean(xs), 4), "n": len(xs),
            "ci": bootstrap(len(xs), lambda ix: statistics.fmean(xs[i] for i in ix), rounds, seed)}


def bleu_ci(answers: Sequence[str], references: Sequence[str], rounds: int = 1000, seed: int = 0) -> dict:
    if not answers:
        return {"value": None, "ci": None, "n": 0}
    return {"value": round(corpus_bleu(answers, references), 4), "n": len(answers),
            "ci": bootstrap(len(answers), lambda ix: corpus_bleu([answers[i] for i in ix],
                                                                 [references[i] for i in ix]), rounds, seed)}


def paired_diff_ci(a: Sequence[float | None], b: Sequence[float | None], rounds: int = 1000, seed: int = 0) -> dict:
    """Mean of b - a over the tasks where both have a value, with a paired bootstrap interval."""
    pairs = [(float(x), float(y)) for x, y in zip(a, b) if x is not None and y is not None]
    if not pairs:
        return {"value": None, "ci": None, "n": 0}
    d = [y - x for x, y in pairs]
    return {"value": round(statistics.fmean(d), 4), "n": len(d),
            "ci": bootstrap(len(d), lambda ix: statistics.fmean(d[i] for i in ix), rounds, seed)}
