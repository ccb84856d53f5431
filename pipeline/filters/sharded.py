"""The ROUGE-L novelty filter split into parts that shard: band keys per text, candidate pairs per band key, exact
verification per pair, and one cheap in-order pass (``runs/ray_dedup.py`` runs the first three on Ray Data).

Pure functions, no I/O, no Ray: every part takes and returns plain values, so any process can compute any shard.

The parts
---------
* ``band_keys(text, ...)``: the text's tokens (``rouge.Tokenizer``, the filter's own settings) numbered by
  occurrence ("the", "the" -> elements ``the#0``, ``the#1``), each element hashed with blake2b of its string (a
  stable 64-bit hash: two processes give the same element the same hash, unlike a process-local token id). Then

  - MinHash mode (``num_perm`` an int): ``num_perm`` min-hashes of the element hashes, cut into
    ``num_perm // rows_per_band`` bands of ``rows_per_band`` rows, each band hashed to a 64-bit key (the band
    number is mixed in, so bands never collide with each other by construction). Two texts become a candidate
    pair when they share a key. Approximate: a pair whose every band differs is never scored, so recall is below
    100% and is measured (``tests/filters/test_sharded.py``, ``bench/ray_dedup_bench.py``).
  - Exact mode (``num_perm=None``, needs ``threshold``): the keys are the hashes of the text's first
    ``a - m(a) + 1`` elements in one global order, where ``a`` is the token count and
    ``m(a) = rouge.min_lcs_for_length(a, threshold)`` the least LCS with which a text of ``a`` tokens can score
    above the threshold against any text. The order is: rarest first by an optional table of element counts
    (``element_frequencies``, e.g. counted over the whole input in a first pass; elements absent from it count
    0), then by hash, then by element string. ANY table gives the same candidates' guarantee, as long as every
    process uses the same one; rare-first only keeps the buckets small (common words like ``the#0`` are then
    seldom in a prefix: on 20,000 records about 8x fewer candidate pairs than hash order alone).
    No MinHash setting has full recall: with bands of one row two texts still only collide when they share a
    minimum, so a shared token does not make a candidate pair (for duplicates it does with high probability,
    not with certainty).

* ``candidate_pairs(keys_by_id, lengths, threshold)``: every pair of texts sharing a key, as (earlier, later)
  positions; with ``lengths`` only the pairs whose token counts allow F > threshold (``length_window``: the LCS is
  at most the shorter length, so lengths too far apart can never exceed it; exact, in rouge-score's floats).
* ``verify(pairs, texts, threshold)``: the exact ROUGE-L F of each pair (rouge-score's float formula,
  ``rouge.f_from_lcs_array``, on a compiled LCS: the same bits as rouge-score and ``novelty``), keeping the pairs
  above the threshold (or above ``min_score``).
* ``keep_in_order(n, verified, ...)``: walk the texts in order; text ``k`` is a duplicate iff some reference text
  or some earlier KEPT text has a verified score above the threshold with it; its match is the best such score,
  the earliest pool item on ties (positions: references first, then the texts, which is the pool order of
  ``novelty.NoveltyIndex``, whose ``np.argmax`` keeps the earliest maximum). Returns ``novelty.DedupResult``.

Why exact mode makes the decisions of ``novelty.dedup``
-------------------------------------------------------
``novelty.dedup`` decides text k from the set D(k) of pool items (references, earlier non-duplicates) whose F with
k exceeds the threshold t: duplicate iff D(k) is non-empty, match = the best of D(k), earliest on ties (its pruning
scores every pair that can exceed t, so for a duplicate the score and nearest item are exactly brute force's).
``keep_in_order`` decides from the verified pairs restricted to the same pool, so it makes the same decisions and
picks the same match as soon as the verified pairs contain every pair with F > t (the pool itself is then the
same, by induction over k). Scores agree bit for bit: both compute rouge-score's float formula from the same LCS
and lengths, and the formula is symmetric in its two lengths (``2*p`` is exact, so ``2*p*r == 2*r*p``).
Every pair with F > t is a candidate in exact mode:

1. F > t needs an LCS ``L >= need(a, b) >= max(m(a), m(b))`` (``rouge.min_lcs_for_length``; F is symmetric).
2. The LCS is at most the multiset overlap: the number O of shared numbered elements (``x#i`` in both).
3. Prefix filter (any fixed total order): let w be the first shared element in the order. If w were not in x's
   prefix, every shared element (all at or after w) would lie among x's last ``m(a) - 1`` elements, so
   ``O <= m(a) - 1``, against 1-2.
   So w is in both prefixes, both texts have its key, and the pair is a candidate. A 64-bit hash collision can
   only add candidates, which verification then rejects.
4. The length filter drops only pairs with ``need(a, b) > min(a, b)``, which no LCS reaches.

A text with ``m(a) > a`` (none of its pairs can exceed t) gets no keys; a text with no tokens scores 0 against
everything and is never a duplicate, in both.

What differs, by design: for a KEPT text ``novelty`` reports the best of the pairs its pruning happened to score
(a lower bound, ``Match.exact`` False); here a kept text reports the best verified pair at or below the threshold
when ``verify`` kept such pairs (``min_score``), else ``(0.0, None, None)``, also with ``exact`` False. Unlike the
sequential filter, which never scores a text against an earlier duplicate, this scores every candidate pair,
duplicates included: that is what makes the parts independent of the order, and the in-order pass cheap.

MinHash mode: the same walk over fewer pairs. A missed pair can make a text kept that the exact filter rejects
(and that text, now in the pool, can reject a later text the exact filter keeps), or change a duplicate's nearest
item to a lower-scoring one; ``bench/ray_dedup_bench.py`` counts all of these.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from functools import lru_cache

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

from .novelty import DedupResult, Match
from .rouge import Tokenizer, Vocab, f_from_lcs_array, min_lcs_for_length, min_lcs_row

Key = int  # a 64-bit band key (0 <= key < 2**64)
_CPDIST = getattr(process, "cpdist", None)  # rapidfuzz >= 3.6

_U64 = np.uint64


def _fmix64(k: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer (a bijection of uint64), vectorised."""
    with np.errstate(over="ignore"):
        k = k ^ (k >> _U64(33))
        k = k * _U64(0xFF51AFD7ED558CCD)
        k = k ^ (k >> _U64(33))
        k = k * _U64(0xC4CEB9FE1A85EC53)
        return k ^ (k >> _U64(33))


@lru_cache(maxsize=1 << 18)
def _element_hash(token: str, occurrence: int) -> int:
    """The stable 64-bit hash of the element ``token#occurrence`` (blake2b of its UTF-8 string)."""
    data = f"{token}\x1f{occurrence}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def elements(tokens: Sequence[str]) -> list[tuple[int, str, int]]:
    """(hash, token, occurrence) of each numbered element of a token list, in token order."""
    seen: dict[str, int] = {}
    out = []
    for t in tokens:
        k = seen.get(t, 0)
        seen[t] = k + 1
        out.append((_element_hash(t, k), t, k))
    return out


@lru_cache(maxsize=64)
def _permutations(num_perm: int, rows_per_band: int, seed: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-permutation xor salts and odd multipliers, per-row multipliers and per-band salts, from ``seed`` only."""
    rng = np.random.RandomState(seed)
    salt = rng.randint(0, 1 << 62, size=num_perm, dtype=np.int64).astype(_U64) << _U64(2)
    mult = (rng.randint(0, 1 << 62, size=num_perm, dtype=np.int64).astype(_U64) << _U64(1)) | _U64(1)
    row_mult = (rng.randint(0, 1 << 62, size=rows_per_band, dtype=np.int64).astype(_U64) << _U64(1)) | _U64(1)
    bands = num_perm // rows_per_band
    band_salt = _fmix64(np.arange(1, bands + 1, dtype=_U64) ^ _U64(seed & 0xFFFFFFFF))
    return salt, mult, row_mult, band_salt


def minhash_signature(hashes: np.ndarray, num_perm: int, seed: int = 1) -> np.ndarray:
    """``num_perm`` min-hashes (uint64) of a set of 64-bit element hashes: permutation p maps x to
    ``fmix64((x ^ salt_p) * mult_p)`` (a bijection of uint64) and keeps the minimum."""
    salt, mult, _, _ = _permutations(num_perm, 1, seed)
    x = np.asarray(hashes, dtype=_U64)
    with np.errstate(over="ignore"):
        h = _fmix64((x[None, :] ^ salt[:, None]) * mult[:, None])
    return h.min(axis=1)


def minhash_band_keys(signature: np.ndarray, rows_per_band: int, seed: int = 1) -> list[Key]:
    """One 64-bit key per band of ``rows_per_band`` rows (``len(signature) // rows_per_band`` bands)."""
    num_perm = len(signature)
    _, _, row_mult, band_salt = _permutations(num_perm, rows_per_band, seed)
    bands = num_perm // rows_per_band
    x = np.asarray(signature[: bands * rows_per_band], dtype=_U64).reshape(bands, rows_per_band)
    with np.errstate(over="ignore"):
        k = (x * row_mult).sum(axis=1, dtype=_U64) ^ band_salt
    return _fmix64(k).tolist()


def prefix_length(n_tokens: int, threshold: float) -> int:
    """How many elements of a text of ``n_tokens`` tokens exact mode keys: ``a - m(a) + 1`` (0 when no pair of
    the text can exceed the threshold)."""
    if n_tokens == 0:
        return 0
    m = min_lcs_for_length(n_tokens, threshold)
    return max(0, n_tokens - m + 1)


def element_frequencies(token_lists: Iterable[Sequence[str]], min_count: int = 2) -> dict[int, int]:
    """How many texts hold each element (by hash), for the elements held by at least ``min_count`` texts: the
    optional order table of exact mode (an element in one text only can never make a pair)."""
    counts: dict[int, int] = defaultdict(int)
    for tokens in token_lists:
        for h, _, _ in elements(tokens):
            counts[h] += 1
    return {h: c for h, c in counts.items() if c >= min_count}


def band_keys(text: str, num_perm: int | None = 256, rows_per_band: int = 5, seed: int = 1, *,
              use_stemmer: bool = False, unicode: bool = False, threshold: float | None = None,
              order: Mapping[int, int] | None = None, tokenizer: Tokenizer | None = None) -> list[Key]:
    """The text's band keys (see the module docstring): MinHash bands when ``num_perm`` is an int, the exact
    prefix keys when it is None (``threshold`` required; ``order`` the optional element-count table).
    ``tokenizer`` (optional) replaces ``Tokenizer(use_stemmer, unicode)``."""
    tok = tokenizer or _tokenizer(use_stemmer, unicode)
    return band_keys_of_tokens(tok.tokenize(text), num_perm, rows_per_band, seed, threshold=threshold, order=order)


def band_keys_of_tokens(tokens: Sequence[str], num_perm: int | None = 256, rows_per_band: int = 5, seed: int = 1,
                        *, threshold: float | None = None, order: Mapping[int, int] | None = None) -> list[Key]:
    """``band_keys`` of an already tokenized text."""
    if not tokens:
        return []
    elems = elements(tokens)
    if num_perm is None:
        if threshold is None:
            raise ValueError("exact band keys (num_perm=None) need the threshold")
        p = prefix_length(len(tokens), threshold)
        if p == 0:
            return []
        # A total order on elements, the same in every process: (count in the table, hash, token, occurrence).
        if order is None:
            elems.sort()
        else:
            get = order.get
            elems.sort(key=lambda e: (get(e[0], 0), e))
        return list(dict.fromkeys(h for h, _, _ in elems[:p]))
    if num_perm < 1 or not 1 <= rows_per_band <= num_perm:
        raise ValueError(f"need 1 <= rows_per_band ({rows_per_band}) <= num_perm ({num_perm})")
    sig = minhash_signature(np.fromiter((h for h, _, _ in elems), dtype=_U64, count=len(elems)), num_perm, seed)
    return minhash_band_keys(sig, rows_per_band, seed)


@lru_cache(maxsize=8)
def _tokenizer(use_stemmer: bool, unicode: bool) -> Tokenizer:
    return Tokenizer(use_stemmer=use_stemmer, unicode=unicode, cache_size=1 << 14)


# -- candidate pairs ---------------------------------------------------------------------------------------------
_NO_LIMIT = np.iinfo(np.int64).max // 4


@lru_cache(maxsize=1 << 14)
def length_window(a: int, threshold: float) -> int:
    """The greatest token count ``b >= a`` with which a text of ``a`` tokens can score F > threshold (``a - 1``
    when none can). For b >= a the best LCS is a and F falls as b grows, so the viable b >= a form the range
    ``a .. length_window(a)``; decided with rouge-score's floats (``rouge.min_lcs_row``)."""
    if a <= 0:
        return a - 1
    if threshold <= 0.0:
        return _NO_LIMIT
    max_b = int(np.ceil(2 * a / threshold)) + 2  # f(a, a, b) <= 2a/(a+b) <= threshold beyond this
    row = min_lcs_row(a, max_b, threshold)
    b = np.arange(max_b + 1)
    viable = np.flatnonzero((row <= np.minimum(a, b)) & (b >= a))
    if not len(viable):
        return a - 1
    hi = int(viable[-1])
    assert hi < max_b and len(viable) == hi - a + 1, (a, threshold)
    return hi


def bucket_pairs(positions: Sequence[int] | np.ndarray, lengths: Sequence[int] | np.ndarray | None = None,
                 threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All pairs of the texts in one bucket (texts sharing one key), as two int64 arrays (earlier, later position).
    With ``lengths`` and ``threshold``, only the pairs whose token counts allow F > threshold (exact)."""
    pos = np.asarray(positions, dtype=np.int64)
    if lengths is None or threshold is None:
        pos = np.unique(pos)
        k = len(pos)
        if k < 2:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        iu, ju = np.triu_indices(k, 1)
        return pos[iu], pos[ju]
    lens = np.asarray(lengths, dtype=np.int64)
    pos, first = np.unique(pos, return_index=True)
    lens = lens[first]
    if len(pos) < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    order = np.lexsort((pos, lens))  # by length, then position
    pos, lens = pos[order], lens[order]
    hi = np.fromiter((length_window(int(a), threshold) for a in lens.tolist()), dtype=np.int64, count=len(lens))
    k = len(pos)
    start = np.arange(1, k + 1, dtype=np.int64)  # partners come after in the length order: b >= a
    end = np.searchsorted(lens, hi, side="right")
    counts = np.maximum(end - start, 0)
    total = int(counts.sum())
    if not total:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    left = np.repeat(np.arange(k, dtype=np.int64), counts)
    offs = np.cumsum(counts) - counts
    right = np.arange(total, dtype=np.int64) - np.repeat(offs - start, counts)
    pi, pj = pos[left], pos[right]
    return np.minimum(pi, pj), np.maximum(pi, pj)


def grouped_pairs(keys: np.ndarray, positions: np.ndarray, lengths: np.ndarray | None = None,
                  threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs from flat (key, position, length) rows holding ALL rows of each key they hold: every pair of
    positions sharing a key (``bucket_pairs`` per key), each pair once, sorted, as (earlier, later) int64 arrays."""
    keys = np.asarray(keys)
    pos = np.asarray(positions, dtype=np.int64)
    lens = None if lengths is None else np.asarray(lengths, dtype=np.int64)
    empty = (np.empty(0, np.int64), np.empty(0, np.int64))
    if len(keys) < 2:
        return empty
    order = np.argsort(keys, kind="stable")
    keys, pos = keys[order], pos[order]
    lens = None if lens is None else lens[order]
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    ends = np.append(starts[1:], len(keys))
    big = np.flatnonzero(ends - starts >= 2)
    out_i, out_j = [], []
    for a, b in zip(starts[big].tolist(), ends[big].tolist()):
        i, j = bucket_pairs(pos[a:b], None if lens is None else lens[a:b], threshold)
        out_i.append(i)
        out_j.append(j)
    if not out_i:
        return empty
    i, j = np.concatenate(out_i), np.concatenate(out_j)
    width = int(j.max()) + 1
    if width < 1 << 31:  # one int64 per pair: a 1-D unique (much faster than the row-wise one)
        code = np.unique(i * width + j)
        return code // width, code % width
    ij = np.unique(np.stack((i, j), axis=1), axis=0)
    return ij[:, 0].copy(), ij[:, 1].copy()


def candidate_pairs(keys_by_id: Mapping[int, Iterable[Key]] | Sequence[Iterable[Key]],
                    lengths: Mapping[int, int] | Sequence[int] | None = None,
                    threshold: float | None = None) -> set[tuple[int, int]]:
    """Pairs (i, j), i < j, of positions sharing at least one key. ``keys_by_id`` maps position -> keys (a
    sequence is indexed by position). With ``lengths`` (token counts) and ``threshold``, only the pairs whose
    lengths allow F > threshold (``bucket_pairs``)."""
    items = keys_by_id.items() if isinstance(keys_by_id, Mapping) else enumerate(keys_by_id)
    flat_keys: list[int] = []
    flat_pos: list[int] = []
    for pos, keys in items:
        keys = list(keys)
        flat_keys += keys
        flat_pos += [pos] * len(keys)
    lens = None if lengths is None else [lengths[p] for p in flat_pos]
    i, j = grouped_pairs(np.asarray(flat_keys, dtype=np.uint64), np.asarray(flat_pos, dtype=np.int64), lens,
                         threshold)
    return set(zip(i.tolist(), j.tolist()))


# -- verification ----------------------------------------------------------------------------------------------
def verify_arrays(i: np.ndarray, j: np.ndarray, text_of, threshold: float, *, use_stemmer: bool = False,
                  unicode: bool = False, min_score: float | None = None, tokenizer: Tokenizer | None = None,
                  chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ROUGE-L F of the pairs ``(i[k], j[k])`` (``text_of(position) -> text``); returns the pairs scoring
    above ``min_score`` (default: the threshold) as (i, j, score) arrays. The LCS runs in rapidfuzz
    (``process.cpdist``: element-wise, compiled; a loop of ``LCSseq.similarity`` on rapidfuzz < 3.6) over one code
    point per distinct token; the F-measure is
    rouge-score's float formula (``rouge.f_from_lcs_array``, the same bits as ``f_from_lcs``)."""
    tok = tokenizer or _tokenizer(use_stemmer, unicode)
    floor = threshold if min_score is None else min_score
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    vocab = Vocab()
    enc: dict[int, str] = {}
    for p in np.unique(np.concatenate((i, j))).tolist():
        enc[p] = vocab.encode(tok.tokenize(text_of(p)))
    out_i, out_j, out_s = [], [], []
    for lo in range(0, len(i), chunk):
        ci, cj = i[lo: lo + chunk], j[lo: lo + chunk]
        xs = [enc[p] for p in ci.tolist()]
        ys = [enc[p] for p in cj.tolist()]
        if _CPDIST is not None:
            lcs = _CPDIST(xs, ys, scorer=LCSseq.similarity, dtype=np.int64, workers=1)
        else:  # rapidfuzz < 3.6 has no cpdist: the same LCS, one call per pair
            sim = LCSseq.similarity
            lcs = np.fromiter((sim(x, y) for x, y in zip(xs, ys)), dtype=np.int64, count=len(xs))
        la = np.fromiter(map(len, xs), dtype=np.int64, count=len(xs))
        lb = np.fromiter(map(len, ys), dtype=np.int64, count=len(ys))
        f = f_from_lcs_array(lcs, la, lb)  # an empty side scores 0
        keep = f > floor
        out_i.append(ci[keep])
        out_j.append(cj[keep])
        out_s.append(f[keep])
    if not out_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)


def verify(pairs: Iterable[tuple[int, int]], texts: Sequence[str] | Mapping[int, str], threshold: float, *,
           use_stemmer: bool = False, unicode: bool = False, min_score: float | None = None
           ) -> dict[tuple[int, int], float]:
    """{(i, j): F} for the pairs scoring above ``min_score`` (default: the threshold), exact ROUGE-L F with the
    filter's tokenizer settings. ``texts`` is indexed by position."""
    pairs = list(pairs)
    if not pairs:
        return {}
    arr = np.asarray(pairs, dtype=np.int64)
    i, j, s = verify_arrays(arr[:, 0], arr[:, 1], texts.__getitem__, threshold, use_stemmer=use_stemmer,
                            unicode=unicode, min_score=min_score)
    return {(min(a, b), max(a, b)): f for a, b, f in zip(i.tolist(), j.tolist(), s.tolist())}


# -- the in-order pass -----------------------------------------------------------------------------------------
def keep_in_order(n: int, verified: Mapping[tuple[int, int], float] | Iterable[tuple[int, int, float]], *,
                  threshold: float, reference: Sequence[tuple[str, str]] = (), ids: Sequence[str] | None = None,
                  texts: Sequence[str] | None = None,
                  excludes: Sequence[Collection[str] | None] | None = None) -> DedupResult:
    """The decisions of ``novelty.dedup`` from verified pairs (see the module docstring).

    Positions: ``reference[r]`` (id, text) is position r, text k is ``len(reference) + k``. ``verified`` maps
    (i, j) to F (or yields (i, j, F)) for pairs of positions; pairs at or below the threshold only serve as a kept
    text's reported nearest. ``ids``/``texts`` fill the matches (ids default to "0", "1", ...); ``excludes[k]``
    holds the ids text k is not compared with (as ``novelty``: the first pool item with each id).
    """
    base = len(reference)
    ids = list(ids) if ids is not None else [str(k) for k in range(n)]
    if len(ids) != n or (texts is not None and len(texts) != n):
        raise ValueError("ids/texts differ in length from n")
    pool_id = [r[0] for r in reference] + ids
    pool_text = [r[1] for r in reference] + (list(texts) if texts is not None else [None] * n)
    earlier: dict[int, list[tuple[int, float]]] = defaultdict(list)  # later position -> (earlier position, F)
    triples = ((a, b, s) for (a, b), s in verified.items()) if isinstance(verified, Mapping) else verified
    pairs = 0
    for a, b, s in triples:
        if a == b:
            continue
        lo, hi = (a, b) if a < b else (b, a)
        if hi >= base:
            earlier[hi].append((lo, s))
            pairs += 1
    in_pool = [True] * base + [False] * n
    first_of_id: dict[str, int] = {}
    for r in range(base):
        first_of_id.setdefault(pool_id[r], r)
    duplicate: list[bool] = []
    matches: list[Match] = []
    for k in range(n):
        q = base + k
        skip = None
        if excludes is not None and excludes[k]:
            skip = {first_of_id[x] for x in excludes[k] if x in first_of_id}
        best_p, best_s = -1, 0.0
        for p, s in earlier.get(q, ()):
            if not in_pool[p] or (skip and p in skip):
                continue
            if s > best_s or (s == best_s and p < best_p):
                best_p, best_s = p, s
        dup = best_s > threshold
        duplicate.append(dup)
        if best_p < 0:
            matches.append(Match(0.0, None, None, exact=False))
        else:
            matches.append(Match(best_s, pool_id[best_p], pool_text[best_p], exact=dup))
        if not dup:
            in_pool[q] = True
            first_of_id.setdefault(pool_id[q], q)
    return DedupResult(duplicate, matches, {"verified_pairs": pairs, "duplicates": sum(duplicate)})


def sharded_dedup(texts: Sequence[str], ids: Sequence[str] | None = None, *, threshold: float = 0.7,
                  reference: Sequence[tuple[str, str]] = (), use_stemmer: bool = False, unicode: bool = False,
                  num_perm: int | None = None, rows_per_band: int = 5, seed: int = 1,
                  frequency_order: bool = True, excludes: Sequence[Collection[str] | None] | None = None,
                  min_score: float | None = None) -> DedupResult:
    """The four parts in one process (what ``runs.ray_dedup`` distributes): ``num_perm=None`` is exact mode, the
    same decisions and duplicate matches as ``novelty.dedup`` (``frequency_order``: order prefixes rarest first
    by counts over the whole input, which only changes how many candidate pairs there are)."""
    tok = _tokenizer(use_stemmer, unicode)
    all_texts = [r[1] for r in reference] + list(texts)
    tokens = [tok.tokenize(t) for t in all_texts]
    order = element_frequencies(tokens) if num_perm is None and frequency_order else None
    keys = [band_keys_of_tokens(t, num_perm, rows_per_band, seed, threshold=threshold, order=order) for t in tokens]
    pairs = candidate_pairs(keys, [len(t) for t in tokens], threshold)
    verified = verify(pairs, all_texts, threshold, use_stemmer=use_stemmer, unicode=unicode, min_score=min_score)
    res = keep_in_order(len(texts), verified, threshold=threshold, reference=reference, ids=ids, texts=texts,
                        excludes=excludes)
    res.stats.update(candidate_pairs=len(pairs), keys=sum(map(len, keys)))
    return res
