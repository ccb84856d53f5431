"""``pipeline eval``: the base model against the tuned adapter on held-out human tasks.

The tasks: ``--tasks FILE`` (any task file in the seed formats), else the human tasks the run held out
(``<run>/heldout/tasks.jsonl``), else the held-out rows of the tune split. Settings come from the ``[eval]`` section
of a run config (``--config``), ``--set`` overrides and the named flags below (flags win); the judge is the
``[judge]`` teacher (else ``[teacher]``), behind a request cache in the output directory (``judge_cache.sqlite``)
and the config's budget; its usage is in the eval table.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..io.readers import load_seeds
from ..runs.read import default_eval_dir, resolve_tune_dir
from ..runs.stages import heldout_eval_tasks
from ..runs.store import price_for_budget
from ..train.evaluate import RESULTS, TABLE_JSON, TABLE_MD, evaluate, markdown_table, tasks_from_records
from .common import cached_judge, console, judge_exits, load, training_bars
from .tune import ConfigOpt, SetOpt

TasksOpt = typer.Option(None, "--tasks", help="Held-out human tasks (seed formats: JSONL, JSON, CSV); default: "
                        "the tasks the run held out (<run>/heldout/tasks.jsonl).")


def eval_tasks(source: Path, tune_dir: Path, tasks_file: Optional[Path]):
    """(tasks, where they come from) for ``source``; (None, "") means the tune split's rows."""
    if tasks_file is not None:
        return tasks_from_records(load_seeds([tasks_file])), f"tasks of {tasks_file.name}"
    for run_dir in (source, tune_dir.parent):
        tasks = heldout_eval_tasks(run_dir)
        if tasks is not None:
            return tasks, "held-out human tasks"
    return None, ""


def eval_command(
    source: Path = typer.Argument(..., help="Run directory (uses <run>/tune) or a `pipeline tune` output directory."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default <run>/eval)."),
    tasks_file: Optional[Path] = TasksOpt,
    config: Optional[Path] = ConfigOpt,
    sets: Optional[list[str]] = SetOpt,
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Answer length limit."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Generation batch size."),
    max_examples: Optional[int] = typer.Option(None, "--max-examples", help="Use the first N held-out tasks (0: all)."),
    judge: Optional[bool] = typer.Option(None, "--judge/--no-judge", help="Pairwise judge score against the base."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Judge backend: llamacpp, openai or vllm."),
    model: Optional[str] = typer.Option(None, "--model", help="Judge model (GGUF path, API model name, HF model)."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="Base URL of an OpenAI-compatible API."),
) -> None:
    """Base model against the tuned adapter on held-out tasks: ROUGE-L, BLEU, accuracy, end-of-turn rate, toxicity,
    reference loss, optional judge; each with a bootstrap interval."""
    with judge_exits("answers so far are cached"):
        cfg = load(config, sets, **{
            "eval.max_new_tokens": max_new_tokens, "eval.batch_size": batch_size, "eval.max_examples": max_examples,
            "eval.judge": judge, "teacher.backend": teacher, "teacher.model": model, "teacher.base_url": base_url})
        tune_dir = resolve_tune_dir(source)
        out_dir = out or default_eval_dir(tune_dir)
        tasks, tasks_source = eval_tasks(source, tune_dir, tasks_file)
        bars = training_bars()
        if cfg.eval.judge:
            price_for_budget(cfg)  # before the slow part
        factory, close = cached_judge(cfg, out_dir / "judge_cache.sqlite")
        try:
            with bars.progress:
                table = evaluate(tune_dir, out_dir, cfg.eval, cfg.judge.teacher or cfg.teacher, progress=bars,
                                 judge_factory=factory, tasks=tasks, tasks_source=tasks_source,
                                 toxicity_threshold=cfg.safety.threshold)
        finally:
            close()
    typer.echo(markdown_table(table))
    console.print(f"written: {out_dir / TABLE_JSON}, {out_dir / TABLE_MD}, {out_dir / RESULTS}", highlight=False)
