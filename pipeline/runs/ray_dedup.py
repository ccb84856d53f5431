"""ROUGE-L novelty dedup on Ray Data, for pools too big for one process (issue 18).

``ray_dedup(texts, ids, threshold=..., reference=..., num_perm=..., rows_per_band=..., seed=...)`` returns a
``novelty.DedupResult`` like ``novelty.dedup``. The parts are ``filters/sharded.py``'s pure functions (see its
docstring for why exact mode makes exactly ``novelty.dedup``'s decisions and duplicate matches):

    from_items(position, id, text)                                     references first, then the texts
    [exact mode, frequency order: map_batches -> partial element counts -> summed by the driver -> the table]
    -> map_batches: band keys, one row (key, key % buckets, position, tokens) per key
    -> groupby(key % buckets).map_groups: split by key, candidate pairs within each key (only the lengths that
       allow F > threshold)
    -> sort(pair) -> map_batches(unique): each pair once (a repeat left by a block split would only be scored
       twice: the in-order pass does not care). Not ``groupby(pair).count()``: with the sort shuffle Ray
       aggregates group by group, 284 s for 2.5M pairs on 2 busy cores, against 3.6 s for sort + unique.
    -> map_batches: exact ROUGE-L of each pair (the texts are one pyarrow array in the object store)
    -> the pairs above the threshold, to the driver -> sharded.keep_in_order (walks the verified pairs only)

``num_perm=None`` (default) is exact mode (prefix keys: every pair with F > threshold is a candidate); an int
``num_perm`` with ``rows_per_band`` is MinHash banding, whose recall ``bench/ray_dedup_bench.py`` measures.
Ray is imported inside the functions; it is the optional extra ``ray`` (``pip install -e '.[ray]'``).

What it costs: unlike the sequential filter, which scores a text against the kept pool only, this scores every
candidate pair, duplicates among themselves included (on the benchmark's 20,000 records, 2.5M candidate pairs and
250K above the threshold, against 32K pairs scored by ``novelty.dedup``). On 2 busy cores ``novelty.dedup`` takes
4.5 s and ``ray_dedup`` about 19 s in either mode, with the same decisions in exact mode: Ray only pays off with
more cores or machines than one process can use, or pools whose index does not fit in one process.

With ``ray_dedup`` called while Ray is not initialised, it starts a loopback-only local cluster
(``pipeline/ray_cluster.py``), and shuts it down and removes its folder at the end.
"""
from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from contextlib import ExitStack
from typing import Any

import numpy as np

from ..filters import sharded
from ..filters.novelty import DedupResult
from ..ray_cluster import ray_session

_ORDER_CACHE: dict[str, dict[int, int]] = {}  # per worker process: the count table, by object id


# -- the functions the Ray workers run (module level, so they pickle by reference) ---------------------------------
def _tok(settings: dict):
    return sharded._tokenizer(settings["use_stemmer"], settings["unicode"])


def _element_counts(batch: dict, settings: dict) -> dict:
    """How many texts of the batch hold each numbered element (by hash): partial counts, summed by the driver."""
    tok = _tok(settings)
    hashes = np.fromiter((h for text in batch["text"].tolist() for h, _, _ in sharded.elements(tok.tokenize(text))),
                         dtype=np.uint64)
    h, c = np.unique(hashes, return_counts=True)  # a text holds each element once (numbered)
    return {"h": h.view(np.int64), "count": c.astype(np.int64)}


def _order_table(order_box: list | None) -> dict[int, int] | None:
    if not order_box:
        return None
    import ray

    ref = order_box[0]
    key = ref.hex()
    table = _ORDER_CACHE.get(key)
    if table is None:
        hashes, counts = ray.get(ref)
        _ORDER_CACHE.clear()
        table = _ORDER_CACHE[key] = dict(zip(hashes.tolist(), counts.tolist()))
    return table


def _key_rows(batch: dict, settings: dict, order_box: list | None) -> dict:
    """One row (key, bucket, pos, n) per band key of each text (n: its token count; bucket: the key modulo
    ``settings["buckets"]``, what the shuffle groups by)."""
    tok = _tok(settings)
    order = _order_table(order_box)
    keys: list[int] = []
    pos: list[int] = []
    lens: list[int] = []
    for p, text in zip(batch["pos"].tolist(), batch["text"].tolist()):
        tokens = tok.tokenize(text)
        ks = sharded.band_keys_of_tokens(tokens, settings["num_perm"], settings["rows_per_band"],
                                         settings["seed"], threshold=settings["threshold"], order=order)
        keys += ks
        pos += [p] * len(ks)
        lens += [len(tokens)] * len(ks)
    k = np.asarray(keys, dtype=np.uint64)
    return {"key": k.view(np.int64),  # int64: Ray's sort shuffle cannot sort uint64 columns
            "bucket": (k % np.uint64(settings["buckets"])).astype(np.int64),
            "pos": np.asarray(pos, dtype=np.int64), "n": np.asarray(lens, dtype=np.int64)}


def _bucket_pair_rows(group: dict, threshold: float, n_total: int) -> dict:
    """The candidate pairs of one group (all rows of the keys of one bucket: split by key inside), as one int64
    per pair (``i * n_total + j``, i < j), each once per group."""
    i, j = sharded.grouped_pairs(group["key"], group["pos"], group["n"], threshold)
    return {"pair": i * n_total + j}


def _verify_rows(batch: dict, texts_box: list, settings: dict, n_total: int) -> dict:
    """Exact ROUGE-L of each pair of the batch; the pairs above the floor as (i, j, score)."""
    import ray

    texts = ray.get(texts_box[0])  # a pyarrow string array (zero-copy from the object store)
    pair = batch["pair"].astype(np.int64)
    i, j = pair // n_total, pair % n_total
    wanted = np.unique(np.concatenate((i, j)))
    lookup = dict(zip(wanted.tolist(), texts.take(wanted).to_pylist()))
    vi, vj, vs = sharded.verify_arrays(i, j, lookup.__getitem__, settings["threshold"],
                                       use_stemmer=settings["use_stemmer"], unicode=settings["unicode"],
                                       min_score=settings["min_score"])
    return {"i": vi, "j": vj, "score": vs}


def _unique_pairs(batch: dict) -> dict:
    return {"pair": np.unique(batch["pair"])}


# -- the driver ----------------------------------------------------------------------------------------------------
def ray_dedup(texts: Sequence[str], ids: Sequence[str] | None = None, *, threshold: float = 0.7,
              reference: Sequence[tuple[str, str]] = (), use_stemmer: bool = False, unicode: bool = False,
              num_perm: int | None = None, rows_per_band: int = 5, seed: int = 1, frequency_order: bool = True,
              excludes: Sequence[Collection[str] | None] | None = None, min_score: float | None = None,
              num_blocks: int | None = None, num_partitions: int | None = None, verify_batch_size: int = 1 << 18,
              shuffle_strategy: str | None = "sort_shuffle_pull_based", key_buckets: int | None = None,
              num_cpus: int = 2) -> DedupResult:
    """Deduplicate ``texts`` in order against ``reference`` (id, text) and the earlier non-duplicates on Ray
    Data (see the module docstring); the same result type as ``novelty.dedup``. ``num_perm=None``: exact mode;
    an int: MinHash with ``num_perm // rows_per_band`` bands. ``num_blocks``: input blocks (default about one per
    5,000 texts, at least 2); ``num_partitions``: partitions of the groupby shuffle (default: ``num_blocks``; Ray's
    own default, 200, costs minutes of task overhead on small clusters). ``shuffle_strategy``: Ray Data's
    ``DataContext.shuffle_strategy`` for this call (None: Ray's default, the actor-based hash shuffle; measured on
    2 busy cores a groupby took about 9 s with it and 0.3 s with the task-based sort shuffle). ``key_buckets``:
    the band keys are grouped by ``key % key_buckets`` (default: one bucket per 500 texts, at least 16), and each
    group is split by exact key inside (``sharded.grouped_pairs``): the same pairs as one group per key, without
    Ray's per-group cost (about 0.2 ms a group, most keys being singletons). ``num_cpus`` only applies when this
    call starts the cluster itself."""
    import pyarrow as pa
    import ray
    import ray.data

    ids = list(ids) if ids is not None else [str(k) for k in range(len(texts))]
    if len(ids) != len(texts):
        raise ValueError("ids and texts differ in length")
    t0 = time.perf_counter()
    if not texts:
        return DedupResult([], [], {"texts": 0, "reference": len(reference), "seconds": 0.0})
    cluster = ExitStack()
    cluster.enter_context(ray_session(num_cpus=num_cpus))
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.print_on_execution_start, ctx.shuffle_strategy)
    ctx.enable_progress_bars, ctx.print_on_execution_start = False, False
    try:
        if shuffle_strategy is not None:
            from ray.data.context import ShuffleStrategy

            ctx.shuffle_strategy = ShuffleStrategy(shuffle_strategy)
        all_ids = [r[0] for r in reference] + ids
        all_texts = [r[1] for r in reference] + list(texts)
        n_total = len(all_texts)
        settings = {"threshold": threshold, "use_stemmer": use_stemmer, "unicode": unicode, "num_perm": num_perm,
                    "rows_per_band": rows_per_band, "seed": seed, "min_score": min_score,
                    "buckets": key_buckets or max(16, n_total // 500)}
        blocks = num_blocks or max(2, min(256, n_total // 5000 + 1))
        parts = num_partitions or blocks
        items = [{"pos": p, "id": i, "text": t} for p, (i, t) in enumerate(zip(all_ids, all_texts))]
        ds = ray.data.from_items(items, override_num_blocks=blocks)
        stats: dict[str, Any] = {"texts": len(texts), "reference": len(reference), "blocks": blocks,
                                 "mode": "exact" if num_perm is None else f"minhash {num_perm}x{rows_per_band}"}

        order_box = None
        if num_perm is None and frequency_order:
            t1 = time.perf_counter()
            counts = ds.map_batches(_element_counts, fn_kwargs={"settings": settings}, batch_size=8192,
                                    batch_format="numpy")
            hs, cs = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
            for batch in counts.iter_batches(batch_format="numpy", batch_size=None):
                hs.append(batch["h"])
                cs.append(batch["count"])
            h, inverse = np.unique(np.concatenate(hs), return_inverse=True)  # the partial counts, summed
            c = np.bincount(inverse, weights=np.concatenate(cs), minlength=len(h)).astype(np.int64)
            keep = c >= 2  # an element in one text makes no pair: leave it out of the table (it counts 0)
            table = (h[keep].view(np.uint64), c[keep])
            order_box = [ray.put(table)]
            stats["order_table"] = len(table[0])
            stats["order_seconds"] = time.perf_counter() - t1

        t1 = time.perf_counter()
        pairs = (ds.map_batches(_key_rows, fn_kwargs={"settings": settings, "order_box": order_box},
                                batch_format="numpy")
                 .groupby("bucket", num_partitions=parts)
                 .map_groups(_bucket_pair_rows, fn_kwargs={"threshold": threshold, "n_total": n_total},
                             batch_format="numpy")
                 .sort("pair")  # range-partitioned: equal pairs meet in one block, where np.unique drops repeats
                 .map_batches(_unique_pairs, batch_size=None, batch_format="numpy")
                 .materialize())
        stats["candidate_pairs"] = pairs.count()
        stats["candidate_seconds"] = time.perf_counter() - t1

        t1 = time.perf_counter()
        texts_box = [ray.put(pa.array(all_texts, type=pa.large_string()))]
        verified = pairs.map_batches(_verify_rows, batch_size=verify_batch_size, batch_format="numpy",
                                     fn_kwargs={"texts_box": texts_box, "settings": settings, "n_total": n_total})
        vi, vj, vs = [], [], []
        for batch in verified.iter_batches(batch_format="numpy", batch_size=None):
            vi.append(batch["i"])
            vj.append(batch["j"])
            vs.append(batch["score"])
        stats["verify_seconds"] = time.perf_counter() - t1

        t1 = time.perf_counter()
        i = np.concatenate(vi).tolist() if vi else []
        j = np.concatenate(vj).tolist() if vj else []
        s = np.concatenate(vs).tolist() if vs else []
        res = sharded.keep_in_order(len(texts), zip(i, j, s), threshold=threshold, reference=reference, ids=ids,
                                    texts=texts, excludes=excludes)
        stats["keep_seconds"] = time.perf_counter() - t1
        stats.update(res.stats)
        stats["seconds"] = time.perf_counter() - t0
        res.stats = stats
        return res
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start, ctx.shuffle_strategy = saved
        cluster.close()
