"""Toxicity filter: a classifier scores a record's instruction, input and output; the highest score above the
threshold rejects the record as ``toxic``.

The classifier is passed in as a function from a list of texts to one probability each (``io.classifiers`` loads
alt-profanity-check's): no I/O and no model loading here. ``check_many`` sends every non-empty field of every
record in ONE call (a classifier is far faster in batches); an empty or whitespace-only field is not sent and
scores 0 (alt-profanity-check gives "" about 0.04, which says nothing). A record's score is the highest of its
fields' (the earliest field, in the order instruction, input, output, on a tie); above ``threshold`` (strictly)
the verdict is ``("toxic", {"score", "field", "threshold"})``.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

from ..records import Record
from .heuristics import Verdict

TOXIC = "toxic"
FIELDS = ("instruction", "input", "output")

Scorer = Callable[[list[str]], Sequence[float]]


class ToxicityFilter:
    """``ToxicityFilter(score, threshold)``; ``check_many(records)`` gives one verdict per record. Across calls it
    counts the texts scored (``scored``), the records checked and flagged, the flagged records per deciding field
    (``flagged_by_field``) and the highest record score seen (``max_score``); ``stats()`` returns them as a dict."""

    def __init__(self, score: Scorer, threshold: float = 0.8):
        self.score, self.threshold = score, threshold
        self.scored = 0  # texts sent to the classifier
        self.checked = 0  # records checked
        self.flagged = 0  # records above the threshold
        self.flagged_by_field: Counter = Counter()
        self.max_score = 0.0

    def check_many(self, records: Sequence[Record]) -> list[Verdict]:
        """One verdict per record (None = keep), from one batched call over every non-empty field."""
        texts: list[str] = []
        owners: list[tuple[int, str]] = []
        for k, rec in enumerate(records):
            for name in FIELDS:
                text = getattr(rec, name)
                if text and text.strip():
                    texts.append(text)
                    owners.append((k, name))
        scores = [float(s) for s in self.score(texts)] if texts else []
        if len(scores) != len(texts):
            raise ValueError(f"the toxicity scorer returned {len(scores)} scores for {len(texts)} texts")
        bad = next((s for s in scores if not math.isfinite(s)), None)
        if bad is not None:
            raise ValueError(f"the toxicity scorer returned a non-finite score ({bad})")
        self.scored += len(texts)
        best: dict[int, tuple[float, str]] = {}
        for (k, name), s in zip(owners, scores):
            if k not in best or s > best[k][0]:
                best[k] = (s, name)
        out: list[Verdict] = []
        for k in range(len(records)):
            s, name = best.get(k, (0.0, ""))
            self.max_score = max(self.max_score, s)
            if s > self.threshold:
                self.flagged += 1
                self.flagged_by_field[name] += 1
                out.append((TOXIC, {"score": s, "field": name, "threshold": self.threshold}))
            else:
                out.append(None)
        self.checked += len(records)
        return out

    def stats(self) -> dict:
        return {"threshold": self.threshold, "checked": self.checked, "flagged": self.flagged,
                "flagged_by_field": dict(self.flagged_by_field), "texts_scored": self.scored,
                "max_score": self.max_score}
