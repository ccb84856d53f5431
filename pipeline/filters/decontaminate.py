"""Benchmark decontamination: reject a record that shares an n-gram with an evaluation item.

As GPT-3 and datatrove do, text is normalised (Unicode NFKC, lower case, words only: punctuation and spacing do
not count) and a record is contaminated when its instruction + input + output contains any run of ``n`` words
(default 13) that also occurs in a benchmark item. An item shorter than ``n`` words (but at least
``MIN_SHORT_WORDS``) is matched whole; shorter ones are skipped and counted, since five common words say nothing.

The index holds one 64-bit hash per distinct n-gram of the benchmarks: a set of them for the per-n-gram test, and
the same hashes sorted in a numpy array beside the number of the item each came from, searched only on a hit.
100K records against 10K items take seconds (``bench/decontam_bench.py``). A hash match is confirmed on the words
themselves before a record is rejected, so a collision never rejects anything. No I/O here: the caller reads the
benchmark files into ``BenchmarkItem`` values.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from ..records import BenchmarkItem, Record
from .heuristics import Verdict

CONTAMINATED = "contaminated"
MIN_SHORT_WORDS = 6
_WORDS = re.compile(r"\w+")


def normal_words(text: str) -> list[str]:
    """The words n-grams are made of: NFKC, lower case, runs of letters and digits."""
    return _WORDS.findall(unicodedata.normalize("NFKC", text).lower())


def _grams(words: list[str], n: int) -> list[str]:
    return [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]


def _hashes(grams: list[str]) -> np.ndarray:
    # Python's str hash: fast and well mixed; salted per process, which is fine for an index built in the process.
    return np.fromiter((hash(g) for g in grams), dtype=np.int64, count=len(grams))


@dataclass
class IndexStats:
    items: int = 0
    ngrams: int = 0
    short_items: int = 0  # matched whole (fewer than n words)
    skipped_items: int = 0  # fewer than MIN_SHORT_WORDS words: not indexed
    hits_by_benchmark: Counter = field(default_factory=Counter)


class ContaminationIndex:
    """The n-grams of a set of benchmark items; ``check(record)`` keeps a record or names the item it overlaps."""

    def __init__(self, items: Iterable[BenchmarkItem], n: int = 13):
        if n < 1:
            raise ValueError("n must be at least 1")
        self.n = n
        self.items: list[BenchmarkItem] = []
        self.stats = IndexStats()
        keys: list[np.ndarray] = []
        owners: list[np.ndarray] = []
        self._lengths: set[int] = {n}
        for item in items:
            words = normal_words(item.text)
            if len(words) < MIN_SHORT_WORDS:
                self.stats.skipped_items += 1
                continue
            k = min(n, len(words))
            if k < n:
                self.stats.short_items += 1
                self._lengths.add(k)
            h = np.unique(_hashes(_grams(words, k)))
            keys.append(h)
            owners.append(np.full(len(h), len(self.items), dtype=np.int32))
            self.items.append(item)
        self.stats.items = len(self.items)
        all_keys = np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64)
        all_owners = np.concatenate(owners) if owners else np.zeros(0, dtype=np.int32)
        order = np.argsort(all_keys, kind="stable")
        self._keys, self._owners = all_keys[order], all_owners[order]
        self.stats.ngrams = len(self._keys)
        self._members = set(self._keys.tolist())  # membership: a set lookup per n-gram is the fast path
        self._grams_of: dict[tuple[int, int], set[str]] = {}  # (item, k) -> its k-grams, built on a first hit

    def _item_grams(self, owner: int, k: int) -> set[str]:
        if (owner, k) not in self._grams_of:
            self._grams_of[owner, k] = set(_grams(normal_words(self.items[owner].text), k))
        return self._grams_of[owner, k]

    def find(self, text: str) -> tuple[BenchmarkItem, str] | None:
        """The first benchmark item sharing an n-gram with ``text``, and that n-gram; None if there is none."""
        words = normal_words(text)
        for k in sorted(self._lengths, reverse=True):
            for gram in _grams(words, k):
                h = hash(gram)
                if h not in self._members:
                    continue
                j = int(np.searchsorted(self._keys, h))
                while j < len(self._keys) and self._keys[j] == h:  # every item with this hash
                    owner = int(self._owners[j])
                    if gram in self._item_grams(owner, k):  # the words, not only the hash
                        return self.items[owner], gram
                    j += 1
        return None

    def check(self, rec: Record) -> Verdict:
        hit = self.find("\n".join((rec.instruction, rec.input, rec.output)))
        if hit is None:
            return None
        item, gram = hit
        self.stats.hits_by_benchmark[item.benchmark] += 1
        return CONTAMINATED, {"benchmark": item.benchmark, "item": item.item_id, "ngram": gram}
