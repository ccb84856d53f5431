"""ROUGE-L novelty filter: a candidate is a duplicate when its ROUGE-L F against any instruction already in the
pool is strictly greater than the threshold (Self-Instruct: 0.7).

``NoveltyIndex`` is the replaceable component the stages use: ``nearest`` scores a candidate against the pool,
``add`` puts an accepted instruction in it. Scores are those of rouge-score 0.1.2 with the pool item as prediction
and the candidate as target, which is how Self-Instruct and Alpaca call it (the F-measure is symmetric, bit for
bit). ``dedup`` is the batch form: it deduplicates a finished list in order, with the same decisions as feeding
the list to ``nearest``/``add`` one by one.

How it is fast without changing a decision
------------------------------------------
* Exact candidate index (pools up to ``minhash_above``). A text is the SET of its numbered tokens ("the#0",
  "the#1", ...), so the size of the intersection of two such sets (their multiset overlap O) bounds their LCS.
  With ``a`` and ``b`` tokens, F > t needs ``L >= need(a, b)``, the least LCS whose rouge-score float F exceeds
  t (``rouge.min_lcs_row``: exact, no margin needed, the float formula is monotone in L and b), and
  ``need(a, b) >= min_lcs_for_length(a)`` for every b. The index keeps, per element, the ascending list of pool
  items holding it. A query skips its ``s = min_lcs_for_length(a) - 1`` most frequent elements and counts, per
  pool item, the shared elements among the others: an item never counted overlaps in at most s elements, so it
  cannot reach the threshold (never scored); a counted item has ``O <= count + s`` (bound 1: keep only
  ``count + s >= need(a, b)``). For the few survivors the exact overlap comes from their stored elements
  (bound 2: ``O >= need(a, b)``), and only then does the LCS run, in compiled code (rapidfuzz ``LCSseq`` over
  one code point per distinct token). Which elements are skipped does not matter for correctness, so the order
  can follow the current posting sizes. On the benchmark stream fewer than one LCS per candidate is computed.
* MinHash LSH (pools above ``minhash_above``): candidates from ``minhash.py``, thinned by the exact length bound,
  a 64-bin count sketch (sum of bin-wise minima >= overlap) and the exact overlap, then the exact LCS. Recall is
  below 100% (a pair LSH does not propose is never scored), measured by ``bench/filter_bench.py``; no
  non-duplicate is ever rejected.

What ``nearest`` reports
------------------------
``Match.score`` is the highest ROUGE-L F among the pairs that were scored, ``nearest_id``/``nearest_text`` that
pool item (the earliest one on ties, like ``numpy.argmax``), or ``(0.0, None, None)`` when no pair was scored.
With pruning, every pair that can exceed the threshold is scored, so whenever the true best score is above the
threshold the reported score, item and decision are exactly those of brute force (``Match.exact`` is True).
For a non-duplicate the reported score is only the best among the pairs that survived pruning (a lower bound of
the true best; ``exact`` False). ``exact_nearest=True`` scores the whole pool (brute force, slow for big pools) so
every score is exact; ``alpaca_similarity=True`` also fills Alpaca's ten most similar instructions and the mean
score. In MinHash mode the score is exact over the LSH candidates only.
"""
from __future__ import annotations

import time
from array import array
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

from .minhash import CompactBandIndex, DatasketchBandIndex, MinHasher, lsh_params
from .rouge import Tokenizer, Vocab, f_from_lcs_array, min_lcs_for_length, min_lcs_row

_EMPTY = np.empty(0, dtype=np.int64)
_SK_BINS = 64
_SK_MULT, _SK_MASK, _SK_SHIFT = np.uint64(0x9E3779B1), np.uint64(0xFFFFFFFF), np.uint64(26)  # 32-bit hash, top 6


@dataclass
class Match:
    score: float  # highest ROUGE-L F among the scored pairs (0.0 for an empty pool or when nothing was scored)
    nearest_id: str | None
    nearest_text: str | None
    exact: bool = True  # score is the exact maximum over the pool (always True when score > threshold, exact mode)
    scored: int = 0  # pairs whose LCS was computed
    top: list[dict] | None = None  # alpaca_similarity: the 10 most similar pool items {id, instruction, score}
    mean_score: float | None = None  # alpaca_similarity: mean score over the whole pool


@dataclass
class _Encoded:
    text: str
    enc: str  # one code point per token
    n: int  # tokens
    elements: list[int]  # ids of (token, occurrence index) pairs, one per token
    lsh_keys: np.ndarray | None = None  # MinHash mode: band keys (compact) or signature (datasketch), cached
    sketch: np.ndarray | None = None  # MinHash mode: count sketch, cached


class _GrowInt:
    """A numpy int32 array that grows by doubling."""

    def __init__(self) -> None:
        self.a = np.zeros(1024, dtype=np.int32)
        self.n = 0

    def append(self, v: int) -> None:
        if self.n == len(self.a):
            self.a = np.concatenate((self.a, np.zeros(len(self.a), dtype=np.int32)))
        self.a[self.n] = v
        self.n += 1

    def extend(self, values: list[int]) -> None:
        k = len(values)
        while self.n + k > len(self.a):
            self.a = np.concatenate((self.a, np.zeros(len(self.a), dtype=np.int32)))
        self.a[self.n: self.n + k] = values
        self.n += k

    def view(self) -> np.ndarray:
        return self.a[: self.n]


@dataclass
class IndexStats:
    queries: int = 0
    candidates: int = 0  # pool items counted by the exact index (bound 1 input) or proposed by LSH
    scored: int = 0  # pairs whose LCS was computed
    minhash_queries: int = 0
    switched_to_minhash_at: int | None = None
    lsh_seconds: float = 0.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class NoveltyIndex:
    """The pool of accepted instructions and the ROUGE-L novelty check against it (see the module docstring).

    ``NoveltyIndex(threshold, use_stemmer, unicode)`` keeps the original API; the keyword-only options are:
    ``exact_nearest`` (score the whole pool), ``exact_nearest_up_to`` (the same while the pool holds at most this
    many instructions: cheap for small pools, about 1.4 s for 5,000 queries), ``alpaca_similarity`` (top-10 and
    mean, implies exact_nearest),
    ``minhash_above`` (pool size above which LSH proposes the candidates; None = never, the default here;
    ``FilterConfig`` sets 100,000), ``num_perm`` (256), ``minhash_threshold`` (0.45), ``minhash_backend``
    ("compact" or "datasketch"), ``minhash_seed``.
    """

    def __init__(self, threshold: float = 0.7, use_stemmer: bool = False, unicode: bool = False, *,
                 exact_nearest: bool = False, exact_nearest_up_to: int | None = None,
                 alpaca_similarity: bool = False, minhash_above: int | None = None,
                 num_perm: int = 256, minhash_threshold: float = 0.45, minhash_backend: str = "compact",
                 minhash_seed: int = 1):
        self.threshold = threshold
        self.tokenizer = Tokenizer(use_stemmer=use_stemmer, unicode=unicode, cache_size=0)
        self.exact_nearest = exact_nearest or alpaca_similarity
        self.exact_nearest_up_to = exact_nearest_up_to
        self.alpaca_similarity = alpaca_similarity
        self.minhash_above = minhash_above
        self.num_perm, self.minhash_threshold = num_perm, minhash_threshold
        self.minhash_backend, self.minhash_seed = minhash_backend, minhash_seed
        self._vocab = Vocab()
        self._elem_ids: dict[int, int] = {}
        self._ids: list[str] = []
        self._texts: list[str] = []
        self._encoded: list[str] = []
        self._lens = _GrowInt()
        self._first_exact: dict[str, int] = {}  # token string -> first pool index (F = 1.0 shortcut)
        self._position: dict[str, int] = {}  # pool id -> its first index (for ``exclude``)
        self._postings: dict[int, array] | None = {}  # element -> pool items holding it (ascending)
        self._elems = _GrowInt()  # every pool item's elements, concatenated (CSR with _starts)
        self._starts = _GrowInt()
        self._mark = np.zeros(1024, dtype=np.uint8)
        self._rows: dict[int, np.ndarray] = {}
        self._row_cap = 256  # rows cover partner lengths up to this (grown with the longest pool item)
        self._hasher: MinHasher | None = None
        self._lsh: CompactBandIndex | DatasketchBandIndex | None = None
        self._sk = np.zeros((0, _SK_BINS), dtype=np.uint8)  # MinHash mode: count sketches (see _sketch_of)
        self._last: _Encoded | None = None
        self.stats = IndexStats()

    def __len__(self) -> int:
        return len(self._ids)

    # -- encoding ------------------------------------------------------------------------------------------------
    def encode(self, text: str) -> _Encoded:
        last = self._last
        if last is not None and last.text == text:
            return last
        ids = self._vocab.ids(self.tokenizer.tokenize_uncached(text))
        seen: dict[int, int] = {}
        elem_ids = self._elem_ids
        elements = []
        for t in ids:
            k = seen.get(t, 0)
            seen[t] = k + 1
            key = (k << 21) | t  # token ids are code points (< 2**21)
            e = elem_ids.get(key)
            if e is None:
                e = elem_ids[key] = len(elem_ids)
            elements.append(e)
        self._last = enc = _Encoded(text, "".join(map(chr, ids)), len(ids), elements)
        return enc

    def _maybe_switch(self) -> None:
        if self._lsh is None and self.minhash_above is not None and len(self) > self.minhash_above:
            self._switch_to_minhash()

    def _switch_to_minhash(self) -> None:
        t0 = time.perf_counter()
        self._hasher = MinHasher(self.num_perm, self.minhash_seed)
        bands, rows = lsh_params(self.minhash_threshold, self.num_perm)
        if self.minhash_backend == "datasketch":
            lsh = DatasketchBandIndex(self.num_perm, bands, rows, self.minhash_seed)
        elif self.minhash_backend == "compact":
            lsh = CompactBandIndex(self.num_perm, bands, rows, self.minhash_seed)
        else:
            raise ValueError(f"unknown minhash backend {self.minhash_backend!r}")
        # Count sketches of the whole pool, from the stored elements (see _sketch_of).
        n = len(self)
        lens = self._lens.view().astype(np.int64)
        counts = np.zeros((max(1024, 2 * n), _SK_BINS), dtype=np.int32)
        elems = self._elems.view().astype(np.uint64)
        np.add.at(counts, (np.repeat(np.arange(n), lens), ((elems * _SK_MULT) & _SK_MASK) >> _SK_SHIFT), 1)
        counts[: n][lens >= 255] = 255
        self._sk = np.minimum(counts, 255).astype(np.uint8)
        del counts, elems
        # Re-derive every pool item's elements from its encoded string (the ids are stable).
        items = [i for i in range(len(self)) if self._encoded[i]]
        element_lists = (self._elements_of(self._encoded[i]) for i in items)
        sigs = self._hasher.signatures(element_lists)
        if isinstance(lsh, DatasketchBandIndex):
            lsh.insert_many(items, sigs)
        else:
            chunk: list[np.ndarray] = []
            for k, sig in enumerate(sigs, start=1):
                chunk.append(sig)
                if len(chunk) == 4096 or k == len(items):
                    keys = lsh.band_keys_many(np.stack(chunk))
                    for i, row in zip(items[k - len(chunk): k], keys):
                        lsh.insert(i, keys=row)
                    chunk = []
        self._lsh = lsh
        self._postings = None  # the posting lists are no longer needed (the CSR elements are: bound 2)
        self.stats.switched_to_minhash_at = len(self)
        self.stats.lsh_seconds += time.perf_counter() - t0

    @staticmethod
    def _sketch_of(elements) -> np.ndarray:
        """64 bins of element counts (uint8). For any two texts, the sum over bins of the smaller count is at least
        their multiset overlap (a shared element lands in the same bin on both sides): a cheap, valid upper bound
        used on LSH candidates before the exact overlap. Texts of 255 or more tokens get 255 everywhere."""
        if len(elements) >= 255:
            return np.full(_SK_BINS, 255, dtype=np.uint8)
        bins = ((np.asarray(elements, dtype=np.uint64) * _SK_MULT) & _SK_MASK) >> _SK_SHIFT
        return np.bincount(bins.astype(np.intp), minlength=_SK_BINS).astype(np.uint8)

    def _sk_append(self, i: int, e: _Encoded) -> None:
        if i >= len(self._sk):
            grown = np.zeros((max(1024, 2 * len(self._sk), 2 * i), _SK_BINS), dtype=np.uint8)
            grown[: len(self._sk)] = self._sk
            self._sk = grown
        self._sk[i] = e.sketch if e.sketch is not None else self._sketch_of(e.elements)

    def _lsh_keys(self, e: _Encoded) -> np.ndarray:
        if e.lsh_keys is None:
            sig = self._hasher.signature(e.elements)
            e.lsh_keys = self._lsh.band_keys(sig) if isinstance(self._lsh, CompactBandIndex) else sig
        return e.lsh_keys

    def _lsh_query(self, e: _Encoded) -> np.ndarray:
        if isinstance(self._lsh, CompactBandIndex):
            return self._lsh.query(keys=self._lsh_keys(e), unique=False)
        return self._lsh.query(self._lsh_keys(e))

    def _lsh_insert(self, i: int, e: _Encoded) -> None:
        if isinstance(self._lsh, CompactBandIndex):
            self._lsh.insert(i, keys=self._lsh_keys(e))
        else:
            self._lsh.insert(i, self._lsh_keys(e))

    def _elements_of(self, enc: str) -> list[int]:
        seen: dict[int, int] = {}
        out = []
        for ch in enc:
            t = ord(ch)
            k = seen.get(t, 0)
            seen[t] = k + 1
            out.append(self._elem_ids[(k << 21) | t])
        return out

    # -- queries ---------------------------------------------------------------------------------------------------
    def _row(self, a: int) -> np.ndarray:
        """Least LCS needed against each partner length (see ``rouge.min_lcs_row``), cached per length."""
        row = self._rows.get(a)
        if row is None:
            row = self._rows[a] = min_lcs_row(a, self._row_cap, self.threshold)
        return row

    def _candidates(self, e: _Encoded) -> np.ndarray:
        """Pool indices that may score above the threshold (sorted, unique); exact unless MinHash is active."""
        if self._lsh is not None:
            t0 = time.perf_counter()
            self.stats.minhash_queries += 1
            cand = self._lsh_query(e)  # raw: an item colliding in several bands appears several times
            self.stats.lsh_seconds += time.perf_counter() - t0
            self.stats.candidates += len(cand)
            if not len(cand):
                return _EMPTY
            row = self._row(e.n)
            lens = self._lens.a[cand]
            keep = row[lens] <= e.n  # the length bound: some LCS <= min(a, b) suffices
            cand, lens = cand[keep], lens[keep]
            if len(cand) and e.n < 255:  # the count-sketch bound (see _sketch_of)
                if e.sketch is None:
                    e.sketch = self._sketch_of(e.elements)
                bound = np.minimum(self._sk[cand], e.sketch).sum(axis=1, dtype=np.int32)
                keep = bound >= row[lens]
                cand, lens = cand[keep], lens[keep]
            if not len(cand):
                return _EMPTY
            cand = cand[self._overlap_ok(e, cand, lens, row)]
            return np.unique(cand) if len(cand) > 1 else cand
        need = min_lcs_for_length(e.n, self.threshold)
        if need > e.n:
            return _EMPTY
        # Skip the s = need - 1 most frequent elements of the candidate: a pool item sharing none of the others
        # overlaps it in at most s elements, so its LCS is below `need` and it cannot exceed the threshold.
        skip = need - 1
        present = [p for p in map(self._postings.get, e.elements) if p is not None]
        if len(present) <= skip:
            return _EMPTY
        present.sort(key=len)
        counted = present[: len(present) - skip]
        if len(counted) == 1:
            items = np.frombuffer(counted[0], dtype=np.int32).astype(np.int64)
            counts = np.ones(len(items), dtype=np.int64)
        else:
            flat = np.frombuffer(b"".join(counted), dtype=np.int32)  # one copy of all the posting buffers
            if len(flat) * 16 > len(self._ids):
                counts = np.bincount(flat, minlength=len(self._ids))
                items = np.flatnonzero(counts)
                counts = counts[items]
            else:
                items, counts = np.unique(flat, return_counts=True)
        self.stats.candidates += len(items)
        row = self._row(e.n)
        # Bound 1: overlap <= counted + skipped, and the LCS needs row[len].
        lens = self._lens.a[items]
        keep = counts + skip >= row[lens]
        if not keep.any():
            return _EMPTY
        items, lens = items[keep], lens[keep]
        # Bound 2: the exact multiset overlap.
        return items[self._overlap_ok(e, items, lens, row)]

    def _overlap_ok(self, e: _Encoded, items: np.ndarray, lens: np.ndarray, row: np.ndarray) -> np.ndarray:
        """Mask of the items whose exact multiset overlap with ``e`` reaches the LCS they need (row[len]),
        from the items' stored elements (CSR) and a mark array of the query's elements."""
        mark = self._mark
        if len(mark) < len(self._elem_ids):
            mark = self._mark = np.zeros(2 * len(self._elem_ids), dtype=np.uint8)
        mark[e.elements] = 1
        lens64 = lens.astype(np.int64)
        ends = np.cumsum(lens64)
        offs = ends - lens64
        pos = np.arange(ends[-1], dtype=np.int64) + np.repeat(self._starts.a[items] - offs, lens64)
        overlap = np.add.reduceat(mark[self._elems.a[pos]], offs, dtype=np.int64)
        mark[e.elements] = 0
        return overlap >= row[lens]

    def _score(self, e: _Encoded, cand: np.ndarray) -> np.ndarray:
        lens = self._lens.a[cand]
        if len(cand) <= 16:
            sim = LCSseq.similarity
            enc = self._encoded
            lcs = np.fromiter((sim(e.enc, enc[j]) for j in cand.tolist()), dtype=np.int64, count=len(cand))
        else:
            strings = [self._encoded[j] for j in cand.tolist()]
            lcs = process.cdist([e.enc], strings, scorer=LCSseq.similarity, dtype=np.int32, workers=1)[0]
        # rouge-score's formula (both lengths are positive here; L = 0 scores 0), as in f_from_lcs_array.
        lf = np.maximum(lcs, 1).astype(np.float64)
        precision = lf / lens
        recall = lf / e.n
        f = 2 * precision * recall / (precision + recall)
        f[lcs == 0] = 0.0
        return f

    def nearest(self, text: str, exclude: Collection[str] | None = None) -> Match:
        """The nearest pool item to ``text``, leaving out the pool items whose ids are in ``exclude`` (an evolved
        instruction's own ancestors and descendants: see ``filters.chain``)."""
        return self._nearest(self.encode(text), exclude)

    def _excluded(self, exclude: Collection[str] | None) -> np.ndarray | None:
        if not exclude:
            return None
        pos = [self._position[i] for i in exclude if i in self._position]
        return np.asarray(sorted(pos), dtype=np.int64) if pos else None

    def _nearest(self, e: _Encoded, exclude: Collection[str] | None = None) -> Match:
        self._maybe_switch()
        self.stats.queries += 1
        if not self._ids or e.n == 0:
            return Match(0.0, None, None, exact=True,
                         top=[] if self.alpaca_similarity else None,
                         mean_score=0.0 if self.alpaca_similarity else None)
        skip = self._excluded(exclude)
        small = self.exact_nearest_up_to is not None and len(self._ids) <= self.exact_nearest_up_to
        if self.exact_nearest or small:
            return self._nearest_exact(e, skip)
        first = self._first_exact.get(e.enc)
        if first is not None and (skip is None or first not in skip):
            # an identical token sequence: F = 1.0, the maximum, at the earliest such item
            self.stats.scored += 1
            return Match(1.0, self._ids[first], self._texts[first], exact=True, scored=1)
        cand = self._candidates(e)
        if skip is not None and len(cand):
            cand = cand[~np.isin(cand, skip)]
        if not len(cand):
            return Match(0.0, None, None, exact=False)
        scores = self._score(e, cand)
        self.stats.scored += len(cand)
        best = int(np.argmax(scores))
        score = float(scores[best])
        j = int(cand[best])
        if score <= 0.0:
            return Match(0.0, None, None, exact=False, scored=len(cand))
        return Match(score, self._ids[j], self._texts[j], exact=score > self.threshold and self._lsh is None,
                     scored=len(cand))

    def _nearest_exact(self, e: _Encoded, skip: np.ndarray | None = None) -> Match:
        n = len(self._ids)
        lcs = process.cdist([e.enc], self._encoded, scorer=LCSseq.similarity, dtype=np.int32, workers=1)[0]
        scores = f_from_lcs_array(lcs, self._lens.view(), e.n)
        self.stats.scored += n
        if skip is not None:
            scores[skip] = 0.0  # never the nearest, never a duplicate (Alpaca's mean still counts them as 0)
        best = int(np.argmax(scores))
        score = float(scores[best])
        top = mean = None
        if self.alpaca_similarity:
            order = np.argsort(-scores, kind="stable")[:10]
            top = [{"id": self._ids[j], "instruction": self._texts[j], "score": float(scores[j])}
                   for j in order.tolist()]
            mean = float(np.mean(scores))
        if score <= 0.0:
            return Match(0.0, None, None, exact=True, scored=n, top=top, mean_score=mean)
        return Match(score, self._ids[best], self._texts[best], exact=True, scored=n, top=top, mean_score=mean)

    def is_duplicate(self, match: Match) -> bool:
        return match.score > self.threshold

    def add(self, id_: str, text: str) -> None:
        self._add(id_, self.encode(text))

    def _add(self, id_: str, e: _Encoded) -> None:
        i = len(self._ids)
        self._ids.append(id_)
        self._texts.append(e.text)
        self._encoded.append(e.enc)
        self._lens.append(e.n)
        if e.n > self._row_cap:
            self._row_cap = 2 * e.n
            self._rows.clear()
        self._starts.append(self._elems.n)  # one entry per pool item, token-less ones included
        self._position.setdefault(id_, i)
        if e.n:
            self._first_exact.setdefault(e.enc, i)
            self._elems.extend(e.elements)
            if self._lsh is not None:
                t0 = time.perf_counter()
                self._sk_append(i, e)
                self._lsh_insert(i, e)
                self.stats.lsh_seconds += time.perf_counter() - t0
            else:
                postings = self._postings
                for x in e.elements:
                    p = postings.get(x)
                    if p is None:
                        postings[x] = array("i", (i,))
                    else:
                        p.append(i)

    def check_and_add(self, id_: str, text: str, exclude: Collection[str] | None = None) -> tuple[bool, Match]:
        """The incremental step: score against the pool (less ``exclude``), add when novel. Returns
        (is_duplicate, match)."""
        return self._check_and_add(id_, self.encode(text), exclude)

    def _check_and_add(self, id_: str, e: _Encoded, exclude: Collection[str] | None = None) -> tuple[bool, Match]:
        match = self._nearest(e, exclude)
        dup = self.is_duplicate(match)
        if not dup:
            self._add(id_, e)
        return dup, match


@dataclass
class DedupResult:
    duplicate: list[bool]
    matches: list[Match]
    stats: dict = field(default_factory=dict)


def dedup(texts: Sequence[str], ids: Sequence[str] | None = None, *, threshold: float = 0.7,
          use_stemmer: bool = False, unicode: bool = False, reference: Sequence[tuple[str, str]] = (),
          progress: Callable[[int], None] | None = None,
          excludes: Sequence[Collection[str] | None] | None = None, **options) -> DedupResult:
    """Batch mode: deduplicate a finished list in order (text i is a duplicate when it scores above the threshold
    against a reference text or an earlier non-duplicate), with the same decisions and matches as the incremental
    loop. It tokenizes and encodes the whole list first, then resolves the decisions in order against the pool of
    references and earlier non-duplicates. ``excludes[i]`` (optional) holds the ids text i is not
    compared with. ``options`` are NoveltyIndex's keyword options.
    """
    ids = list(ids) if ids is not None else [str(i) for i in range(len(texts))]
    if len(ids) != len(texts):
        raise ValueError("ids and texts differ in length")
    t0 = time.perf_counter()
    index = NoveltyIndex(threshold, use_stemmer, unicode, **options)
    # Tokenize and encode everything first (only the token strings are kept), then decide in order.
    all_texts = [r[1] for r in reference] + list(texts)
    enc_strings = [index.encode(t).enc for t in all_texts]
    index._last = None

    def encoded(k: int) -> _Encoded:
        s = enc_strings[k]
        return _Encoded(all_texts[k], s, len(s), index._elements_of(s))

    for k, (rid, _) in enumerate(reference):
        index._add(rid, encoded(k))
    base = len(reference)
    duplicate: list[bool] = []
    matches: list[Match] = []
    for k, id_ in enumerate(ids):
        dup, match = index._check_and_add(id_, encoded(base + k), excludes[k] if excludes else None)
        duplicate.append(dup)
        matches.append(match)
        if progress is not None and (k & 1023) == 0:
            progress(k)
    stats = index.stats.as_dict()
    stats["seconds"] = time.perf_counter() - t0
    return DedupResult(duplicate, matches, stats)
