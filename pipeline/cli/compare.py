"""``pipeline compare-data``: tune one adapter per selection of a run's data, evaluate all on the same held-out
human tasks, print and save one table (``<run>/compare/table.md``); see ``pipeline.runs.compare``.

Settings: the run's own config (its manifest), or ``--config``; ``--set`` overrides; ``--max-steps`` is the step
budget every adapter gets.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import InputError
from ..runs.compare import COMPARE_DIR, compare_data
from ..runs.read import RunData
from ..runs.store import TUNE_DIR, price_for_budget
from ..train.evaluate import TABLE_MD, markdown_table
from .common import cached_judge, console, judge_exits, load, training_bars
from .eval import TasksOpt, eval_tasks
from .tune import ConfigOpt, SetOpt


def compare_command(
    run_dir: Path = typer.Argument(..., help="Run directory (its filter or judge stage's kept records)."),
    selections: str = typer.Option("all,diverse_top_k,longest_k", "--selections",
                                   help="Comma-separated: all, min_quality, top_k, longest_k, diverse_top_k."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps for every adapter."),
    k: Optional[int] = typer.Option(None, "--k", help="Records top_k, longest_k and diverse_top_k keep."),
    tasks_file: Optional[Path] = TasksOpt,
    judge: Optional[bool] = typer.Option(None, "--judge/--no-judge", help="Pairwise judge score against the base."),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[list[str]] = SetOpt,
) -> None:
    """Which selection to ship: one adapter per selection, same steps and seed, one evaluation table."""
    with judge_exits("adapters and answers so far are kept"):
        data = RunData.open(run_dir)
        cfg = load(config, sets, base=data.manifest.get("config"), **{
            "tune.max_steps": max_steps, "select.k": k, "eval.judge": judge})
        tasks, tasks_source = eval_tasks(run_dir, run_dir / TUNE_DIR, tasks_file)
        if tasks is None:
            raise InputError(str(run_dir), "this run held no human tasks out: pass --tasks FILE, or run with "
                             "eval.heldout_share > 0 (or eval.heldout_files)", field="--tasks")
        if cfg.eval.judge:
            price_for_budget(cfg)
        bars = training_bars()
        factory, close = cached_judge(cfg, run_dir / COMPARE_DIR / "judge_cache.sqlite")
        try:
            with bars.progress:
                table = compare_data(run_dir, cfg, [s.strip() for s in selections.split(",") if s.strip()], tasks,
                                     tasks_source, progress=bars, judge_factory=factory)
        finally:
            close()
    typer.echo(markdown_table(table))
    console.print(f"written: {run_dir / COMPARE_DIR / TABLE_MD}", highlight=False)
