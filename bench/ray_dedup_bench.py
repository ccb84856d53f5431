"""Benchmark of the ROUGE-L dedup on Ray Data (issue 18 part 3) against the single-process filter.

    .venv/bin/python bench/ray_dedup_bench.py [--n 20000] [--perms 256] [--rows 5] [--num-cpus 2]

On ``--n`` records (the repo's seed tasks and deterministic variants of them: word drops, swaps, replacements,
insertions, splices; ``tests/filters/test_sharded.variant_records``) it runs, and times:

  1. ``novelty.dedup``, one process (the reference decisions);
  2. ``sharded.sharded_dedup`` in exact mode, one process (the shardable algorithm without Ray);
  3. ``runs.ray_dedup.ray_dedup`` in exact mode on a local Ray cluster (``--num-cpus``, 127.0.0.1), after a
     warm-up call (the cluster's start and the workers' first imports are timed apart);
  4. ``ray_dedup`` with MinHash bands (``--perms`` permutations, ``--rows`` rows per band).

It prints the count of decisions that differ from ``novelty.dedup`` (0 required in exact mode, where duplicates'
nearest ids and scores must match too), the wall time of each and the ratios, and the MinHash recall: of the
pairs scoring above the threshold (all of them: the exact candidates, verified), and of the exact filter's
duplicate decisions. Times are wall clock on whatever else the machine is running (the load average is printed).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--perms", type=int, default=256)
    ap.add_argument("--rows", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--threshold", type=float, default=0.7)
    args = ap.parse_args()

    from pipeline.filters import sharded
    from pipeline.filters.novelty import dedup
    from pipeline.ray_cluster import init_local_ray
    from pipeline.runs.ray_dedup import ray_dedup
    from tests.filters.test_sharded import variant_records

    t = args.threshold
    reference, ids, texts = variant_records(args.n, seed=args.seed)
    print(f"{len(texts)} records from {ROOT / 'seed_tasks' / 'seed_tasks.jsonl'} and variants; threshold {t}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    def differ(res, want) -> tuple[int, int]:
        decisions = sum(a != b for a, b in zip(res.duplicate, want.duplicate))
        matches = sum(1 for k, d in enumerate(want.duplicate) if d and res.duplicate[k] and
                      (res.matches[k].nearest_id, res.matches[k].score) !=
                      (want.matches[k].nearest_id, want.matches[k].score))
        return decisions, matches

    t0 = time.perf_counter()
    want = dedup(texts, ids, threshold=t)
    single = time.perf_counter() - t0
    dups = sum(want.duplicate)
    print(f"novelty.dedup (1 process):           {single:7.2f} s   {dups} duplicates")

    t0 = time.perf_counter()
    pure = sharded.sharded_dedup(texts, ids, threshold=t)
    pure_s = time.perf_counter() - t0
    print(f"sharded_dedup exact (1 process):     {pure_s:7.2f} s   {pure.stats['candidate_pairs']} candidate pairs, "
          f"{pure.stats['verified_pairs']} verified; differing decisions {differ(pure, want)[0]}")

    t0 = time.perf_counter()
    info = init_local_ray(num_cpus=args.num_cpus)
    start_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ray_dedup(texts[:500], ids[:500], threshold=t)
    warm_s = time.perf_counter() - t0
    print(f"Ray start ({args.num_cpus} CPUs, {info['node_ip_address']}): {start_s:.2f} s; warm-up call (500 "
          f"records): {warm_s:.2f} s")

    t0 = time.perf_counter()
    exact = ray_dedup(texts, ids, threshold=t)
    exact_s = time.perf_counter() - t0
    d_dec, d_match = differ(exact, want)
    st = exact.stats
    print(f"ray_dedup exact:                     {exact_s:7.2f} s   ratio to novelty.dedup {exact_s / single:.1f}x; "
          f"differing decisions {d_dec}, differing duplicate matches {d_match}")
    print(f"    stages: order table {st.get('order_seconds', 0):.2f} s, candidates {st['candidate_seconds']:.2f} s "
          f"({st['candidate_pairs']} pairs), verify {st['verify_seconds']:.2f} s ({st['verified_pairs']} above "
          f"{t}), in-order pass {st['keep_seconds']:.2f} s")

    t0 = time.perf_counter()
    mh = ray_dedup(texts, ids, threshold=t, num_perm=args.perms, rows_per_band=args.rows, seed=args.seed)
    mh_s = time.perf_counter() - t0
    d_dec, d_match = differ(mh, want)
    caught = sum(a and b for a, b in zip(mh.duplicate, want.duplicate))
    extra = sum(a and not b for a, b in zip(mh.duplicate, want.duplicate))
    # Pair recall from the pure parts (the Ray run computes the same keys: tests/runs/test_ray_dedup.py).
    tok = sharded._tokenizer(False, False)
    tokens = [tok.tokenize(x) for x in texts]
    lengths = [len(x) for x in tokens]
    order = sharded.element_frequencies(tokens)
    truth = sharded.verify(sharded.candidate_pairs(
        [sharded.band_keys_of_tokens(x, None, threshold=t, order=order) for x in tokens], lengths, t), texts, t)
    cand = sharded.candidate_pairs(
        [sharded.band_keys_of_tokens(x, args.perms, args.rows, args.seed) for x in tokens], lengths, t)
    found = sum(p in cand for p in truth)
    st = mh.stats
    print(f"ray_dedup MinHash {args.perms} perms x {args.rows} rows ({args.perms // args.rows} bands): {mh_s:7.2f} s   "
          f"ratio to novelty.dedup {mh_s / single:.1f}x; {st['candidate_pairs']} candidate pairs")
    print(f"    recall: pairs above {t} {found}/{len(truth)} = {found / max(1, len(truth)):.4f}; duplicate decisions "
          f"{caught}/{dups} = {caught / max(1, dups):.4f}; differing decisions {d_dec} ({dups - caught} missed, "
          f"{extra} kept-by-exact rejected), differing duplicate matches {d_match}")

    import ray

    ray.shutdown()
    import shutil

    shutil.rmtree(info["temp_dir"], ignore_errors=True)


if __name__ == "__main__":
    main()
