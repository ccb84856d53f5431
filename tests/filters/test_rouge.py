"""ROUGE-L exactness: our tokens, scores and > threshold decisions are rouge-score 0.1.2's, bit for bit."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer, scoring, tokenizers

from pipeline.filters.novelty import NoveltyIndex
from pipeline.filters.rouge import (NEVER, Tokenizer, f_from_lcs, f_from_lcs_array, min_lcs_for_length,
                                    min_lcs_row, min_lcs_scalar, rouge_l)

SCORERS = {s: rouge_scorer.RougeScorer(["rougeL"], use_stemmer=s) for s in (False, True)}
TOKENIZERS = {s: Tokenizer(use_stemmer=s) for s in (False, True)}


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def reference(target: str, prediction: str, stemmer: bool) -> float:
    return SCORERS[stemmer].score(target, prediction)["rougeL"].fmeasure


# Words chosen to collide often (high overlaps, stemming pairs), plus Unicode edge cases: accents (precomposed and
# combining), CJK, Thai, emoji, digits, case, punctuation, the dotted capital I whose lowercase grows.
WORDS = ["write", "writes", "writing", "a", "the", "poem", "poems", "about", "sea", "summer", "list", "three",
         "running", "runs", "ran", "quickly", "classify", "classified", "café", "cafe\u0301", "naïve", "résumé",
         "写", "一首", "关于大海的诗", "เขียน", "บทกวี", "😀", "👍🏽", "2024", "x1", "İstanbul", "ß", "don't",
         "e-mail", "A", "WRITE", "Poem,", "sea.", "\u00a0", "_", "--", "ǅ", "Ⅻ", "١٢٣"]
texts = st.lists(st.sampled_from(WORDS), min_size=0, max_size=14).map(" ".join)
free_text = st.text(max_size=40)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(target=st.one_of(texts, free_text), prediction=st.one_of(texts, free_text), stemmer=st.booleans())
@example(target="a b c d e f g x x x x x x", prediction="a b c d e f g", stemmer=False)  # L=7, a=7, b=13
@example(target="写一首关于大海的诗", prediction="写一首关于大海的诗", stemmer=False)
@example(target="Café résumé", prediction="Cafe\u0301 re\u0301sume\u0301", stemmer=True)
@example(target="😀 Write a poem 😀", prediction="Write a poem", stemmer=False)
def test_score_is_rouge_score_bit_for_bit(target, prediction, stemmer):
    expected = reference(target, prediction, stemmer)
    ours = rouge_l(prediction, target, TOKENIZERS[stemmer])
    assert bits(ours) == bits(expected)
    assert (ours > 0.7) == (expected > 0.7)
    # The index path (pool item = prediction, candidate = target): exact mode reports the same score ...
    index = NoveltyIndex(0.7, use_stemmer=stemmer, exact_nearest=True)
    index.add("p", prediction)
    m = index.nearest(target)
    assert bits(m.score) == bits(expected)
    assert index.is_duplicate(m) == (expected > 0.7)
    # ... and the pruned mode the same decision, with the exact score whenever it is a duplicate.
    pruned = NoveltyIndex(0.7, use_stemmer=stemmer)
    pruned.add("p", prediction)
    m = pruned.nearest(target)
    assert pruned.is_duplicate(m) == (expected > 0.7)
    if expected > 0.7:
        assert bits(m.score) == bits(expected) and m.nearest_id == "p" and m.exact


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(texts, free_text), stemmer=st.booleans())
def test_tokens_are_rouge_score_tokens(text, stemmer):
    assert list(TOKENIZERS[stemmer].tokenize(text)) == tokenizers.DefaultTokenizer(stemmer).tokenize(text)


def test_boundary_l7_a7_b13():
    """2L/(a+b) gives 0.7 (keep) where rouge-score gives 0.7000000000000001 (reject)."""
    pred = "one two three four five six seven"
    target = "one two three four five six seven eight nine ten eleven twelve thirteen"
    expected = reference(target, pred, False)
    assert expected == 0.7000000000000001 and 2 * 7 / (7 + 13) == 0.7
    assert rouge_l(pred, target) == expected
    index = NoveltyIndex(0.7)
    index.add("p", pred)
    m = index.nearest(target)
    assert index.is_duplicate(m) and m.score == expected
    # The other orientation is bit-identical too (the F-measure is symmetric).
    assert rouge_l(target, pred) == expected


def test_formula_matches_rouge_score_on_every_small_triple():
    """All (L, a, b) with a, b <= 150: our scalar and vectorised F equal rouge-score's fmeasure bit for bit, and
    the triples where 2L/(a+b) decides differently at 0.7 are all caught."""
    flips = 0
    for a in range(1, 151):
        b = np.arange(1, 151)
        for lcs in range(1, a + 1):
            valid = b >= lcs
            vec = f_from_lcs_array(np.full(valid.sum(), lcs), a, b[valid])
            for bb, f in zip(b[valid].tolist(), vec.tolist()):
                ref = scoring.fmeasure(lcs / a, lcs / bb)
                assert f == ref
                flips += (ref > 0.7) != (2 * lcs / (a + bb) > 0.7)
    assert f_from_lcs(7, 7, 13) == scoring.fmeasure(7 / 7, 7 / 13)
    assert flips == 272  # REFERENCE.md: 272 triples


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 2 / 3, 0.7, 0.75, 0.9, 0.99, 1.0])
def test_pruning_bounds_match_the_plain_loop(threshold):
    for a in range(0, 120):
        row = min_lcs_row(a, 160, threshold)
        for b in range(1, 161):
            assert row[b] == min_lcs_scalar(a, b, threshold)
        assert row[0] == NEVER
        if a:
            need = min_lcs_for_length(a, threshold)
            finite = [x for x in row[1:].tolist() if x != NEVER]
            assert need == (min(finite) if finite else a + 1)


def test_non_latin_scores_zero_by_default_and_unicode_option_keeps_it():
    zh_a, zh_b = "写一首关于大海的诗", "写一首关于大海的短诗"
    th_a, th_b = "เขียนบทกวีเกี่ยวกับทะเล", "เขียนบทกวีสั้นเกี่ยวกับทะเล"
    for a, b in ((zh_a, zh_b), (th_a, th_b)):
        assert rouge_l(a, b) == reference(b, a, False) == 0.0
        assert rouge_l(a, b, Tokenizer(unicode=True)) > 0.7
    uni = Tokenizer(unicode=True)
    assert uni.tokenize("Café") == uni.tokenize("cafe\u0301") == ("café",)  # NFC + case folding
    assert uni.tokenize("हिन्दी भाषा") == ("हिन्दी", "भाषा")  # combining marks stay inside their word
    assert uni.tokenize("Write 😀 a poem!") == ("write", "a", "poem")  # emoji and punctuation separate
    assert Tokenizer(use_stemmer=True, unicode=True).tokenize("running cafés") == ("run", "cafés")
