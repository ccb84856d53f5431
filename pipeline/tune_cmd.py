"""``pipeline tune`` and ``pipeline eval``: LoRA SFT on a run's dataset, then base against tuned.

Settings come from the ``[tune]`` and ``[eval]`` sections of a run config (``--config``), ``--set`` overrides and
the named flags below (flags win). torch, transformers, trl and peft load only when a command runs.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

_CONFIG_HELP = r"Run config (TOML) with \[tune] and \[eval] sections. Default: the built-in defaults."
_SET_HELP = "Override any config key: --set tune.lora_r=16."


def tune_command(
    source: Path = typer.Argument(..., help="Run directory (uses its dataset/messages.jsonl or dataset/train.jsonl) "
                                  "or a dataset JSONL (messages, prompt/completion or Alpaca rows)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default <run>/tune)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=_CONFIG_HELP),
    sets: Optional[list[str]] = typer.Option(None, "--set", help=_SET_HELP),
    base_model: Optional[str] = typer.Option(None, "--base-model", help="Local HF model directory or .gguf file "
                                             "(default: the embedded SmolLM2-135M-Instruct)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps (-1: train for --epochs)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Epochs, when --max-steps is -1."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Per-device batch size."),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum", help="Gradient accumulation steps."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Max tokens per example (truncated)."),
    lora_r: Optional[int] = typer.Option(None, "--lora-r", help="LoRA rank."),
    lora_alpha: Optional[int] = typer.Option(None, "--lora-alpha", help="LoRA alpha."),
    lora_dropout: Optional[float] = typer.Option(None, "--lora-dropout", help="LoRA dropout."),
    target_modules: Optional[str] = typer.Option(None, "--target-modules",
                                                 help="'all-linear' or a comma-separated list (q_proj,v_proj)."),
    eval_fraction: Optional[float] = typer.Option(None, "--eval-fraction", help="Held-out share of the rows."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the split, the adapter and the data order."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Resume: 'last' (the newest checkpoint in "
                                         "<out>/checkpoints) or a checkpoint directory."),
    merge: Optional[bool] = typer.Option(None, "--merge/--no-merge", help="Also write base + adapter merged "
                                         "into <out>/merged."),
) -> None:
    """LoRA SFT (trl + peft) of a base model on a run's dataset: adapter, loss curve, held-out split."""
    from .cli import _fail, _load, console
    from .errors import InputError

    modules = None
    if target_modules is not None:
        parts = [m.strip() for m in target_modules.split(",") if m.strip()]
        modules = parts[0] if parts == ["all-linear"] else parts
    try:
        cfg = _load(config, sets, **{
            "tune.base_model": base_model, "tune.max_steps": max_steps, "tune.epochs": epochs,
            "tune.learning_rate": lr, "tune.batch_size": batch_size, "tune.grad_accum": grad_accum,
            "tune.max_length": max_length, "tune.lora_r": lora_r, "tune.lora_alpha": lora_alpha,
            "tune.lora_dropout": lora_dropout, "tune.target_modules": modules, "tune.eval_fraction": eval_fraction,
            "tune.seed": seed})
        from .tune import resolve_dataset, train

        dataset = resolve_dataset(source)
        out_dir = out or (source / "tune" if source.is_dir() else dataset.parent / "tune")
        if int(os.environ.get("RANK", "0")) != 0:  # a non-main process of accelerate launch / torchrun
            meta = train(dataset, out_dir, cfg.tune, resume=resume, merge=merge)
        else:
            bars = _bars()
            with bars.progress:
                meta = train(dataset, out_dir, cfg.tune, resume=resume, merge=merge, progress=bars)
    except InputError as e:
        _fail(e)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: resume from the last checkpoint with --resume last")
        raise typer.Exit(130)
    if not meta:  # not the main process of a multi-process launch
        return
    tr = meta["trainer"]
    eval_part = f", held-out loss {tr['eval_loss']:.4f}" if tr.get("eval_loss") is not None else ""
    console.print(f"tuned {meta['base_model_spec']} for {tr['global_step']} steps on {meta['train_rows']} rows "
                  f"({meta['heldout_rows']} held out): train loss {tr['first_loss']:.4f} -> {tr['last_loss']:.4f}"
                  f"{eval_part}; {tr['tokens_per_s']} tokens/s; adapter in {out_dir / 'adapter'}", highlight=False)


def eval_command(
    source: Path = typer.Argument(..., help="Run directory (uses <run>/tune) or a `pipeline tune` output directory."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default <run>/eval)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=_CONFIG_HELP),
    sets: Optional[list[str]] = typer.Option(None, "--set", help=_SET_HELP),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Answer length limit."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Generation batch size."),
    max_examples: Optional[int] = typer.Option(None, "--max-examples", help="Use the first N held-out rows (0: all)."),
    judge: Optional[bool] = typer.Option(None, "--judge/--no-judge", help="Pairwise judge win rate with the teacher."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Judge backend: llamacpp, openai or vllm."),
    model: Optional[str] = typer.Option(None, "--model", help="Judge model (GGUF path, API model name, HF model)."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="Base URL of an OpenAI-compatible API."),
) -> None:
    """Base model against the tuned adapter on the held-out split: ROUGE-L, held-out loss, optional judge."""
    from .cli import _fail, _load, console
    from .errors import InputError, TeacherError

    try:
        cfg = _load(config, sets, **{
            "eval.max_new_tokens": max_new_tokens, "eval.batch_size": batch_size, "eval.max_examples": max_examples,
            "eval.judge": judge, "teacher.backend": teacher, "teacher.model": model, "teacher.base_url": base_url})
        from .evaluate import default_eval_dir, evaluate, markdown_table, resolve_tune_dir

        tune_dir = resolve_tune_dir(source)
        out_dir = out or default_eval_dir(tune_dir)
        bars = _bars()
        with bars.progress:
            table = evaluate(tune_dir, out_dir, cfg.eval, cfg.teacher, progress=bars)
    except (InputError, TeacherError) as e:
        _fail(e)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        raise typer.Exit(130)
    typer.echo(markdown_table(table))
    console.print(f"written: {out_dir / 'eval_table.json'}, {out_dir / 'eval_table.md'}, "
                  f"{out_dir / 'generations.jsonl'}", highlight=False)


def _bars():
    import warnings

    from .cli import _Bars

    # Deprecation notices that peft/trl trigger inside transformers; nothing the user can act on.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # our own bar shows the progress
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return _Bars()
