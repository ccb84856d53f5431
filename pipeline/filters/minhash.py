"""MinHash LSH candidate generation for pools too large for the exact prefix index.

Each text is the multiset of its ROUGE tokens, made a set by numbering repeated tokens ("the#0", "the#1", ...):
the multiset overlap of two texts bounds their LCS, so a ROUGE-L duplicate (F > 0.7) has multiset Jaccard above
0.538. LSH proposes candidates; the exact ROUGE-L computation decides. A pair that LSH does not propose is never
scored, so this path can miss duplicates (its recall is measured by ``bench/filter_bench.py``); it never rejects a
non-duplicate.

Signatures come from datasketch (``MinHash`` with its default ``affine32`` permutations; ``MinHash.generator`` in
bulk). The element ids that ``NoveltyIndex`` gives each (token, occurrence) pair are fed in as their own 32-bit
hash values (datasketch mixes every input with the MurmurHash3 finalizer before permuting), which saves hashing
strings. Banding parameters (b bands of r rows) come from datasketch's ``MinHashLSH`` optimiser for the configured
Jaccard threshold.

Defaults (``FilterConfig``): 256 permutations at Jaccard threshold 0.45, for which the optimiser picks 47 bands of
5 rows; on the benchmark stream that keeps about 99.9% of the exact filter's rejections while proposing about
0.3% of the pool per query (mostly texts sharing common words), which ``NoveltyIndex`` then thins with exact,
vectorised bounds (length, a count sketch, the multiset overlap) before any LCS runs.

Two band indexes:

* ``"datasketch"``: ``datasketch.MinHashLSH`` itself (bulk loading through an insertion session). Measured on
  this machine it holds about 11 KB per indexed text at 32 bands (a dict of sets per band), so about 11 GB at 1M.
* ``"compact"`` (default): the same bands in numpy. Each band value is hashed to 64 bits; keys of recent inserts
  sit in a dict, older ones in a few sorted uint64 arrays merged like an LSM tree (linear merges, O(log n) runs),
  each with a radix directory on the top key bits so a lookup is a few parallel gathers: about 13 bytes per
  (band, text), about 600 MB for 1M texts at 47 bands. A 64-bit collision only adds a candidate that the exact
  check then discards.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import repeat

import numpy as np
from datasketch import MinHash, MinHashLSH


def _identity(x: int) -> int:
    return x


_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _fmix64(k: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        k = k ^ (k >> np.uint64(33))
        k = k * np.uint64(0xFF51AFD7ED558CCD)
        k = k ^ (k >> np.uint64(33))
        k = k * np.uint64(0xC4CEB9FE1A85EC53)
        return k ^ (k >> np.uint64(33))


class MinHasher:
    """datasketch MinHash signatures (uint32 arrays) of element-id sets."""

    def __init__(self, num_perm: int = 128, seed: int = 1):
        self.num_perm, self.seed = num_perm, seed
        self._work = MinHash(num_perm=num_perm, seed=seed, hashfunc=_identity)

    def signature(self, elements: Sequence[int]) -> np.ndarray:
        """One signature, reusing one sketch: ``clear`` and ``update_batch`` each assign a fresh array, so the
        returned array is never modified afterwards."""
        m = self._work
        m.clear()
        m.update_batch(elements)
        return m.hashvalues

    def signatures(self, element_lists: Iterable[Sequence[int]]) -> Iterable[np.ndarray]:
        """Bulk signatures, lazily (datasketch's ``MinHash.generator`` reuses one initialised sketch)."""
        for m in MinHash.generator(element_lists, num_perm=self.num_perm, seed=self.seed, hashfunc=_identity):
            yield m.hashvalues


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) chosen by datasketch's MinHashLSH optimiser for a Jaccard threshold."""
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


def _merge_sorted(k1: np.ndarray, i1: np.ndarray, k2: np.ndarray, i2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge two key-sorted runs in linear time (the second run's entries go after equal keys of the first)."""
    n = len(k1) + len(k2)
    pos2 = k1.searchsorted(k2, side="right") + np.arange(len(k2))
    from1 = np.ones(n, dtype=bool)
    from1[pos2] = False
    keys = np.empty(n, dtype=k1.dtype)
    items = np.empty(n, dtype=i1.dtype)
    keys[pos2], items[pos2] = k2, i2
    keys[from1], items[from1] = k1, i1
    return keys, items


class _Run:
    """Sorted band keys with their items, plus a radix directory on the keys' top bits (the keys are hashed, so
    the buckets are even): a lookup is a few parallel gathers instead of a binary search per key."""

    __slots__ = ("keys", "items", "shift", "off")

    def __init__(self, keys: np.ndarray, items: np.ndarray):
        self.keys, self.items = keys, items
        bits = max(1, len(keys).bit_length() - 2)  # two to four keys per bucket
        self.shift = np.uint64(64 - bits)
        counts = np.bincount((keys >> self.shift).astype(np.intp), minlength=1 << bits)
        self.off = np.zeros((1 << bits) + 1, dtype=np.int32 if len(keys) < 2**31 else np.int64)
        np.cumsum(counts, out=self.off[1:])

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, keys: np.ndarray) -> np.ndarray | None:
        bucket = (keys >> self.shift).astype(np.intp)
        lo = self.off[bucket]
        cnt = self.off[bucket + 1] - lo
        total = int(cnt.sum())
        if not total:
            return None
        ends = np.cumsum(cnt)
        pos = np.arange(total) + np.repeat(lo - (ends - cnt), cnt)
        hit = self.keys[pos] == np.repeat(keys, cnt)
        return self.items[pos[hit]] if hit.any() else None


class CompactBandIndex:
    """LSH band tables in numpy: ``insert(item, signature)``, ``query(signature) -> sorted item indices``."""

    def __init__(self, num_perm: int, bands: int, rows: int, seed: int = 1, buffer_items: int = 16384):
        self.b, self.r = bands, rows
        rng = np.random.RandomState(seed + 7919)
        self._mult = (rng.randint(0, 1 << 62, size=rows, dtype=np.int64).astype(np.uint64) << np.uint64(1)) | 1
        self._salt = rng.randint(0, 1 << 62, size=bands, dtype=np.int64).astype(np.uint64)
        self._buffer_items = buffer_items
        self._buf: dict[int, int | list[int]] = {}
        self._buf_keys: list[np.ndarray] = []
        self._buf_items: list[int] = []
        self._runs: list[_Run] = []  # sorted (keys uint64, items int32), biggest first
        self.size = 0

    def band_keys(self, sig: np.ndarray) -> np.ndarray:
        x = np.asarray(sig[: self.b * self.r], dtype=np.uint64).reshape(self.b, self.r)
        with np.errstate(over="ignore"):
            k = (x * self._mult).sum(axis=1, dtype=np.uint64) ^ self._salt
        return _fmix64(k)

    def band_keys_many(self, sigs: np.ndarray) -> np.ndarray:
        x = np.asarray(sigs[:, : self.b * self.r], dtype=np.uint64).reshape(len(sigs), self.b, self.r)
        with np.errstate(over="ignore"):
            k = (x * self._mult).sum(axis=2, dtype=np.uint64) ^ self._salt
        return _fmix64(k)

    def insert(self, item: int, sig: np.ndarray | None = None, keys: np.ndarray | None = None) -> None:
        keys = self.band_keys(sig) if keys is None else keys
        buf = self._buf
        klist = keys.tolist()
        if not any(map(buf.__contains__, klist)):  # the common case: all bands new in the buffer
            buf.update(zip(klist, repeat(item)))
        else:
            for k in klist:
                v = buf.get(k)
                if v is None:
                    buf[k] = item
                elif type(v) is int:
                    buf[k] = [v, item]
                else:
                    v.append(item)
        self._buf_keys.append(keys)
        self._buf_items.append(item)
        self.size += 1
        if len(self._buf_items) >= self._buffer_items:
            self._flush()

    def _flush(self) -> None:
        if not self._buf_items:
            return
        keys = np.concatenate(self._buf_keys)
        items = np.repeat(np.asarray(self._buf_items, dtype=np.int32), self.b)
        self._buf, self._buf_keys, self._buf_items = {}, [], []
        order = np.argsort(keys, kind="stable")
        keys, items = keys[order], items[order]
        # Merge while the newest run is at least half the size of the one before it (a binary-counter LSM):
        # O(log n) runs, each entry merged O(log n) times, each merge linear.
        while self._runs and len(keys) * 2 >= len(self._runs[-1]):
            older = self._runs.pop()
            keys, items = _merge_sorted(older.keys, older.items, keys, items)
        self._runs.append(_Run(keys, items))

    def query(self, sig: np.ndarray | None = None, keys: np.ndarray | None = None, unique: bool = True
              ) -> np.ndarray:
        """Items sharing at least one band with the query (sorted and unique, or raw with ``unique=False``)."""
        keys = self.band_keys(sig) if keys is None else keys
        found: list = []
        for run in self._runs:
            items = run.lookup(keys)
            if items is not None:
                found.append(items)
        extra: list[int] = []
        for v in [v for v in map(self._buf.get, keys.tolist()) if v is not None]:
            if type(v) is int:
                extra.append(v)
            else:
                extra.extend(v)
        if extra:
            found.append(np.asarray(extra, dtype=np.int32))
        if not found:
            return np.empty(0, dtype=np.int64)
        out = np.concatenate(found).astype(np.int64) if len(found) > 1 else found[0].astype(np.int64)
        return np.unique(out) if unique else out

    def nbytes(self) -> int:
        return sum(r.keys.nbytes + r.items.nbytes + r.off.nbytes for r in self._runs)


class DatasketchBandIndex:
    """The same interface over ``datasketch.MinHashLSH`` (memory-hungry: see the module docstring)."""

    def __init__(self, num_perm: int, bands: int, rows: int, seed: int = 1):
        self.lsh = MinHashLSH(num_perm=num_perm, params=(bands, rows))
        self.num_perm, self.seed = num_perm, seed
        self._perm = MinHash(num_perm=num_perm, seed=seed).permutations
        self.size = 0

    def _mh(self, sig: np.ndarray) -> MinHash:
        return MinHash(seed=self.seed, hashvalues=sig, permutations=self._perm, scheme="affine32")

    def insert(self, item: int, sig: np.ndarray, keys=None) -> None:
        self.lsh.insert(item, self._mh(sig), check_duplication=False)
        self.size += 1

    def insert_many(self, items: Sequence[int], sigs: Iterable[np.ndarray]) -> None:
        with self.lsh.insertion_session() as session:
            for item, sig in zip(items, sigs):
                session.insert(item, self._mh(sig), check_duplication=False)
                self.size += 1

    def query(self, sig: np.ndarray, keys=None, unique: bool = True) -> np.ndarray:
        return np.asarray(sorted(self.lsh.query(self._mh(sig))), dtype=np.int64)
