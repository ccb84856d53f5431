"""Plant contaminated rows into a finished run's records and check the filter chain finds every one of them.

    python bench/plant_contamination.py RUN_DIR [--per-benchmark 20] [--seed 0]

Takes every record of RUN_DIR that reached the filter chain, adds for each benchmark of the run's
[decontaminate] section ``--per-benchmark`` planted rows (a random run of n words of a random item, changed in
case and punctuation, put in the input or the output between ordinary words) and as many near
misses (a run of n - 1 words: must NOT be flagged), then runs the chain (``filter_records`` with the run's filter
config, seeds and checks). Prints planted found, near misses flagged, and the run's own records flagged.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config import RunConfig  # noqa: E402
from pipeline.filters.chain import filter_records  # noqa: E402
from pipeline.filters.decontaminate import normal_words  # noqa: E402
from pipeline.io.benchmarks import load_benchmarks  # noqa: E402
from pipeline.io.readers import load_seeds  # noqa: E402
from pipeline.records import Record  # noqa: E402
from pipeline.runs.stages import build_checks  # noqa: E402

FILLER = ("please read this carefully and then answer the question that follows in plain words for a reader "
          "who is new to the topic").split()


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def noisy(words: list[str], rng: random.Random) -> str:
    out = [w.upper() if rng.random() < 0.3 else w.capitalize() if rng.random() < 0.3 else w for w in words]
    return " ".join(w + (rng.choice([",", ";", " -", "!"]) if rng.random() < 0.2 else "") for w in out)


def plant(item_words: list[str], n: int, rng: random.Random, rid: str, length: int) -> Record:
    start = rng.randrange(0, len(item_words) - length + 1)
    piece = noisy(item_words[start:start + length], rng)
    text = f"{' '.join(FILLER[:6])} {piece} {' '.join(FILLER[6:12])}"
    where = rng.choice(["input", "output"])  # an instruction with a blacklisted word would go first
    fields = {"instruction": "Answer the following question clearly.", "input": "", "output": "An answer."}
    fields[where] = text
    return Record(id=rid, task_id=rid, source="planted", **fields)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--per-benchmark", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    manifest = json.loads((args.run_dir / "manifest.json").read_text())
    cfg = RunConfig.model_validate(manifest["config"])
    n = cfg.decontaminate.ngram
    rng = random.Random(args.seed)
    items = [i for i in load_benchmarks(cfg.decontaminate, cfg.resolve_path) if len(normal_words(i.text)) > n]
    by_bench: dict[str, list] = {}
    for it in items:
        by_bench.setdefault(it.benchmark, []).append(it)
    data = [Record.from_dict(r) for s in ("bootstrap", "evolve") for r in rows(args.run_dir / s / "kept.jsonl")]
    data += [Record.from_dict(r) for r in rows(args.run_dir / "evolve" / "rejected.jsonl") if r.get("stage") == "filter"]
    planted, misses = [], []
    for bench, its in sorted(by_bench.items()):
        for k in range(args.per_benchmark):
            it = rng.choice(its)
            w = normal_words(it.text)
            planted.append(plant(w, n, rng, f"planted-{bench}-{k}", n))
            misses.append(plant(w, n, rng, f"miss-{bench}-{k}", n - 1))
    mixed = data + planted + misses
    rng.shuffle(mixed)
    checks = build_checks(cfg)
    t0 = time.perf_counter()
    res = filter_records(mixed, cfg.filter, reference=load_seeds([cfg.resolve_path(p) for p in cfg.seed_files]),
                         checks=checks)
    wall = time.perf_counter() - t0
    flagged = {r.record.id: r.details for r in res.rejected if r.reason == "contaminated"}
    found = [p.id for p in planted if p.id in flagged]
    print(f"{len(data)} run records + {len(planted)} planted + {len(misses)} near misses ({n - 1} words), "
          f"benchmarks {', '.join(f'{b} ({len(v)} items)' for b, v in sorted(by_bench.items()))}; chain {wall:.2f} s")
    print(f"planted found: {len(found)}/{len(planted)}  by benchmark: "
          f"{dict(Counter(flagged[i]['benchmark'] for i in found))}")
    print(f"near misses flagged: {sum(m.id in flagged for m in misses)}/{len(misses)}")
    print(f"run records flagged: {sum(r.id in flagged for r in data)}/{len(data)}")
    wrong = [i for i in found if not i.startswith(f"planted-{flagged[i]['benchmark']}-")]
    print(f"planted rows attributed to the wrong benchmark: {len(wrong)}")


if __name__ == "__main__":
    main()
