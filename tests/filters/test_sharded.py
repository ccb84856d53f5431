"""The sharded ROUGE-L dedup parts (filters/sharded.py): exact band keys give exactly ``novelty.dedup``'s
decisions and duplicate matches; MinHash bands' recall is measured."""
from __future__ import annotations

import json
import random
import time

import numpy as np
import pytest

from pipeline.filters import sharded
from pipeline.filters.novelty import dedup
from pipeline.filters.rouge import Tokenizer, rouge_l
from tests.conftest import OUR_SEEDS

FILLER = ("please briefly carefully also then now here clearly simple short new good each every some "
          "example list story summary question answer topic reader").split()


def seed_texts() -> list[str]:
    """The repo's seed instructions and their instance inputs (non-empty), in file order."""
    out: list[str] = []
    for line in OUR_SEEDS.read_text(encoding="utf-8").splitlines():
        task = json.loads(line)
        out.append(task["instruction"])
        out += [inst["input"] for inst in task["instances"] if inst["input"].strip()]
    return out


def variant_records(n: int, seed: int = 0, n_reference: int = 0) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """(reference, ids, texts): ``n`` texts built deterministically from the seed texts: the seeds themselves, and
    variants with word drops, adjacent swaps, replacements, insertions, case/punctuation changes (light edits are
    ROUGE-L duplicates, heavy ones often not), splices of two seeds, variants of earlier variants, and a few
    token-less texts. The first ``n_reference`` seed texts are returned as the reference instead."""
    rng = random.Random(seed)
    seeds = seed_texts()
    reference = [(f"ref{k}", t) for k, t in enumerate(seeds[:n_reference])]
    base = seeds[n_reference:]
    vocab = sorted({w for t in seeds for w in t.split()}) + FILLER
    texts: list[str] = []
    for k in range(n):
        u = rng.random()
        if k < len(base) and u < 0.5:
            texts.append(base[k])
            continue
        pool = texts if texts and u < 0.35 else base
        words = rng.choice(pool).split()
        if u > 0.93 and len(base) > 1:  # a splice of two seeds
            other = rng.choice(base).split()
            words = words[: max(1, len(words) // 2)] + other[len(other) // 2:]
        edits = rng.choice((0, 1, 1, 2, 2, 3, 4, 6, 9))
        for _ in range(edits):
            op = rng.random()
            if op < 0.3 and len(words) > 1:
                del words[rng.randrange(len(words))]
            elif op < 0.5 and len(words) > 1:
                p = rng.randrange(len(words) - 1)
                words[p], words[p + 1] = words[p + 1], words[p]
            elif op < 0.7 and words:
                words[rng.randrange(len(words))] = rng.choice(vocab)
            elif op < 0.9:
                words.insert(rng.randint(0, len(words)), rng.choice(vocab))
            elif words:
                p = rng.randrange(len(words))
                words[p] = words[p].upper() + rng.choice(("", ",", "!", "?"))
        text = " ".join(words)
        if rng.random() < 0.004:
            text = rng.choice(("", "...", "写一首诗", "!!"))
        texts.append(text)
    ids = [f"t{k}" for k in range(n)]
    return reference, ids, texts


def assert_same(got, want) -> None:
    """Same decisions; for duplicates the same nearest id, text and score (bit for bit)."""
    assert got.duplicate == want.duplicate, [k for k, (a, b) in enumerate(zip(got.duplicate, want.duplicate))
                                             if a != b][:10]
    for k, (g, w) in enumerate(zip(got.matches, want.matches)):
        if want.duplicate[k]:
            assert (g.nearest_id, g.nearest_text, g.score) == (w.nearest_id, w.nearest_text, w.score), k


@pytest.fixture(scope="module")
def records():
    return variant_records(2000, seed=7, n_reference=40)


@pytest.mark.parametrize("frequency_order", [True, False])
def test_exact_keys_give_the_decisions_of_novelty_dedup(records, frequency_order):
    reference, ids, texts = records
    want = dedup(texts, ids, reference=reference, threshold=0.7)
    got = sharded.sharded_dedup(texts, ids, reference=reference, threshold=0.7, num_perm=None,
                                frequency_order=frequency_order)
    assert 0.2 < sum(want.duplicate) / len(texts) < 0.8  # the records hold both kinds
    assert_same(got, want)
    print(f"\n2000 records (frequency order {frequency_order}): {sum(want.duplicate)} duplicates, "
          f"{got.stats['candidate_pairs']} candidate pairs, {got.stats['verified_pairs']} verified above 0.7")


@pytest.fixture(scope="module")
def truth(records):
    """Brute force: every pair of the records (references first) whose lengths allow F > 0.7, scored; the pairs
    above 0.7. Also the token lists."""
    reference, _, texts = records
    all_texts = [r[1] for r in reference] + texts
    tokens = [Tokenizer().tokenize(t) for t in all_texts]
    lengths = [len(t) for t in tokens]
    i, j = sharded.bucket_pairs(np.arange(len(all_texts)), lengths, 0.7)
    vi, vj, _ = sharded.verify_arrays(i, j, all_texts.__getitem__, 0.7)
    return set(zip(vi.tolist(), vj.tolist())), tokens, all_texts


def test_any_order_table_keeps_every_pair_above_the_threshold(truth):
    """The prefix filter holds for any fixed order: hash order, a random table, a most-frequent-first table all
    propose every pair with F > 0.7 (brute force over all pairs)."""
    pairs, tokens, _ = truth
    lengths = [len(t) for t in tokens]
    rng = random.Random(5)
    counts = sharded.element_frequencies(tokens, min_count=1)
    for order in (None, {h: rng.randrange(1000) for h in counts}, {h: -c for h, c in counts.items()}, counts):
        keys = [sharded.band_keys_of_tokens(t, None, threshold=0.7, order=order) for t in tokens]
        cand = sharded.candidate_pairs(keys, lengths, 0.7)
        assert pairs <= cand, len(pairs - cand)


@pytest.mark.parametrize("threshold,stemmer,unicode", [(0.5, False, False), (0.7, True, False), (0.9, False, True)])
def test_exact_keys_other_settings(threshold, stemmer, unicode):
    reference, ids, texts = variant_records(600, seed=threshold * 10, n_reference=10)
    texts[5:8] = ["写一首关于大海的诗", "写一首关于大海的短诗", "写一首关于高山的诗"]
    kw = dict(threshold=threshold, use_stemmer=stemmer, unicode=unicode, reference=reference)
    assert_same(sharded.sharded_dedup(texts, ids, num_perm=None, **kw), dedup(texts, ids, **kw))


def test_excludes_follow_novelty(records):
    reference, ids, texts = records
    texts, ids = texts[:400], ids[:400]
    rng = random.Random(3)
    excludes = [set(rng.sample(ids[:k] + [r[0] for r in reference], 3)) if k > 10 and rng.random() < 0.3 else None
                for k in range(len(texts))]
    want = dedup(texts, ids, reference=reference, excludes=excludes)
    got = sharded.sharded_dedup(texts, ids, reference=reference, num_perm=None, excludes=excludes)
    assert_same(got, want)


def test_parts_by_hand():
    texts = ["Write a poem about the sea", "Write a short poem about the sea", "Write a poem about the sea",
             "List three ways to save water", "", "Write a poem about the sea"]
    keys = [sharded.band_keys(t, None, threshold=0.7) for t in texts]
    assert keys[0] == keys[2] == keys[5] and keys[4] == []
    pairs = sharded.candidate_pairs(keys)
    assert {(0, 1), (0, 2), (1, 2)} <= pairs and all(3 not in p for p in pairs)
    verified = sharded.verify(pairs, texts, 0.7)
    assert verified[(0, 1)] == rouge_l(texts[0], texts[1])
    res = sharded.keep_in_order(len(texts), verified, threshold=0.7, texts=texts)
    assert res.duplicate == [False, True, True, False, False, True]
    # a duplicate's match is the earliest best KEPT item: 5 matches 0 (F = 1), never the duplicate 2
    assert (res.matches[5].nearest_id, res.matches[5].score) == ("0", 1.0)
    assert (res.matches[1].nearest_id, res.matches[1].score) == ("0", rouge_l(texts[0], texts[1]))
    # keys are a pure function of the text: the same in any process (no process-local ids)
    assert sharded.band_keys(texts[1], 64, 2, seed=3) == sharded.band_keys(texts[1], 64, 2, seed=3)
    assert len(sharded.band_keys(texts[1], 64, 2, seed=3)) == 32


def test_length_window_is_exact():
    from pipeline.filters.rouge import f_from_lcs

    for t in (0.0, 0.3, 0.7, 0.9, 1.0):
        for a in range(1, 40):
            hi = sharded.length_window(a, t)
            for b in range(a, 3 * a + 5):
                assert (f_from_lcs(a, a, b) > t) == (b <= hi), (t, a, b)


def test_bucket_pairs_with_lengths_keep_every_viable_pair():
    rng = np.random.default_rng(0)
    pos = rng.permutation(200)[:80]
    lens = rng.integers(1, 40, size=80)
    i, j = sharded.bucket_pairs(pos, lens, 0.7)
    got = set(zip(i.tolist(), j.tolist()))
    length = dict(zip(pos.tolist(), lens.tolist()))
    want = {(min(p, q), max(p, q)) for x, p in enumerate(pos.tolist()) for q in pos.tolist()[x + 1:]
            if sharded.length_window(min(length[p], length[q]), 0.7) >= max(length[p], length[q])}
    assert got == want and all(a < b for a, b in got)


def test_minhash_recall_is_measured(records, truth):
    """Normal band settings (256 permutations, 5 rows per band = 51 bands): recall of the verified duplicate
    pairs (F > 0.7 over all pairs, brute force) and of the exact filter's duplicate decisions."""
    reference, ids, texts = records
    truth, tokens, _ = truth
    lengths = [len(t) for t in tokens]
    want = dedup(texts, ids, reference=reference)
    for num_perm, rows in ((256, 5), (128, 3)):
        t0 = time.perf_counter()
        keys = [sharded.band_keys_of_tokens(t, num_perm, rows, seed=1) for t in tokens]
        cand = sharded.candidate_pairs(keys, lengths, 0.7)
        found = sum(p in cand for p in truth)
        got = sharded.sharded_dedup(texts, ids, reference=reference, num_perm=num_perm, rows_per_band=rows)
        differ = sum(a != b for a, b in zip(got.duplicate, want.duplicate))
        caught = sum(a and b for a, b in zip(got.duplicate, want.duplicate))
        print(f"\n{num_perm} perms x {rows} rows: pair recall {found}/{len(truth)} = {found / len(truth):.4f}, "
              f"duplicate recall {caught}/{sum(want.duplicate)} = {caught / sum(want.duplicate):.4f}, "
              f"{differ} differing decisions, {len(cand)} candidate pairs, {time.perf_counter() - t0:.2f} s")
        assert found / len(truth) > 0.9
        assert caught / sum(want.duplicate) > 0.95
