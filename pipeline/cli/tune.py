"""``pipeline tune``: LoRA SFT on a run's dataset (``pipeline eval`` then compares base and tuned), or with
``--method dpo`` LoRA DPO on its preference pairs (``dataset/preferences.jsonl``).

Settings come from the ``[tune]`` section of a run config (``--config``), ``--set`` overrides and the named flags
below (flags win). torch, transformers, trl and peft load only when the command runs.

Multi-GPU: this module is the command alone, for a launcher that starts one process per GPU and loads no more of
the CLI than tuning needs::

    accelerate launch --num_processes 4 -m pipeline.cli.tune outputs/<run> --max-steps 500
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from ..errors import InputError
from ..runs.read import default_dpo_dir, default_tune_dir, resolve_dataset, resolve_preferences
from ..train.dpo import train_dpo
from ..train.tune import train
from .common import EXIT_INTERRUPTED, console, fail, load, training_bars

# Shared with ``pipeline eval``.
ConfigOpt = typer.Option(None, "--config", "-c",
                         help=r"Run config (TOML) with \[tune] and \[eval] sections. Default: the built-in defaults.")
SetOpt = typer.Option(None, "--set", help="Override any config key: --set tune.lora_r=16.")


def tune_command(
    source: Path = typer.Argument(..., help="Run directory (uses its dataset/messages.jsonl or dataset/train.jsonl; "
                                  "with --method dpo its dataset/preferences.jsonl) or a dataset JSONL (messages, "
                                  "prompt/completion or Alpaca rows; with --method dpo prompt/chosen/rejected rows)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default <run>/tune, with --method dpo "
                                       "<run>/tune_dpo)."),
    method: Optional[str] = typer.Option(None, "--method", metavar="[sft|dpo]",
                                         help="sft or dpo (default: the config's tune.method, sft)."),
    sft_adapter: Optional[str] = typer.Option(None, "--sft-adapter", help="DPO: start from this SFT adapter "
                                              "(merged into the base model; also the reference model), e.g. "
                                              "<run>/tune/adapter."),
    beta: Optional[float] = typer.Option(None, "--beta", help="DPO: beta (how far the tuned model may move from the "
                                         "reference)."),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[list[str]] = SetOpt,
    base_model: Optional[str] = typer.Option(None, "--base-model", help="Local HF model directory or .gguf file "
                                             "(default: the embedded SmolLM2-135M-Instruct)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps (-1: train for --epochs)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Epochs, when --max-steps is -1."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (with --method dpo: "
                                       "tune.dpo.learning_rate)."),
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
    """LoRA SFT (or DPO: --method dpo) with trl + peft of a base model on a run's dataset: adapter, loss curve,
    held-out split."""
    modules = None
    if target_modules is not None:
        parts = [m.strip() for m in target_modules.split(",") if m.strip()]
        modules = parts[0] if parts == ["all-linear"] else parts
    try:
        if method is not None and method not in ("sft", "dpo"):
            raise InputError("--method", f"expected sft or dpo (got {method!r})")
        overrides = {
            "tune.base_model": base_model, "tune.max_steps": max_steps, "tune.epochs": epochs,
            "tune.batch_size": batch_size, "tune.grad_accum": grad_accum,
            "tune.max_length": max_length, "tune.lora_r": lora_r, "tune.lora_alpha": lora_alpha,
            "tune.lora_dropout": lora_dropout, "tune.target_modules": modules, "tune.eval_fraction": eval_fraction,
            "tune.seed": seed, "tune.method": method, "tune.dpo.sft_adapter": sft_adapter, "tune.dpo.beta": beta}
        cfg = load(config, sets, **overrides)
        dpo = cfg.tune.method == "dpo"
        if lr is not None:  # --lr is the learning rate of the method that runs
            cfg = load(config, sets, **overrides, **{"tune.dpo.learning_rate" if dpo else "tune.learning_rate": lr})
        if not dpo and (sft_adapter is not None or beta is not None):
            raise InputError("--sft-adapter" if sft_adapter is not None else "--beta", "only with --method dpo")
        if dpo:
            dataset = resolve_preferences(source)
            out_dir = out or default_dpo_dir(source, dataset)
            run = lambda **kw: train_dpo(dataset, out_dir, cfg.tune, resume=resume, merge=merge, **kw)  # noqa: E731
        else:
            dataset = resolve_dataset(source)
            out_dir = out or default_tune_dir(source, dataset)
            run = lambda **kw: train(dataset, out_dir, cfg.tune, resume=resume, merge=merge, **kw)  # noqa: E731
        if int(os.environ.get("RANK", "0")) != 0:  # a non-main process of accelerate launch / torchrun
            meta = run()
        else:
            bars = training_bars()
            with bars.progress:
                meta = run(progress=bars)
    except InputError as e:
        fail(e)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: resume from the last checkpoint with --resume last")
        raise typer.Exit(EXIT_INTERRUPTED)
    if not meta:  # not the main process of a multi-process launch
        return
    tr = meta["trainer"]
    eval_part = f", held-out loss {tr['eval_loss']:.4f}" if tr.get("eval_loss") is not None else ""
    if meta.get("method") == "dpo":
        acc = tr.get("eval_rewards_accuracies")
        acc_part = f", held-out reward accuracy {acc:.2f}" if acc is not None else ""
        start = f"{meta['base_model_spec']} + SFT adapter {meta['sft_adapter']}" if meta.get("sft_adapter") \
            else meta["base_model_spec"]
        console.print(f"DPO-tuned {start} (beta {meta['beta']:g}) for {tr['global_step']} steps on "
                      f"{meta['train_rows']} pairs ({meta['heldout_rows']} held out): loss {tr['first_loss']:.4f} -> "
                      f"{tr['last_loss']:.4f}{eval_part}{acc_part}; {tr['tokens_per_s']} tokens/s; adapter in "
                      f"{out_dir / 'adapter'}", highlight=False)
        return
    console.print(f"tuned {meta['base_model_spec']} for {tr['global_step']} steps on {meta['train_rows']} rows "
                  f"({meta['heldout_rows']} held out): train loss {tr['first_loss']:.4f} -> {tr['last_loss']:.4f}"
                  f"{eval_part}; {tr['tokens_per_s']} tokens/s; adapter in {out_dir / 'adapter'}", highlight=False)


if __name__ == "__main__":  # accelerate launch -m pipeline.cli.tune ... / torchrun -m pipeline.cli.tune ...
    typer.run(tune_command)
