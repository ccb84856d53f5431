"""Evolved records kept per round with and without lineage-aware novelty, replayed on a finished run.

    python bench/evolve_lineage.py RUN_DIR
    python bench/evolve_lineage.py --ideal SEED_FILE [SEED_FILE ...]

Which records an evolve run produces does not depend on the filter (a candidate that passes elimination becomes
its lineage's head whether or not the filter keeps it), so the filter's decisions can be replayed exactly from the
run's files: every candidate that reached the filter chain (``evolve/kept.jsonl`` plus the chain's rejections in
``evolve/rejected.jsonl``), round by round in pool order, against the seed tasks and the records kept in earlier
rounds, once with ``filter.lineage_aware = false`` (each child compared with its own parent, the old rule) and
once with ``true``. Prints kept per round and the rejection reasons for both.

``--ideal`` measures the rule on ideal in-depth rewrites instead: every seed task's instruction with 15 words
added (what the evolve templates ask for), as round 1, and that again as round 2, filtered against the seeds.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config import RunConfig  # noqa: E402
from pipeline.filters.chain import filter_records  # noqa: E402
from pipeline.io.readers import load_seeds  # noqa: E402
from pipeline.records import Record  # noqa: E402
from pipeline.runs.stages import build_checks  # noqa: E402


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def main(run_dir: Path) -> None:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    cfg = RunConfig.model_validate(manifest["config"])
    seeds = load_seeds([cfg.resolve_path(p) for p in cfg.seed_files])
    order = {s.id: k for k, s in enumerate(seeds)}
    cands = [Record.from_dict(r) for r in rows(run_dir / "evolve" / "kept.jsonl")]
    cands += [Record.from_dict(r) for r in rows(run_dir / "evolve" / "rejected.jsonl") if r.get("stage") == "filter"]
    rounds = sorted({r.round for r in cands})
    checks = build_checks(cfg)
    print(f"{run_dir}: {len(cands)} candidates reached the filter chain, rounds {rounds}")
    for aware in (False, True):
        fcfg = cfg.filter.model_copy(update={"lineage_aware": aware})
        reference = list(seeds)
        kept_by_round, reasons = {}, Counter()
        for rnd in rounds:
            batch = sorted((r for r in cands if r.round == rnd), key=lambda r: order.get(r.root_id, 1 << 30))
            res = filter_records(batch, fcfg, reference=reference, checks=checks)
            reference.extend(res.kept)
            kept_by_round[rnd] = f"{len(res.kept)}/{len(batch)}"
            reasons.update(r.reason for r in res.rejected)
        print(f"lineage_aware={str(aware).lower():5}  kept per round {kept_by_round}  rejected {dict(reasons)}")


def ideal(seed_files: list[str], added: int = 15) -> None:
    import random
    import re
    from pipeline.config import FilterConfig
    seeds = load_seeds([Path(f) for f in seed_files])
    firsts = {s.task_id: s for s in seeds}
    # Each rewrite adds its own words (drawn from the seeds' outputs), as real deepenings add different
    # constraints: one shared suffix would make every lineage a near copy of every other.
    vocab = sorted({w for s in seeds for w in re.findall(r"[a-z]{4,}", s.output.lower())})
    rng = random.Random(0)
    print(f"{len(firsts)} seed tasks; each round adds {added} words to the parent instruction "
          f"(from {len(vocab)} distinct words)")
    for aware in (False, True):
        rng.seed(0)
        fcfg = FilterConfig(lineage_aware=aware)
        reference, parents, kept_by_round = list(seeds), list(firsts.values()), {}
        for rnd in (1, 2):
            kids = [Record(id=f"{p.root_id or p.id}-r{rnd}", task_id=f"{p.root_id or p.id}-r{rnd}",
                           instruction=f"{p.instruction.rstrip('.')}, {' '.join(rng.sample(vocab, added))}.",
                           input=p.input, output=f"A fresh answer number {k} for this deeper task, rnd {rnd}.",
                           source="evolve", parent_id=p.id, root_id=p.root_id or p.id, round=rnd)
                    for k, p in enumerate(parents)]
            res = filter_records(kids, fcfg, reference=reference)
            reference.extend(res.kept)
            kept_by_round[rnd] = f"{len(res.kept)}/{len(kids)}"
            parents = kids  # the head moves on whether or not the filter kept it
        print(f"lineage_aware={str(aware).lower():5}  kept per round {kept_by_round}")


if __name__ == "__main__":
    if sys.argv[1] == "--ideal":
        ideal(sys.argv[2:])
    else:
        main(Path(sys.argv[1]))
