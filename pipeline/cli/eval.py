"""``pipeline eval``: the base model against the tuned adapter on the held-out split of ``pipeline tune``.

Settings come from the ``[eval]`` section of a run config (``--config``), ``--set`` overrides and the named flags
below (flags win); the judge is the configured teacher, behind a request cache in the output directory
(``judge_cache.sqlite``) and the config's budget; its usage is in the eval table.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import InputError, TeacherError
from ..runs.read import default_eval_dir, resolve_tune_dir
from ..runs.store import budget_for, price_for_budget
from ..teachers import make_backend, make_engine
from ..teachers.cache import BudgetExhausted, RequestCache
from ..train.evaluate import evaluate, markdown_table
from .common import EXIT_BUDGET, EXIT_INTERRUPTED, console, fail, load, training_bars
from .tune import ConfigOpt, SetOpt


def eval_command(
    source: Path = typer.Argument(..., help="Run directory (uses <run>/tune) or a `pipeline tune` output directory."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default <run>/eval)."),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[list[str]] = SetOpt,
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Answer length limit."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Generation batch size."),
    max_examples: Optional[int] = typer.Option(None, "--max-examples", help="Use the first N held-out rows (0: all)."),
    judge: Optional[bool] = typer.Option(None, "--judge/--no-judge", help="Pairwise judge win rate with the teacher."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Judge backend: llamacpp, openai or vllm."),
    model: Optional[str] = typer.Option(None, "--model", help="Judge model (GGUF path, API model name, HF model)."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="Base URL of an OpenAI-compatible API."),
) -> None:
    """Base model against the tuned adapter on the held-out split: ROUGE-L, held-out loss, optional judge."""
    try:
        cfg = load(config, sets, **{
            "eval.max_new_tokens": max_new_tokens, "eval.batch_size": batch_size, "eval.max_examples": max_examples,
            "eval.judge": judge, "teacher.backend": teacher, "teacher.model": model, "teacher.base_url": base_url})
        tune_dir = resolve_tune_dir(source)
        out_dir = out or default_eval_dir(tune_dir)
        bars = training_bars()
        if cfg.eval.judge:
            price_for_budget(cfg)  # before the slow part
        caches = []

        def judge_factory():  # the judge's answers are cached (a rerun pays nothing again) and budgeted
            caches.append(RequestCache(out_dir / "judge_cache.sqlite"))
            backend = make_backend(cfg.teacher)
            return make_engine(cfg.teacher, caches[0], budget_for(cfg, backend.model_name), backend)
        try:
            with bars.progress:
                table = evaluate(tune_dir, out_dir, cfg.eval, cfg.teacher, progress=bars, judge_factory=judge_factory)
        finally:
            for c in caches:
                c.close()
    except (InputError, TeacherError) as e:
        fail(e)
    except BudgetExhausted as e:
        console.print(f"[yellow]budget:[/] {e}; the judge stopped. Raise the budget and run again (answers so far "
                      "are cached)")
        raise typer.Exit(EXIT_BUDGET)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        raise typer.Exit(EXIT_INTERRUPTED)
    typer.echo(markdown_table(table))
    console.print(f"written: {out_dir / 'eval_table.json'}, {out_dir / 'eval_table.md'}, "
                  f"{out_dir / 'generations.jsonl'}", highlight=False)
