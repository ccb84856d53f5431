"""``pipeline filter IN.jsonl --out DIR``: run the filter chain (``pipeline.filters.chain``) over a finished file.

Writes ``DIR/kept.jsonl`` (records with their nearest instruction and ROUGE-L score), ``DIR/rejected.jsonl``
(record + ``reason`` + ``details`` + ``stage``) and ``DIR/stats.json`` (counts by reason, novelty-index figures,
timing). Each file is written to a temporary name and renamed, so an earlier result in DIR is replaced whole or
not at all. Bad input (file, config, --set) exits 2 with one line naming the file, line and field.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..config import FilterConfig
from ..errors import InputError
from ..filters.chain import filter_records
from ..io.readers import read_records
from ..runs.stages import build_checks
from ..runs.store import FILTER_FILES, write_filter_result
from .common import EXIT_INTERRUPTED, console, fail, load


def _qualify_sets(sets: Optional[list[str]]) -> list[str]:
    """``--set min_words=3`` is short for ``--set filter.min_words=3`` (keys of the [filter] section)."""
    out = []
    for item in sets or []:
        key = item.split("=", 1)[0].strip()
        if "." not in key and key in FilterConfig.model_fields:
            item = "filter." + item.strip()
        out.append(item)
    return out


def filter_command(
    input_path: Path = typer.Argument(..., metavar="IN", help="Input JSONL: Alpaca rows (instruction, input, "
                                      "output), Self-Instruct tasks (instances list) or pipeline records."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory for kept.jsonl, rejected.jsonl, stats.json."),
    rouge_threshold: Optional[float] = typer.Option(None, "--rouge-threshold",
                                                    help="Reject when ROUGE-L F is strictly greater (default 0.7)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Run config (TOML): its [filter], "
                                          "[decontaminate] and [safety] sections."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="Override a config key: --set filter.min_words=3 "
                                             "(or min_words=3)."),
    reference: Optional[list[Path]] = typer.Option(None, "--reference", "-r",
                                                   help="Seed/reference file whose instructions start the pool "
                                                        "(repeatable)."),
) -> None:
    """Filter a finished file: quality heuristics, decontamination and safety (when configured), exact duplicates,
    ROUGE-L novelty (Self-Instruct/Alpaca rules), repeated responses."""
    t0 = time.time()
    try:
        run_cfg = load(config, _qualify_sets(sets), **{"filter.rouge_threshold": rouge_threshold})
        cfg = run_cfg.filter
        checks = build_checks(run_cfg)  # the config's [decontaminate] benchmarks and [safety] classifier
        if out.exists() and not out.is_dir():
            raise InputError(str(out), "exists and is not a directory")
        records = read_records(input_path)
        ref = [r for p in reference for r in read_records(p)] if reference else None
        progress = Progress(TextColumn("[bold]{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console, transient=False)
        tasks: dict[str, int] = {}

        def report(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(phase, total=total)
            progress.update(tasks[phase], completed=done, total=total)

        with progress:
            result = filter_records(records, cfg, ref, progress=report, checks=checks)
        stats = {
            "input": str(input_path),
            "reference": [str(p) for p in reference or []],
            "output_dir": str(out),
            **result.stats,
            "files": dict(FILTER_FILES),
            "config": cfg.model_dump(mode="json"),
            "decontaminate": run_cfg.decontaminate.model_dump(mode="json"),
            "safety": run_cfg.safety.model_dump(mode="json"),
        }
        stats["timing"]["wall_s"] = round(time.time() - t0, 3)
        n_kept, n_rej = write_filter_result(out, (r.to_dict() for r in result.kept),
                                            (r.to_dict() for r in result.rejected), stats)
    except InputError as e:
        fail(e)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: nothing was written")
        raise typer.Exit(EXIT_INTERRUPTED)
    table = Table(title=f"pipeline filter {input_path.name}")
    table.add_column("reason")
    table.add_column("records", justify="right")
    table.add_row("[green]kept[/]", str(n_kept))
    for reason, count in result.stats["rejected_by_reason"].items():
        table.add_row(reason, str(count))
    console.print(table)
    nov = result.stats["novelty"]
    console.print(f"{len(records)} records -> {n_kept} kept, {n_rej} rejected; ROUGE-L pool {nov['pool_size']} "
                  f"({nov['mode']}, {nov['scored']} pairs scored); {stats['timing']['wall_s']:.2f} s; "
                  f"output in {out}", highlight=False)
