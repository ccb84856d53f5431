"""Evolved records kept per round with and without lineage-aware novelty, replayed on a finished run.

    python bench/evolve_lineage.py RUN_DIR

Which records an evolve run produces does not depend on the filter (a candidate that passes elimination becomes
its lineage's head whether or not the filter keeps it), so the filter's decisions can be replayed exactly from the
run's files: every candidate that reached the filter chain (``evolve/kept.jsonl`` plus the chain's rejections in
``evolve/rejected.jsonl``), round by round in pool order, against the seed tasks and the records kept in earlier
rounds, once with ``filter.lineage_aware = false`` (each child compared with its own parent, the old rule) and
once with ``true``. Prints kept per round and the rejection reasons for both.
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


if __name__ == "__main__":
    main(Path(sys.argv[1]))
