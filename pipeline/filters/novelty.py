"""ROUGE-L novelty filter: a candidate is a duplicate when its ROUGE-L F against any instruction already in the
pool is strictly greater than the threshold (Self-Instruct: 0.7).

``NoveltyIndex`` is the replaceable component the stages use: ``nearest`` scores a candidate against the pool,
``add`` puts an accepted instruction in it. Scores are those of rouge-score with the pool item as prediction and
the candidate as target, which is how Self-Instruct and Alpaca call it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

from .rouge import Tokenizer, Vocab, f_from_lcs_array


@dataclass
class Match:
    score: float  # highest ROUGE-L F in the pool (0.0 for an empty pool)
    nearest_id: str | None
    nearest_text: str | None


class NoveltyIndex:
    def __init__(self, threshold: float = 0.7, use_stemmer: bool = False, unicode: bool = False):
        self.threshold = threshold
        self.tokenizer = Tokenizer(use_stemmer=use_stemmer, unicode=unicode)
        self._vocab = Vocab()
        self._ids: list[str] = []
        self._texts: list[str] = []
        self._encoded: list[str] = []
        self._lens: list[int] = []

    def __len__(self) -> int:
        return len(self._ids)

    def _encode(self, text: str) -> str:
        return self._vocab.encode(self.tokenizer.tokenize(text))

    def nearest(self, text: str) -> Match:
        enc = self._encode(text)
        if not self._encoded or not enc:
            return Match(0.0, None, None)
        lcs = process.cdist([enc], self._encoded, scorer=LCSseq.similarity, dtype=np.int32, workers=1)[0]
        scores = f_from_lcs_array(lcs, np.asarray(self._lens), len(enc))
        best = int(np.argmax(scores))
        return Match(float(scores[best]), self._ids[best], self._texts[best])

    def is_duplicate(self, match: Match) -> bool:
        return match.score > self.threshold

    def add(self, id_: str, text: str) -> None:
        enc = self._encode(text)
        self._ids.append(id_)
        self._texts.append(text)
        self._encoded.append(enc)
        self._lens.append(len(enc))
