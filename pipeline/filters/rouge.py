"""ROUGE-L F-measure with exactly the scores of rouge-score 0.1.2 (``RougeScorer(["rougeL"])``).

Tokens come from rouge-score's own tokenizer function (``rouge_score.tokenize.tokenize``: lowercase, ``[a-z0-9]``
runs, optional Porter stemmer on tokens longer than 3 characters), so text in a non-Latin script has no tokens and
scores 0 against everything. The stemmer is wrapped in a per-word memo (the nltk Porter stemmer is a pure
function of the word), which changes nothing but the speed.

The optional Unicode tokenizer (``Tokenizer(unicode=True)``, config ``filter.unicode_tokens``) DIFFERS FROM
ROUGE-SCORE ON PURPOSE: it NFC-normalises and case-folds the text, keeps words of every script (letters, digits and
combining marks), and makes one token of every character of the scripts written without spaces between words
(Thai, Lao, Myanmar, Khmer, kana, CJK ideographs), so Chinese or Thai instructions can be deduplicated. Symbols,
punctuation and emoji separate tokens in both tokenizers. On pure ASCII text without combining marks it yields the
same tokens as rouge-score except that ``_`` separates words in both and non-ASCII letters are kept.

The LCS runs in compiled code: each distinct token gets one code point, and rapidfuzz's ``LCSseq`` compares the
resulting strings. The F-measure is computed with rouge-score's float formula in its order,
``p = L/len(pred); r = L/len(ref); f = 2*p*r/(p+r)``, because the algebraically equal ``2L/(a+b)`` differs in
the last bit for some (L, a, b) (e.g. L=7, a=7, b=13) and flips decisions at the 0.7 threshold.

Bounds used for exact pruning (see ``min_lcs_for_length``): for integer L and lengths up to millions the float
formula is monotone (increasing in L, decreasing in the other length), because consecutive values differ by at
least ``1/(a+b+1)`` in relative terms, far more than the few ulps of rounding. So "some pair of lengths a, b can
exceed t only if ``f(min(a, b), a, b) > t``" and "a pair needs ``L >= min_lcs_for_length(a, t)``" are exact
statements about the very floats rouge-score computes.
"""
from __future__ import annotations

import re
import sys
import unicodedata
from functools import lru_cache

import numpy as np
from rapidfuzz.distance import LCSseq
from rouge_score import tokenize as rouge_tokenize
from rouge_score import tokenizers

# Scripts written without spaces between words: one token per character.
_NO_SPACE_SCRIPTS = (
    "\u0e00-\u0eff"  # Thai, Lao
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs
    "\U00020000-\U0002fa1f"  # CJK extensions B-F and compatibility supplement
)


def _class_ranges(chars: list[int]) -> str:
    """A regex character-class body for a sorted list of code points."""
    parts, start, prev = [], None, None
    for c in chars:
        if start is None:
            start = prev = c
        elif c == prev + 1:
            prev = c
        else:
            parts.append((start, prev))
            start = prev = c
    if start is not None:
        parts.append((start, prev))
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in parts)


@lru_cache(maxsize=1)
def _unicode_token_re() -> re.Pattern:
    """Words of any script (letters, digits, combining marks), or one character of a no-space script.

    Built on first use (scanning the code points for marks takes a few tens of milliseconds), so the default
    rouge-score tokenizer pays nothing for it.
    """
    marks = [c for c in range(0x300, 0x30000)
             if unicodedata.category(chr(c)) in ("Mn", "Mc", "Me") and not re.match(f"[{_NO_SPACE_SCRIPTS}]", chr(c))]
    mark_class = _class_ranges(marks)
    word = rf"(?:[^\W_{_NO_SPACE_SCRIPTS}]|[{mark_class}])+"
    return re.compile(rf"[{_NO_SPACE_SCRIPTS}]|{word}")


class _MemoStemmer:
    """rouge-score's Porter stemmer with a per-word memo (identical output, much faster on repeated words)."""

    def __init__(self, stemmer, max_size: int = 1 << 20):
        self._stem, self._memo, self._max = stemmer.stem, {}, max_size

    def stem(self, word: str) -> str:
        s = self._memo.get(word)
        if s is None:
            s = self._stem(word)
            if len(self._memo) < self._max:
                self._memo[word] = s
        return s


class Tokenizer:
    """rouge-score's tokenizer, or the Unicode-aware variant (see the module docstring).

    ``tokenize`` caches results per text (``cache_size`` entries, 0 = no cache); ``tokenize_uncached`` does not.
    """

    def __init__(self, use_stemmer: bool = False, unicode: bool = False, cache_size: int = 1 << 16):
        self.use_stemmer, self.unicode = use_stemmer, unicode
        self._rouge = tokenizers.DefaultTokenizer(use_stemmer=use_stemmer)
        self._stemmer = _MemoStemmer(self._rouge._stemmer) if use_stemmer else None
        self.tokenize_uncached = self._tokenize
        self.tokenize = lru_cache(maxsize=cache_size)(self._tokenize) if cache_size else self._tokenize

    def _tokenize(self, text: str) -> tuple[str, ...]:
        if not self.unicode:
            # rouge-score's ``tokenize.tokenize`` step by step, with its own compiled patterns: lowercase, every
            # run outside [a-z0-9] becomes one space, split, stem tokens longer than 3 characters, keep the tokens
            # matching ^[a-z0-9]+$. After the substitution the text holds only [a-z0-9 ], so str.split() yields
            # exactly the non-empty pieces of its SPACES_RE.split, all of them valid before stemming.
            tokens = rouge_tokenize.NON_ALPHANUM_RE.sub(" ", text.lower()).split()
            if self._stemmer is not None:
                stem = self._stemmer.stem
                valid = rouge_tokenize.VALID_TOKEN_RE.match
                tokens = [x for x in (stem(x) if len(x) > 3 else x for x in tokens) if valid(x)]
            return tuple(tokens)
        tokens = _unicode_token_re().findall(unicodedata.normalize("NFC", text).casefold())
        if self._stemmer is not None:
            stem = self._stemmer.stem  # the same Porter stemmer rouge-score uses, on ASCII words only
            tokens = [stem(t) if len(t) > 3 and t.isascii() else t for t in tokens]
        return tuple(tokens)


class Vocab:
    """Maps each distinct token to one code point so a token list becomes a string rapidfuzz can compare."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self, tokens: tuple[str, ...] | list[str]) -> list[int]:
        """Token ids (code points), assigning new ones for unseen tokens."""
        ids = self._ids
        out = []
        for t in tokens:
            i = ids.get(t)
            if i is None:
                i = len(ids) + 1
                # Skip the surrogate block so every id is a valid code point.
                if i >= 0xD800:
                    i += 0x800
                if i > sys.maxunicode:
                    raise OverflowError("more distinct tokens than Unicode code points")
                ids[t] = i
            out.append(i)
        return out

    def encode(self, tokens: tuple[str, ...] | list[str]) -> str:
        return "".join(map(chr, self.ids(tokens)))


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


@lru_cache(maxsize=1 << 14)
def min_lcs_for_length(a: int, threshold: float) -> int:
    """The least LCS length with which a text of ``a`` tokens can score F > threshold against ANY other text.

    A partner of ``b`` tokens needs ``L <= min(a, b)``, and for fixed L the float F decreases with b, so the best
    partner for a given L has exactly L tokens: the answer is the least L in 1..a with ``f(L, a, L) > threshold``,
    or ``a + 1`` when there is none (such a text can never be a duplicate). Exact in rouge-score's floats.
    """
    for lcs in range(1, a + 1):
        if f_from_lcs(lcs, a, lcs) > threshold:
            return lcs
    return a + 1


NEVER = np.iinfo(np.int64).max // 4  # "no LCS is enough"


def min_lcs_scalar(a: int, b: int, threshold: float) -> int:
    """The least L with ``f(L, a, b) > threshold`` (L <= min(a, b)), or NEVER. Plain loop, for checking."""
    for lcs in range(1, min(a, b) + 1):
        if f_from_lcs(lcs, a, b) > threshold:
            return lcs
    return NEVER


def min_lcs_row(a: int, max_b: int, threshold: float) -> np.ndarray:
    """``row[b]`` = the least LCS with which texts of ``a`` and ``b`` tokens score F > threshold, for b in
    0..max_b (NEVER where no LCS suffices), decided with rouge-score's float formula.

    In real numbers the answer is the least integer above ``threshold * (a + b) / 2``; the float formula can only
    move that by one at an exact tie, so each b is settled by testing a window of L values around it, and the
    window is checked to contain the transition (the value below it fails, and some value in it passes unless
    min(a, b) is reached first). Any b where the check does not hold falls back to the plain loop.
    """
    b = np.arange(max_b + 1, dtype=np.int64)
    cap = np.minimum(a, b)
    base = np.maximum(np.floor(threshold * (a + b) / 2).astype(np.int64) - 1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        def ok(lcs: np.ndarray) -> np.ndarray:
            valid = (lcs >= 1) & (lcs <= cap)
            return valid & (f_from_lcs_array(np.where(valid, lcs, 0), a, np.maximum(b, 1)) > threshold)

        row = np.full(max_b + 1, NEVER, dtype=np.int64)
        width = 4
        for d in range(width - 1, -1, -1):  # the least passing L in the window wins
            row = np.where(ok(base + d), base + d, row)
        settled = ~ok(base - 1) & ((row != NEVER) | (base + width > cap))
    row[0] = NEVER
    for k in np.flatnonzero(~settled).tolist():
        if k:
            row[k] = min_lcs_scalar(a, k, threshold)
    return row


def lcs(a: tuple[str, ...] | list[str], b: tuple[str, ...] | list[str]) -> int:
    """Length of the longest common subsequence of two token lists."""
    vocab = Vocab()
    return int(LCSseq.similarity(vocab.encode(a), vocab.encode(b)))


def rouge_l(pred: str, ref: str, tokenizer: Tokenizer | None = None) -> float:
    """ROUGE-L F of two texts, as ``RougeScorer(["rougeL"]).score(target=ref, prediction=pred)``'s fmeasure."""
    tok = tokenizer or Tokenizer()
    a, b = tok.tokenize(pred), tok.tokenize(ref)
    return f_from_lcs(lcs(a, b), len(a), len(b))
