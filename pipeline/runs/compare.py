"""``pipeline compare-data``: which selection of a run's data to ship, decided by tuning on each and evaluating all
on the same held-out human tasks.

For each selection (``all``: every record that entered the select stage; or one select policy applied alone to
those records, with the run's ``[select]`` settings) the records are exported as chat rows (with their lineages),
one LoRA adapter is tuned on them with the same settings, number of steps and seed, and then the base model and
every adapter answer the same held-out tasks (``pipeline.train.evaluate.evaluate_models``). A fixed step budget
means a smaller selection is seen for more epochs: the comparison is at equal training compute, the usual
question when choosing data.

Layout::

    RUN/compare/<selection>/messages.jsonl, lineage.jsonl   the rows the selection kept
    RUN/compare/<selection>/tune/                          its adapter (tune_meta.json when finished)
    RUN/compare/table.json, table.md, results.jsonl        the evaluation of all of them

A selection whose adapter is finished (same rows, steps and seed) is not tuned again, so a stopped comparison
resumes where it was.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ..config import RunConfig
from ..errors import InputError
from ..io.embeddings import load_embedder
from ..io.files import read_jsonl, write_jsonl_atomic
from ..progress import Progress, no_progress
from ..records import Record
from ..stages import heldout, select
from ..stages.export import to_messages
from ..train.evaluate import EvalTask, evaluate_models
from ..train.tune import LINEAGE_FILE, has_checkpoint, train
from .store import GENERATING_STAGES, is_done, stage_path

COMPARE_DIR = "compare"
ALL = "all"


def compare_input(run_dir: Path) -> tuple[str, list[Record]]:
    """(stage name, records) that the select stage reads: the judge's kept records (scored), else the filter's,
    else the generated ones."""
    for stage in ("judge", "filter"):
        path = stage_path(run_dir, stage, "kept")
        if is_done(run_dir, stage) and path.is_file():
            return stage, [Record.from_dict(row) for row in read_jsonl(path)]
    records = []
    for stage in GENERATING_STAGES:
        path = stage_path(run_dir, stage, "kept")
        if path.is_file():
            records += [Record.from_dict(row) for row in read_jsonl(path)]
    if not records:
        raise InputError(str(run_dir), "no kept records to select from (run the generation and filter stages)")
    return "generated", records


def check_selections(names: list[str]) -> list[str]:
    known = [ALL, *select.SELECT_POLICIES]
    for name in names:
        if name not in known:
            raise InputError("--selections", f"unknown selection {name!r} (known: {', '.join(known)})")
    if not names:
        raise InputError("--selections", "name at least one selection")
    return list(dict.fromkeys(names))


def selected(records: list[Record], cfg: RunConfig, name: str, embed=None) -> list[Record]:
    if name == ALL:
        return list(records)
    keep, _ = select.apply_policy(records, cfg.select, name, embed)
    return [records[i] for i in keep]


def _finished(tune_dir: Path, rows: int, steps: int, seed: int) -> bool:
    path = tune_dir / "tune_meta.json"
    if not path.is_file():
        return False
    meta = json.loads(path.read_text(encoding="utf-8"))
    return (meta.get("rows") == rows and meta.get("settings", {}).get("seed") == seed
            and (steps < 0 or meta.get("trainer", {}).get("global_step") == steps))


def compare_data(run_dir: Path, cfg: RunConfig, names: list[str], tasks: list[EvalTask], tasks_source: str,
                 progress: Progress = no_progress, judge_factory: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Tune one adapter per selection and evaluate them all (see the module docstring); returns the table."""
    names = check_selections(names)
    stage, records = compare_input(run_dir)
    out = run_dir / COMPARE_DIR
    embed = load_embedder(cfg.select.embedding) if "diverse_top_k" in names else None
    tcfg = cfg.tune.model_copy(update={"eval_fraction": 0.0})  # every row trains; evaluation is on the tasks
    adapters: dict[str, Path] = {}
    kept_counts = {}
    for name in names:
        rows = selected(records, cfg, name, embed)
        if not rows:
            raise InputError(name, f"the selection keeps no records of the {len(records)} from {stage}")
        kept_counts[name] = len(rows)
        folder = out / name
        data = folder / "messages.jsonl"
        tune_dir = folder / "tune"
        if not _finished(tune_dir, len(rows), tcfg.max_steps, tcfg.seed):
            write_jsonl_atomic(folder / LINEAGE_FILE, ({"row": i + 1, "id": r.id, "lineage": heldout.lineage(r)}
                                                       for i, r in enumerate(rows)))
            write_jsonl_atomic(data, (to_messages(r) for r in rows))
            train(data, tune_dir, tcfg, resume="last" if has_checkpoint(tune_dir) else None,
                  progress=lambda st, done, total, fields, name=name: progress(f"tune {name}", done, total, fields))
        adapters[name] = tune_dir
    table = evaluate_models(adapters, out, cfg.eval, tasks, tasks_source, progress, judge_factory=judge_factory,
                            teacher_cfg=cfg.judge.teacher or cfg.teacher, toxicity_threshold=cfg.safety.threshold,
                            note=f"Selections from the {len(records)} records kept by {stage}; each adapter tuned "
                                 f"for {tcfg.max_steps} steps (seed {tcfg.seed}) on its rows.",
                            extra={"selections": {"input_stage": stage, "input": len(records), "kept": kept_counts}})
    return table
