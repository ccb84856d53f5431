"""ROUGE-L F-measure with exactly the scores of rouge-score 0.1.2 (``RougeScorer(["rougeL"])``).

Tokens come from rouge-score's own tokenizer (lowercase, ``[a-z0-9]`` runs, optional Porter stemmer on tokens
longer than 3 characters), so text in a non-Latin script has no tokens and scores 0 against everything. The
optional Unicode tokenizer keeps every script (one token per character in scripts written without spaces); it
is documented as differing from rouge-score.

The LCS runs in compiled code: each distinct token gets one code point, and rapidfuzz's ``LCSseq`` compares the
resulting strings. The F-measure is computed with rouge-score's float formula in its order,
``p = L/len(pred); r = L/len(ref); f = 2*p*r/(p+r)``, because the algebraically equal ``2L/(a+b)`` differs in
the last bit for some (L, a, b) and flips decisions at the 0.7 threshold.
"""
from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
from rapidfuzz.distance import LCSseq
from rouge_score import tokenizers

# Scripts written without spaces between words: one token per character.
_NO_SPACE_SCRIPTS = (
    "\u0e00-\u0eff"  # Thai, Lao
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs
)
_UNICODE_TOKEN = re.compile(rf"[{_NO_SPACE_SCRIPTS}]|[^\W_{_NO_SPACE_SCRIPTS}]+")


class Tokenizer:
    """rouge-score's tokenizer, or the Unicode-aware variant. Results are cached per text."""

    def __init__(self, use_stemmer: bool = False, unicode: bool = False):
        self.use_stemmer, self.unicode = use_stemmer, unicode
        self._rouge = tokenizers.DefaultTokenizer(use_stemmer=use_stemmer)
        self.tokenize = lru_cache(maxsize=1 << 18)(self._tokenize)

    def _tokenize(self, text: str) -> tuple[str, ...]:
        if not self.unicode:
            return tuple(self._rouge.tokenize(text))
        tokens = _UNICODE_TOKEN.findall(text.lower())
        if self.use_stemmer:
            stem = self._rouge._stemmer.stem  # the same Porter stemmer rouge-score uses
            tokens = [stem(t) if len(t) > 3 and t.isascii() else t for t in tokens]
        return tuple(tokens)


class Vocab:
    """Maps each distinct token to one code point so a token list becomes a string rapidfuzz can compare."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}

    def encode(self, tokens: tuple[str, ...] | list[str]) -> str:
        ids = self._ids
        out = []
        for t in tokens:
            i = ids.get(t)
            if i is None:
                i = ids[t] = len(ids) + 1
                # Skip the surrogate block so every id is a valid code point.
                if i >= 0xD800:
                    i = ids[t] = i + 0x800
            out.append(chr(i))
        return "".join(out)


def f_from_lcs(lcs: int, len_pred: int, len_ref: int) -> float:
    """rouge-score's ``_score_lcs`` F-measure, bit for bit."""
    if len_pred == 0 or len_ref == 0 or lcs == 0:
        return 0.0
    precision = lcs / len_pred
    recall = lcs / len_ref
    return 2 * precision * recall / (precision + recall)


def f_from_lcs_array(lcs: np.ndarray, len_pred, len_ref) -> np.ndarray:
    """Vectorised ``f_from_lcs`` (lengths may be arrays or scalars): same IEEE operations, same order, same bits."""
    lcs = np.asarray(lcs, dtype=np.float64)
    len_pred = np.asarray(len_pred, dtype=np.float64)
    len_ref = np.asarray(len_ref, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = lcs / len_pred
        recall = lcs / len_ref
        f = 2 * precision * recall / (precision + recall)
    return np.where((lcs == 0) | (len_pred == 0) | (len_ref == 0), 0.0, f)


def rouge_l(pred: str, ref: str, tokenizer: Tokenizer | None = None) -> float:
    """ROUGE-L F of two texts, as ``RougeScorer(["rougeL"]).score(target=ref, prediction=pred)``'s fmeasure."""
    tok = tokenizer or Tokenizer()
    a, b = tok.tokenize(pred), tok.tokenize(ref)
    vocab = Vocab()
    return f_from_lcs(int(LCSseq.similarity(vocab.encode(a), vocab.encode(b))), len(a), len(b))
