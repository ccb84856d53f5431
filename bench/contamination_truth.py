"""Check a run's decontamination against a brute-force scan: was every contaminated record found, and nothing else?

    python bench/contamination_truth.py RUN_DIR

Reads the run's config (its [decontaminate] benchmarks) and every record that reached the filter chain (the
generating stages' kept records, plus the ones the chain rejected in the evolve stage), and decides contamination
independently of ``filters/decontaminate.py``: plain Python sets of normalised word n-grams per benchmark item, an
item shorter than n words matched as a contiguous run. Prints the truth, what the run did with each contaminated
record, and any record rejected as ``contaminated`` that the scan does not confirm.
"""
from __future__ import annotations

import json
import re
import sys
import unicodedata
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config import RunConfig  # noqa: E402
from pipeline.io.benchmarks import load_benchmarks  # noqa: E402


def words(text: str) -> list[str]:
    return re.findall(r"\w+", unicodedata.normalize("NFKC", text).lower())


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def main(run_dir: Path) -> int:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    cfg = RunConfig.model_validate(manifest["config"])
    n = cfg.decontaminate.ngram
    items = load_benchmarks(cfg.decontaminate, cfg.resolve_path)
    long_grams: dict[tuple, tuple[str, str]] = {}
    short: list[tuple[list[str], tuple[str, str]]] = []
    for it in items:
        w = words(it.text)
        if len(w) >= n:
            for i in range(len(w) - n + 1):
                long_grams.setdefault(tuple(w[i:i + n]), (it.benchmark, it.item_id))
        elif len(w) >= 6:
            short.append((w, (it.benchmark, it.item_id)))
    candidates = [r for s in ("bootstrap", "evolve") for r in rows(run_dir / s / "kept.jsonl")]
    candidates += [r for r in rows(run_dir / "evolve" / "rejected.jsonl") if r.get("stage") == "filter"]
    fate: dict[str, str] = {r["id"]: "kept" for s in ("filter",) for r in rows(run_dir / s / "kept.jsonl")}
    found: dict[str, dict] = {}
    for s in ("evolve", "filter"):
        for r in rows(run_dir / s / "rejected.jsonl"):
            if r.get("stage") == "filter":
                fate[r["id"]] = r["reason"]
                if r["reason"] == "contaminated":
                    found[r["id"]] = r["details"]
    truth: dict[str, tuple[str, str]] = {}
    for r in candidates:
        w = words("\n".join((r["instruction"], r.get("input", ""), r.get("output", ""))))
        hit = next((long_grams[tuple(w[i:i + n])] for i in range(len(w) - n + 1) if tuple(w[i:i + n]) in long_grams),
                   None)
        if hit is None:
            for sw, owner in short:
                k = len(sw)
                if any(w[i:i + k] == sw for i in range(len(w) - k + 1)):
                    hit = owner
                    break
        if hit is not None:
            truth[r["id"]] = hit
    outcome = Counter(fate.get(rid, "?") for rid in truth)
    by_bench = Counter(b for b, _ in truth.values())
    false_pos = sorted(set(found) - set(truth))
    print(f"records that reached the filter chain: {len(candidates)}")
    print(f"contaminated by the brute-force scan: {len(truth)}  by benchmark: {dict(by_bench)}")
    print(f"what the run did with them: {dict(outcome)}")
    print(f"rejected as contaminated by the run: {len(found)}  not confirmed by the scan: {len(false_pos)}")
    missed = [rid for rid in truth if fate.get(rid) == "kept"]
    print(f"contaminated records kept: {len(missed)} {missed[:5]}")
    return 0 if not missed and not false_pos else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
