"""Benchmark of the ROUGE-L novelty filter (issue 3).

    .venv/bin/python bench/filter_bench.py [--quick] [--skip-1m] [--seed N]

What it does, in one run:
  1. Builds a candidate stream: the real seed instructions (ours + the 175 published Self-Instruct seeds) followed
     by synthetic instructions (4-40 words, drawn from word lists and the seed files' vocabulary) with controlled
     near-duplicate edits (word substitutions, insertions, deletions, swaps, case and punctuation changes).
  2. Grows a pool incrementally to 2,000 instructions twice: (a) the reference as Alpaca does it (rouge-score's
     ``_score_lcs`` on pre-tokenized token lists, one process, against the growing pool) and (b) ours
     (``NoveltyIndex``, tokenization included in its time; generating the synthetic stream is never timed);
     checks that every decision, every duplicate's score
     and nearest id are identical, and prints the speed ratio.
  3. Times our incremental path alone growing the pool to 50,000 (exact prefix index, no MinHash).
  4. MinHash recall: 50,000 candidates through the exact filter and through MinHash LSH candidates only;
     recall = duplicates rejected by both / duplicates rejected by the exact filter.
  5. Grows the pool to 1,000,000 with MinHash candidates (in a child process run under ``nice``; its peak RSS is
     read with ``resource.getrusage(RUSAGE_CHILDREN)``).

``--quick`` runs every part at a small size (pool 500, pool 5,000, recall on 5,000, pool 30,000 for the MinHash
part; about a minute on an idle 2-core machine). Times are wall-clock and CPU time (``time.process_time``; the
latter is less sensitive to other load on the machine).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SEED_FILES = [ROOT / "seed_tasks" / "seed_tasks.jsonl",  # ours, and the published ones in ../shared beside the checkout
              ROOT.parent / "shared" / "reference" / "self_instruct_seed_tasks.jsonl"]

# Word lists for the synthetic stream (written for this benchmark).
VERBS = """write explain describe list summarize classify translate generate suggest compare rewrite identify create
design outline give find convert calculate estimate evaluate propose draft compose recommend analyze predict rank
sort extract correct paraphrase simplify expand critique plan name define tell choose decide prepare organize
review check answer solve order group detect label score format shorten improve continue complete""".split()
ADJECTIVES = """short long simple detailed formal casual funny serious polite persuasive clear concise friendly
professional creative original practical healthy cheap quick easy difficult modern classic historical local global
personal technical scientific cultural political economic social emotional rural urban quiet noisy ancient future
digital physical mental green colorful dark bright small large fresh old young famous unusual common rare typical
safe risky honest""".split()
NOUNS = """poem story essay email letter summary list tweet slogan headline recipe plan guide review report speech
song joke riddle question answer argument description explanation outline table chart schedule budget menu
itinerary checklist proposal abstract introduction conclusion paragraph sentence title caption dialogue interview
quiz lesson workout routine habit strategy policy rule law product service app website company team city country
river mountain forest ocean garden kitchen school hospital library museum restaurant hotel airport market""".split()
TOPICS = """climate change renewable energy space travel artificial intelligence remote work public transport
online privacy healthy eating sleep hygiene time management personal finance coffee culture ancient rome
volcanoes honeybees chess openings marathon training urban gardening recycling electric cars social media video
games board games classical music street food tea ceremonies photography birdwatching mountain hiking ocean
plastic vaccines black holes quantum computing medieval castles jazz history fermentation bread baking
meditation minimalism startups cryptocurrency elections voting rights wildfires earthquakes coral reefs desert
ecosystems language learning public speaking job interviews parenting toddlers adopting pets dog training
cat behavior houseplants home repair interior design fashion trends wedding planning""".split()
CLAUSES = [
    "in under {n} words", "for a {adj} audience", "using {adj} language", "in the style of a {noun}",
    "and explain your reasoning", "as a numbered list", "with {n} examples", "without using the word {word}",
    "for a {noun} owner", "that a child could understand", "from the point of view of a {noun}",
    "and give it a {adj} title", "in {n} sentences", "for a {adj} {noun}", "mentioning the {noun} and the {noun}",
]
FUNCTION = "the a an of to and in for on with about that this your my our their".split()


def seed_instructions() -> list[tuple[str, str]]:
    out = []
    for path in SEED_FILES:
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                obj = json.loads(line)
                out.append((f"{path.stem}:{obj['id']}", obj["instruction"].strip()))
    return out


def seed_vocabulary() -> list[str]:
    words: list[str] = []
    for path in SEED_FILES:
        if path.exists():
            words += re.findall(r"[A-Za-z][a-z]+", path.read_text(encoding="utf-8"))
    return words  # with repeats: sampling from it follows the seed files' word frequencies


class Stream:
    """Synthetic instructions with controlled near-duplicate edits (deterministic for a seed)."""

    def __init__(self, seed: int = 0, near_dup_rate: float = 0.3, exact_dup_rate: float = 0.02):
        self.rng = random.Random(seed)
        self.vocab = seed_vocabulary() or NOUNS
        self.near_dup_rate, self.exact_dup_rate = near_dup_rate, exact_dup_rate
        self.history: list[str] = []

    def _fresh(self) -> str:
        r = self.rng
        target = r.randint(4, 40)
        words = [r.choice(VERBS).capitalize()]
        words += [r.choice(("a", "an", "the", "three", "five", "two", "some"))]
        if r.random() < 0.6:
            words.append(r.choice(ADJECTIVES))
        words.append(r.choice(NOUNS))
        if r.random() < 0.8:
            words += [r.choice(("about", "on", "for", "describing", "explaining")), r.choice(TOPICS)]
        while len(words) < target:
            u = r.random()
            if u < 0.35:
                clause = r.choice(CLAUSES).format(n=r.randint(2, 200), adj=r.choice(ADJECTIVES),
                                                  noun=r.choice(NOUNS), word=r.choice(self.vocab).lower())
                words += clause.split()
            elif u < 0.6:
                words += [r.choice(FUNCTION), r.choice(self.vocab).lower()]
            else:
                words.append(r.choice(self.vocab).lower())
        words = words[:target]
        return " ".join(words) + r.choice((".", ".", "?", "", ":"))

    def _edit(self, text: str) -> str:
        r = self.rng
        words = text.split()
        n_edits = r.choice((1, 1, 1, 2, 2, 3, 4)) if len(words) > 6 else 1
        for _ in range(n_edits):
            op = r.random()
            if op < 0.35 and words:  # substitute
                words[r.randrange(len(words))] = r.choice(self.vocab).lower()
            elif op < 0.55:  # insert
                words.insert(r.randint(0, len(words)), r.choice(FUNCTION + ADJECTIVES))
            elif op < 0.75 and len(words) > 2:  # delete
                del words[r.randrange(len(words))]
            elif op < 0.85 and len(words) > 2:  # swap neighbours
                k = r.randrange(len(words) - 1)
                words[k], words[k + 1] = words[k + 1], words[k]
            elif op < 0.93 and words:  # case
                k = r.randrange(len(words))
                words[k] = words[k].upper() if r.random() < 0.5 else words[k].capitalize()
            elif words:  # punctuation
                k = r.randrange(len(words))
                words[k] = words[k] + r.choice((",", ";", "!", " -"))
        return " ".join(words)

    def next(self) -> str:
        r, h = self.rng, self.history
        u = r.random()
        if h and u < self.exact_dup_rate:
            text = r.choice(h)
        elif h and u < self.exact_dup_rate + self.near_dup_rate:
            # Mostly edit a recent item, sometimes any earlier one.
            base = h[-1 - min(int(r.expovariate(1 / 200)), len(h) - 1)] if r.random() < 0.7 else r.choice(h)
            text = self._edit(base)
        else:
            text = self._fresh()
        h.append(text)
        return text


def candidate_stream(seed: int = 0):
    """The real seed instructions, then synthetic ones (with near-duplicates of earlier items, seeds included)."""
    s = Stream(seed)
    for sid, text in seed_instructions():
        s.history.append(text)
        yield sid, text
    k = 0
    while True:
        yield f"syn-{k}", s.next()
        k += 1


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------------------------
def part_reference(pool_target: int, seed: int) -> dict:
    """Reference (Alpaca's loop, rouge-score's _score_lcs, one process) vs ours, to the same pool size."""
    from rouge_score import rouge_scorer

    from pipeline.filters.novelty import NoveltyIndex

    threshold = 0.7
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    # The candidates both sides see: enough of the stream for the reference pool to reach the target.
    stream = candidate_stream(seed)
    cands: list[tuple[str, str]] = []
    tokens: list[list[str]] = []
    ref_decisions: list[tuple] = []
    pool_tokens: list[list[str]] = []
    pool_ids: list[str] = []
    ref_time = ref_cpu = 0.0
    ref_pairs = 0
    while len(pool_tokens) < pool_target:
        cid, text = next(stream)
        toks = scorer._tokenizer.tokenize(text)  # pre-tokenized: not timed
        cands.append((cid, text))
        tokens.append(toks)
        t0, c0 = time.perf_counter(), time.process_time()
        scores = [rouge_scorer._score_lcs(toks, x).fmeasure for x in pool_tokens]
        best = max(scores) if scores else 0.0
        dup = best > threshold
        if not dup:
            pool_tokens.append(toks)
            pool_ids.append(cid)
        ref_time += time.perf_counter() - t0
        ref_cpu += time.process_time() - c0
        ref_pairs += len(scores)
        ref_decisions.append((dup, best if dup else None, pool_ids[scores.index(best)] if dup else None))
    # Ours, the same candidates, tokenization included.
    t0, c0 = time.perf_counter(), time.process_time()
    index = NoveltyIndex(threshold)
    ours = []
    for cid, text in cands:
        dup, m = index.check_and_add(cid, text)
        ours.append((dup, m.score if dup else None, m.nearest_id if dup else None))
    our_time = time.perf_counter() - t0
    our_cpu = time.process_time() - c0
    identical = ours == ref_decisions
    mismatches = sum(a != b for a, b in zip(ours, ref_decisions))
    return {"pool": len(pool_tokens), "candidates": len(cands), "duplicates": sum(d[0] for d in ref_decisions),
            "reference_s": ref_time, "ours_s": our_time, "ratio": ref_time / our_time, "identical": identical,
            "reference_cpu_s": ref_cpu, "ours_cpu_s": our_cpu, "ratio_cpu": ref_cpu / our_cpu,
            "mismatches": mismatches, "pairs_reference": ref_pairs,
            "pairs_scored_ours": index.stats.scored}


def grow(pool_target: int | None, seed: int, n_candidates: int | None = None, progress_every: int = 0,
         **options) -> dict:
    from pipeline.filters.novelty import NoveltyIndex

    index = NoveltyIndex(0.7, **options)
    stream = candidate_stream(seed)
    decisions: list[bool] = []
    elapsed = cpu = 0.0  # the filter's time only: generating the synthetic stream is not counted
    n = 0
    clock, cpu_clock = time.perf_counter, time.process_time
    while (pool_target is None or len(index) < pool_target) and (n_candidates is None or n < n_candidates):
        cid, text = next(stream)
        t0, c0 = clock(), cpu_clock()
        dup, _ = index.check_and_add(cid, text)
        elapsed += clock() - t0
        cpu += cpu_clock() - c0
        decisions.append(dup)
        n += 1
        if progress_every and n % progress_every == 0:
            print(f"    ... {n:>9,} candidates, pool {len(index):>9,}, {elapsed:7.1f} s wall, {cpu:7.1f} s CPU, "
                  f"peak RSS {rss_mb():,.0f} MB", flush=True)
    return {"pool": len(index), "candidates": n, "duplicates": sum(decisions), "seconds": elapsed, "cpu_s": cpu,
            "decisions": decisions, "stats": index.stats.as_dict(),
            "lsh_index_mb": (index._lsh.nbytes() / 2**20) if hasattr(index._lsh, "nbytes") else None}


def part_recall(n: int, seed: int, **mh_options) -> dict:
    exact = grow(None, seed, n_candidates=n)
    mh = grow(None, seed, n_candidates=n, minhash_above=0, **mh_options)
    both = sum(a and b for a, b in zip(exact["decisions"], mh["decisions"]))
    extra = sum(b and not a for a, b in zip(exact["decisions"], mh["decisions"]))
    return {"candidates": n, "exact_rejected": exact["duplicates"], "minhash_rejected": mh["duplicates"],
            "both": both, "recall": both / max(1, exact["duplicates"]), "extra_rejections": extra,
            "exact_s": exact["seconds"], "minhash_s": mh["seconds"]}


def part_1m_child(pool_target: int, seed: int, minhash_above: int | None) -> None:
    """Runs in the child process: grow the pool with the default config's MinHash settings, print JSON."""
    from pipeline.config import FilterConfig

    cfg = FilterConfig()
    if minhash_above is None:
        minhash_above = cfg.minhash_above
    r = grow(pool_target, seed, progress_every=100_000 if pool_target > 200_000 else 10_000,
             minhash_above=minhash_above,
             num_perm=cfg.minhash_num_perm, minhash_threshold=cfg.minhash_threshold,
             minhash_backend=cfg.minhash_backend)
    r.pop("decisions")
    r["minhash_above"] = minhash_above
    r["peak_rss_mb_self"] = rss_mb()
    print("RESULT " + json.dumps(r), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, finishes in well under a minute")
    ap.add_argument("--skip-1m", action="store_true", help="skip the 1M MinHash part")
    ap.add_argument("--only", choices=["reference", "50k", "recall", "1m"], help="run one part")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child-1m", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--minhash-above", type=int, help="pool size where the MinHash part switches from the exact "
                    "index (default: the config default; --quick: 3000)")
    args = ap.parse_args()
    if args.child_1m:
        part_1m_child(args.child_1m, args.seed, args.minhash_above)
        return
    q = args.quick
    sizes = {"reference": 500 if q else 2000, "50k": 5000 if q else 50_000, "recall": 5000 if q else 50_000,
             "1m": 30_000 if q else 1_000_000}
    parts = [args.only] if args.only else ["reference", "50k", "recall", "1m"]
    if args.skip_1m and "1m" in parts:
        parts.remove("1m")
    print(f"filter benchmark{' (quick)' if q else ''}: python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    results: dict = {}
    if "reference" in parts:
        n = sizes["reference"]
        print(f"\n[1] reference (Alpaca loop, rouge-score _score_lcs, 1 process) vs ours, pool grown to {n:,}",
              flush=True)
        r = results["reference"] = part_reference(n, args.seed)
        print(f"    candidates {r['candidates']:,}, duplicates rejected {r['duplicates']:,}, pool {r['pool']:,}")
        print(f"    reference {r['reference_s']:.2f} s wall, {r['reference_cpu_s']:.2f} s CPU "
              f"({r['pairs_reference']:,} pairs scored); ours {r['ours_s']:.3f} s wall, {r['ours_cpu_s']:.3f} s CPU "
              f"({r['pairs_scored_ours']:,} pairs scored, tokenization included)")
        print(f"    decisions, duplicate scores and nearest ids identical: {r['identical']} "
              f"(mismatches: {r['mismatches']})")
        print(f"    SPEED RATIO at pool {r['pool']:,}: {r['ratio']:.0f}x wall-clock, {r['ratio_cpu']:.0f}x CPU time",
              flush=True)
    if "50k" in parts:
        n = sizes["50k"]
        print(f"\n[2] ours alone, incremental, exact prefix index, pool grown to {n:,}", flush=True)
        r = grow(n, args.seed, progress_every=10_000 if not q else 0)
        r.pop("decisions")
        results["50k"] = r
        print(f"    candidates {r['candidates']:,}, duplicates rejected {r['duplicates']:,}, pool {r['pool']:,}")
        print(f"    pairs scored {r['stats']['scored']:,} ({r['stats']['scored'] / r['candidates']:.1f} per candidate)")
        print(f"    TIME to pool {r['pool']:,}: {r['seconds']:.1f} s wall, {r['cpu_s']:.1f} s CPU "
              f"({1e6 * r['seconds'] / r['candidates']:.0f} us per candidate)", flush=True)
    if "recall" in parts:
        n = sizes["recall"]
        from pipeline.config import FilterConfig

        cfg = FilterConfig()
        print(f"\n[3] MinHash recall on {n:,} candidates (num_perm={cfg.minhash_num_perm}, "
              f"LSH threshold={cfg.minhash_threshold}, backend={cfg.minhash_backend}) vs the exact filter",
              flush=True)
        r = results["recall"] = part_recall(n, args.seed, num_perm=cfg.minhash_num_perm,
                                            minhash_threshold=cfg.minhash_threshold,
                                            minhash_backend=cfg.minhash_backend)
        print(f"    exact rejects {r['exact_rejected']:,}; MinHash path rejects {r['minhash_rejected']:,}; "
              f"both {r['both']:,}; MinHash-only rejections {r['extra_rejections']:,}")
        print(f"    (exact {r['exact_s']:.1f} s, MinHash {r['minhash_s']:.1f} s)")
        print(f"    RECALL: {100 * r['recall']:.2f}%", flush=True)
    if "1m" in parts:
        n = sizes["1m"]
        print(f"\n[4] ours alone, incremental with MinHash candidates, pool grown to {n:,} "
              f"(child process under nice)", flush=True)
        t0 = time.perf_counter()
        switch = args.minhash_above if args.minhash_above is not None else (3000 if q else None)
        cmd = ["nice", "-n", "10", sys.executable, __file__, "--child-1m", str(n), "--seed", str(args.seed)]
        if switch is not None:
            cmd += ["--minhash-above", str(switch)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        res = []
        for line in proc.stdout:  # relay the child's progress lines as they come
            if line.startswith("RESULT "):
                res.append(json.loads(line[7:]))
            else:
                print(line, end="", flush=True)
        proc.wait()
        wall = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if proc.returncode or not res:
            print(f"    child failed with exit code {proc.returncode}")
        else:
            r = results["1m"] = {**res[0], "wall_s": wall, "peak_rss_mb": peak}
            s = r["stats"]
            print(f"    candidates {r['candidates']:,}, duplicates rejected {r['duplicates']:,}, pool {r['pool']:,}; "
                  f"exact prefix index up to {r['minhash_above']:,}, MinHash after "
                  f"(LSH band index {r['lsh_index_mb'] or 0:,.0f} MB)")
            print(f"    pairs scored {s['scored']:,}; LSH time {s['lsh_seconds']:.1f} s")
            print(f"    TIME to pool {r['pool']:,}: {r['seconds']:.1f} s wall ({r['seconds'] / 60:.1f} min), "
                  f"{r['cpu_s']:.1f} s CPU; child process wall {wall:.1f} s")
            print(f"    PEAK RSS (child, getrusage): {peak:,.0f} MB", flush=True)
    print("\nsummary:" + (" (quick sizes; the targets are for the full run)" if q else ""))
    if "reference" in results:
        r = results["reference"]
        print(f"  identical decisions at {r['pool']:,}: {r['identical']}; speed ratio {r['ratio']:.0f}x wall, "
              f"{r['ratio_cpu']:.0f}x CPU (target >= 300x)")
    if "50k" in results:
        r = results["50k"]
        print(f"  pool {r['pool']:,} incremental: {r['seconds']:.1f} s wall, {r['cpu_s']:.1f} s CPU (target <= 60 s)")
    if "1m" in results:
        r = results["1m"]
        print(f"  pool {r['pool']:,} with MinHash: {r['seconds'] / 60:.1f} min wall, {r['cpu_s'] / 60:.1f} min CPU "
              f"(target <= 15), peak RSS "
              f"{r['peak_rss_mb'] / 1024:.2f} GB (target <= 4)")
    if "recall" in results:
        print(f"  MinHash recall on {results['recall']['candidates']:,}: {100 * results['recall']['recall']:.2f}% "
              f"(target >= 99%)")


if __name__ == "__main__":
    main()
