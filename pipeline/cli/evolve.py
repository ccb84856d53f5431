"""``pipeline evolve IN.jsonl --out DIR --rounds M``: Evol-Instruct over any seed, Alpaca or Self-Instruct JSONL."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ..io.readers import load_seed_file
from ..runs.stages import evolve_file
from ..runs.store import run_dir_for
from .common import BackendOpt, BaseUrlOpt, Bars, ConfigOpt, ModelOpt, RunExits, console, load

SetOpt = typer.Option(None, "--set", help="Override any config key: --set evolve.judge_equal=true.")


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.0f}%"


def _growth(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}"


def _failures(failures: dict[str, int], top: int = 3) -> str:
    return ", ".join(f"{k} {v}" for k, v in list(failures.items())[:top])


def stats_table(stats: dict, title: str = "evolve") -> Table:
    """Per round and per operation: attempts, passes, pass rate, mean word growth, top failure reasons."""
    table = Table(title=title)
    for name, justify in (("round", "right"), ("operation", "left"), ("attempts", "right"), ("passes", "right"),
                          ("pass rate", "right"), ("growth (words)", "right"), ("top failures", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]

    def row(rnd: str, op: str, s: dict, style: str | None = None) -> None:
        table.add_row(rnd, op, str(s["attempts"]), str(s["passes"]), _pct(s["pass_rate"]),
                      _growth(s["mean_growth_words"]), _failures(s["failures"]), style=style)

    for rs in stats.get("rounds", []):
        for op, s in rs["by_operation"].items():
            row(str(rs["round"]), op, s)
        row(str(rs["round"]), "all", rs, style="bold")
        table.add_section()
    for op, s in stats.get("by_operation", {}).items():
        if s["attempts"]:
            row("all", op, s)
    if "total" in stats:
        row("all", "all", stats["total"], style="bold")
    return table


def evolve_command(
    in_file: Path = typer.Argument(..., help="Input tasks: seed, Alpaca or Self-Instruct JSONL (or CSV)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default outputs/<UTC timestamp>). "
                                       "An unfinished evolve run there is resumed."),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="Evolution rounds (default evolve.rounds = 4)."),
    max_items: Optional[int] = typer.Option(None, "--max-items", help="Input tasks to evolve (0 = all; default "
                                            "evolve.max_items = 20)."),
    config: Optional[Path] = ConfigOpt, sets: Optional[list[str]] = SetOpt,
    teacher: Optional[str] = BackendOpt, model: Optional[str] = ModelOpt, base_url: Optional[str] = BaseUrlOpt,
    force: bool = typer.Option(False, "--force", help="Resume even though the config or input differs."),
) -> None:
    """Evol-Instruct: evolve instructions for M rounds (in-depth and in-breadth rewrites), answer them, eliminate
    failed evolutions, filter; writes <out>/evolve/kept.jsonl and rejected.jsonl and prints per-round stats."""
    with RunExits() as exits:
        cfg = load(config, sets, **{"teacher.backend": teacher, "teacher.model": model,
                                    "teacher.base_url": base_url, "evolve.rounds": rounds,
                                    "evolve.max_items": max_items})
        records = load_seed_file(in_file)  # bad input fails before anything is written
        exits.run_dir = run_dir = run_dir_for(cfg, out)
        bars = Bars()
        with bars.progress:
            manifest = evolve_file(cfg, run_dir, in_file, records, str(config) if config else None, bars, force)
    stage = manifest["stages"]["evolve"]
    stats = stage["stats"]
    # logs and pipes: no 80-column wrapping of the table
    out_console = console if console.is_terminal else Console(stderr=True, width=160)
    out_console.print(stats_table(stats, title=f"evolve {manifest['run_id']}: {stage['input_items']} items, "
                                               f"{stage['rounds_run']} rounds, teacher {stage['teacher_model']}"))
    f = stats["filter"]
    tokens = manifest.get("tokens", {})
    out_console.print(f"passed elimination {f['input']}, kept after the filter chain {f['kept']} "
                      f"({_failures(f['rejected_by_reason'], 4) or 'none dropped'}); pool: {stats['pool']['active']} "
                      f"active, {stats['pool']['retired']} retired; tokens {tokens.get('prompt', 0)} in, "
                      f"{tokens.get('completion', 0)} out; wall {manifest['wall_s']:.1f} s; output in {run_dir}")
