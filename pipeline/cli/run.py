"""``pipeline run`` (every configured stage, then the report and the dataset card) and ``pipeline bootstrap`` (the
Self-Instruct stage alone)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..runs.read import has_dataset
from ..runs.stages import run_stages
from ..runs.store import run_dir_for
from .common import (EXIT_INTERRUPTED, BackendOpt, BaseUrlOpt, Bars, ConfigOpt, ForceOpt, ModelOpt, RunExits, SetOpt,
                     console, load)


def _print_summary(manifest: dict, run_dir: Path) -> None:
    table = Table(title=f"run {manifest['run_id']}", show_lines=False)
    table.add_column("stage")
    table.add_column("kept", justify="right")
    table.add_column("rejected", justify="right")
    table.add_column("top rejection reasons")
    table.add_column("wall s", justify="right")
    for name, s in manifest["stages"].items():
        reasons = ", ".join(f"{k} {v}" for k, v in list(s["rejected_by_reason"].items())[:4])
        table.add_row(name, str(s["kept"]), str(s["rejected"]), reasons, f"{s['wall_s']:.1f}")
    console.print(table)
    tokens = manifest.get("tokens", {})
    console.print(f"tokens: {tokens.get('prompt', 0)} in, {tokens.get('completion', 0)} out; "
                  f"wall {manifest['wall_s']:.1f} s; output in {run_dir}")


def _write_report(run_dir: Path) -> None:
    """The HTML report and the dataset card at the end of a run; a failure here never fails the run."""
    from ..report.card import write_card  # matplotlib and spaCy load only when a report is written
    from ..report.html import write_report

    jobs = [("dataset card", write_card)] if has_dataset(run_dir) else []
    for what, write in jobs + [("report", write_report)]:
        try:
            path = write(run_dir)
        except Exception as e:  # noqa: BLE001 (the data is written; a report problem is only worth a warning)
            console.print(f"[yellow]warning:[/] the {what} was not written ({type(e).__name__}: "
                          f"{escape(str(e))}); try: pipeline report {run_dir}", highlight=False, soft_wrap=True)
        else:
            if what == "report":
                console.print(f"report: {path}", highlight=False)


def _run(stages: Optional[list[str]], config, sets, out, teacher, model, base_url, target, force=False,
         report: bool = True) -> None:
    exits = RunExits()
    try:
        with exits:
            cfg = load(config, sets, **{"teacher.backend": teacher, "teacher.model": model,
                                        "teacher.base_url": base_url, "bootstrap.target_instructions": target})
            exits.run_dir = run_dir_for(cfg, out)
            bars = Bars()
            with bars.progress:
                manifest = run_stages(cfg, exits.run_dir, str(config) if config else None, stages=stages,
                                      progress=bars, force=force)
    except typer.Exit:
        if report and exits.budget_reached:
            _write_report(exits.run_dir)  # a budget stop is a clean end: the morning report still helps
        raise
    try:
        _print_summary(manifest, exits.run_dir)
        if report:
            _write_report(exits.run_dir)
    except KeyboardInterrupt:  # the run itself is complete
        raise typer.Exit(EXIT_INTERRUPTED)


def run_command(config: Optional[Path] = ConfigOpt, sets: Optional[list[str]] = SetOpt,
                out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default outputs/<UTC "
                                                   "timestamp>). An existing run there is resumed."),
                teacher: Optional[str] = BackendOpt, model: Optional[str] = ModelOpt,
                base_url: Optional[str] = BaseUrlOpt,
                target: Optional[int] = typer.Option(None, "--target", help="Instructions to accept (bootstrap)."),
                force: bool = ForceOpt,
                report: bool = typer.Option(True, "--report/--no-report", help="Write report.html and the dataset "
                                            "card at the end.")) -> None:
    """Run every configured stage (bootstrap, filter, export by default), or resume the run in --out where it
    stopped; then write the HTML report."""
    _run(None, config, sets, out, teacher, model, base_url, target, force, report)


def bootstrap_command(config: Optional[Path] = ConfigOpt, sets: Optional[list[str]] = SetOpt,
                      out: Optional[Path] = typer.Option(None, "--out", help="Run directory."),
                      teacher: Optional[str] = BackendOpt, model: Optional[str] = ModelOpt,
                      base_url: Optional[str] = BaseUrlOpt,
                      target: Optional[int] = typer.Option(None, "--target", help="Instructions to accept."),
                      force: bool = ForceOpt) -> None:
    """Run the Self-Instruct bootstrap stage alone (writes <out>/bootstrap/kept.jsonl and rejected.jsonl)."""
    _run(["bootstrap"], config, sets, out, teacher, model, base_url, target, force, report=False)
