"""Run the Evolve stage into a run directory: ``<run>/evolve/kept.jsonl`` and ``<run>/evolve/rejected.jsonl``,
appended (and fsynced) after every round, and the stage's stats in ``manifest.json``.

Each round's candidates that pass elimination go through the filter chain (``evolve.final_filter``) before they
are written, with the input tasks and every evolved record accepted in earlier rounds as the reference pool; this
gives the same decisions as filtering the whole evolved set once at the end (the chain is incremental in file
order), and ``kept.jsonl`` never holds a record the chain would drop. Elimination rejections carry
``stage="evolve"``, filter rejections ``stage="filter"``. A record that passed elimination but not the filter
still became its lineage's new head: the filter decides what enters the dataset, not how lineages evolve.
"""
from __future__ import annotations

import hashlib
import random
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from . import evolve
from .config import RunConfig
from .errors import InputError
from .records import Record
from .runio import StageFiles, read_jsonl
from .teachers import Teacher

if TYPE_CHECKING:  # run.py will import this module; import it lazily to avoid the cycle
    from .run import Run

# progress(stage, done, total, fields), as in pipeline.run.
Progress = Callable[[str, int, int, dict], None]


def _no_progress(stage: str, done: int, total: int, fields: dict) -> None:
    pass


def evolve_inputs(run: "Run", seeds: list[Record]) -> list[Record]:
    """The records ``evolve.source`` names: the seed tasks, or the bootstrap stage's kept records of this run."""
    if run.cfg.evolve.source == "seeds":
        return seeds
    path: Path = run.dir / "bootstrap" / "kept.jsonl"
    return [Record.from_dict(row) for row in read_jsonl(path)] if path.exists() else []


def _usage_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in after.items():
        if isinstance(value, (int, float)):
            out[key] = value - before.get(key, 0)
        elif isinstance(value, dict):
            out[key] = {k: v - before.get(key, {}).get(k, 0) for k, v in value.items()}
    return out


def run_evolve(run: "Run", teacher: Teacher, records: list[Record], progress: Progress = _no_progress,
               reference: list[Record] | None = None) -> dict:
    """Evolve ``records`` (seed tasks or bootstrap kept records) for ``run.cfg.evolve.rounds`` rounds.

    ``reference`` starts the filter chain's novelty pool (default: ``records``, all of them, not only the
    ``max_items`` sample that is evolved); pass seeds + bootstrap records when both end up in one dataset.

    Writes ``<run>/evolve/{kept,rejected}.jsonl`` after each round and records the stage in the manifest
    (``run.record_stage("evolve", ...)``, also when interrupted). Returns the stage stats: per round and per
    operation attempts, passes, pass rate, failures by reason and mean word growth (``evolve.EvolveState.summary``)
    plus the filter chain's counts.
    """
    cfg = run.cfg.evolve
    t0 = time.time()
    rng = random.Random(cfg.seed)
    state = evolve.EvolveState.start(records, cfg.max_items, rng)
    reference = list(records if reference is None else reference)
    files = StageFiles(run.dir, evolve.STAGE)
    usage_before = teacher.usage.as_dict()
    rejected: Counter = Counter()
    filter_rejected: Counter = Counter()
    kept = evolved = 0
    summary: dict = {}
    try:
        progress(evolve.STAGE, 0, cfg.rounds, {"items": len(state.items)})
        for _ in range(cfg.rounds):
            if not state.active():
                break
            res = evolve.evolve_round(state, teacher, cfg, rng)
            filtered = evolve.final_filter(res.kept, reference, run.cfg.filter) if res.kept else None
            accepted = list(filtered.kept) if filtered else []
            dropped = list(filtered.rejected) if filtered else []
            reference.extend(accepted)
            files.write((r.to_dict() for r in accepted), (r.to_dict() for r in [*res.rejected, *dropped]))
            evolved += len(res.kept)
            kept += len(accepted)
            rejected.update(r.reason for r in res.rejected)
            filter_rejected.update(r.reason for r in dropped)
            progress(evolve.STAGE, state.round, cfg.rounds,
                     {"evolved": evolved, "kept": kept,
                      "rejected": sum(rejected.values()) + sum(filter_rejected.values()),
                      "active": len(state.active())})
    finally:
        files.close()
        summary = state.summary()
        summary["filter"] = {"input": evolved, "kept": kept, "rejected": sum(filter_rejected.values()),
                             "rejected_by_reason": dict(filter_rejected.most_common())}
        run.record_stage(
            evolve.STAGE, kept, rejected + filter_rejected, time.time() - t0,
            input_items=len(state.items),
            rounds_run=state.round,
            rounds=cfg.rounds,
            evolved=evolved,
            stats=summary,
            usage=_usage_delta(usage_before, teacher.usage.as_dict()),
            teacher_model=teacher.model_name,
        )
    return summary


def evolve_file(cfg: RunConfig, run_dir: Path, in_file: Path, records: list[Record], config_path: str | None = None,
                progress: Progress = _no_progress, force: bool = False) -> dict:
    """``pipeline evolve``: the Evolve stage alone over the records of ``in_file``, in a run directory of its own,
    with the same machinery as ``run.run_stages`` (lock, request cache, budget, resume). Returns the manifest.

    Resuming (same ``--out``) replays the stage with the cache answering every request that already succeeded;
    the input file must be the same one (its SHA-256 is in the manifest) unless ``force``.
    """
    from .run import run_session

    digest = hashlib.sha256(Path(in_file).read_bytes()).hexdigest()

    def same_input(manifest: dict) -> None:
        old = manifest.get("input")
        if old and old.get("sha256") != digest and not force:
            raise InputError(str(in_file), f"differs from the input this run started with ({old.get('file')}); "
                             "resume with the same file, or pass --force", field="input")

    with run_session(cfg, run_dir, config_path, force=force, check=same_input) as (run, teacher):
        run.manifest["input"] = {"file": str(in_file), "sha256": digest, "records": len(records),
                                 "tasks": len({r.task_id or r.id for r in records})}
        if not run.is_done(evolve.STAGE):
            run_evolve(run, teacher, records, progress)
            run.mark_done(evolve.STAGE)
    return run.manifest
