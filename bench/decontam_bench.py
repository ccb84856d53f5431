"""Decontamination speed: 100K records against 10K benchmark items (13-grams), our hashed index
(``pipeline.filters.decontaminate``) against the plain way (a Python set of n-gram strings), in the same run.

  python bench/decontam_bench.py [--records 100000] [--items 10000] [--planted 0.01]

(The plain set cannot say which item matched; ours confirms every hash hit on the words and names the item.)
Text is random words from a 20K-word vocabulary (items about 120 words, records about 90); ``--planted`` of the
records carry a 13-word run of an item. Prints build and check seconds, memory of the index, rows found, ratio.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.filters.decontaminate import BenchmarkItem, ContaminationIndex, normal_words  # noqa: E402
from pipeline.records import Record  # noqa: E402


def data(a):
    rng = random.Random(0)
    vocab = [f"{rng.choice('bcdfghklmnprst')}{rng.choice('aeiou')}{i}" for i in range(20000)]
    items = [BenchmarkItem("bench", str(i), " ".join(rng.choices(vocab, k=rng.randint(60, 180))))
             for i in range(a.items)]
    records, planted = [], set()
    for r in range(a.records):
        words = rng.choices(vocab, k=rng.randint(40, 140))
        if rng.random() < a.planted:
            w = items[rng.randrange(a.items)].text.split()
            s = rng.randrange(len(w) - 13)
            at = rng.randrange(len(words))
            words[at:at] = w[s:s + 13]
            planted.add(r)
        k = len(words) // 3
        records.append(Record(id=str(r), instruction=" ".join(words[:k]), input="", output=" ".join(words[k:])))
    return items, records, planted


def ours(items, records, n):
    t0 = time.perf_counter()
    index = ContaminationIndex(items, n)
    t1 = time.perf_counter()
    found = {i for i, r in enumerate(records) if index.check(r) is not None}
    return t1 - t0, time.perf_counter() - t1, found


def plain(items, records, n):
    t0 = time.perf_counter()
    grams = set()
    for it in items:
        w = normal_words(it.text)
        grams.update(" ".join(w[i:i + n]) for i in range(len(w) - n + 1))
    t1 = time.perf_counter()
    found = set()
    for i, r in enumerate(records):
        w = normal_words("\n".join((r.instruction, r.input, r.output)))
        if any(" ".join(w[j:j + n]) in grams for j in range(len(w) - n + 1)):
            found.add(i)
    return t1 - t0, time.perf_counter() - t1, found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--planted", type=float, default=0.01)
    p.add_argument("-n", type=int, default=13)
    a = p.parse_args()
    items, records, planted = data(a)
    print(f"# {a.records} records, {a.items} items, {len(planted)} planted, n={a.n}")
    results = {}
    for name, fn in (("ours", ours), ("plain set", plain)):
        build, check, found = fn(items, records, a.n)  # timed without tracing
        tracemalloc.start()
        fn(items, records[: len(records) // 10], a.n)  # the index's memory (and a tenth of the checks)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        results[name] = build + check
        print(f"{name:10s} build {build:6.2f} s  check {check:6.2f} s  peak traced {peak:7.1f} MiB  "
              f"found {len(found)} (planted found {len(found & planted)}/{len(planted)}, others {len(found - planted)})")
    print(f"ratio plain/ours total time: {results['plain set'] / results['ours']:.2f}x")


if __name__ == "__main__":
    main()
