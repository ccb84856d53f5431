"""The ``pipeline`` command. Bad input exits 2 with one line naming the file, line and field; a teacher that
fails after its retries exits 1; an interrupted run exits 130. Nothing prints a traceback to the user."""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .config import RunConfig, load_config
from .errors import InputError, TeacherError
from .runio import default_run_id

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make instruction-tuning data: Self-Instruct bootstrap, filtering, export.")
console = Console(stderr=True)
# Exit codes: 0 complete; 1 teacher failed after retries (resumable); 2 bad input (nothing written);
# 3 budget reached (stopped cleanly, resumable); 4 run directory in use by a live process; 130 interrupted.
EXIT_BUDGET, EXIT_LOCKED = 3, 4
ForceOpt = typer.Option(False, "--force", help="Resume even though the config differs from the run's.")

ConfigOpt = typer.Option(None, "--config", "-c", help="Run config (TOML). Default: the embedded demo.")
SetOpt = typer.Option(None, "--set", help="Override any config key: --set bootstrap.target_instructions=100.")
BackendOpt = typer.Option(None, "--teacher", help="Teacher backend: llamacpp, openai or vllm.")
ModelOpt = typer.Option(None, "--model", help="Teacher model (GGUF path, API model name, or HF model).")
BaseUrlOpt = typer.Option(None, "--base-url", help="Base URL of an OpenAI-compatible API.")


def _fail(exc: Exception) -> None:
    if isinstance(exc, InputError):
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    if isinstance(exc, TeacherError):
        console.print(f"[bold red]teacher error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    raise exc


def _load(config: Optional[Path], sets: Optional[list[str]], **overrides) -> RunConfig:
    return load_config(config, overrides=overrides, sets=sets)


class _Bars:
    """Rich progress bars, one per stage, with counts and rates."""

    def __init__(self) -> None:
        self.progress = Progress(TextColumn("[bold]{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
                                 transient=False)
        self.tasks: dict[str, int] = {}
        self.t0: dict[str, float] = {}

    def __call__(self, stage: str, done: int, total: int, fields: dict) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total, info="")
            self.t0[stage] = time.time()
        minutes = max(time.time() - self.t0[stage], 1e-9) / 60
        info = " ".join(f"{k}={v}" for k, v in fields.items())
        if stage == "bootstrap":
            info += f" ({done / minutes:.1f} instr/min)"
        self.progress.update(self.tasks[stage], completed=done, total=total, info=info)


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
    from .card import write_card
    from .report import write_report

    jobs = [("dataset card", write_card)] if (run_dir / "dataset").is_dir() else []
    for what, write in jobs + [("report", write_report)]:
        try:
            path = write(run_dir)
        except Exception as e:  # noqa: BLE001 (the data is written; a report problem is only worth a warning)
            console.print(f"[yellow]warning:[/] the {what} was not written ({type(e).__name__}: "
                          f"{escape(str(e))}); try: pipeline report {run_dir}", highlight=False, soft_wrap=True)
        else:
            if what == "report":
                console.print(f"report: {path}", highlight=False)


class RunExits:
    """Turns what can end a run into the CLI's exit codes and one-line messages (``pipeline run``, ``bootstrap``
    and ``evolve`` share it). Set ``run_dir`` inside the block so the messages can say how to resume."""

    def __init__(self) -> None:
        self.run_dir: Path | None = None
        self.budget_reached = False

    def __enter__(self) -> "RunExits":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        from .run import RunLocked
        from .teachers.cache import BudgetExhausted

        if exc is None:
            return False
        if isinstance(exc, (InputError, TeacherError)):
            if isinstance(exc, TeacherError) and self.run_dir is not None:
                console.print(f"the run stopped; what it accepted is intact: resume with --out {self.run_dir}")
            _fail(exc)
        if isinstance(exc, BudgetExhausted):
            self.budget_reached = True
            console.print(f"[yellow]budget:[/] {exc}; stopped cleanly. Raise the budget and resume with "
                          f"--out {self.run_dir}")
            raise typer.Exit(EXIT_BUDGET)
        if isinstance(exc, RunLocked):
            console.print(f"[bold red]locked:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_LOCKED)
        if isinstance(exc, KeyboardInterrupt):
            console.print(f"[yellow]interrupted[/]: records written so far are intact; resume with "
                          f"--out {self.run_dir}")
            raise typer.Exit(130)
        return False


def _run(stages: Optional[list[str]], config, sets, out, teacher, model, base_url, target, force=False,
         report: bool = True) -> None:
    from .run import run_stages

    exits = RunExits()
    try:
        with exits:
            cfg = _load(config, sets, **{"teacher.backend": teacher, "teacher.model": model,
                                         "teacher.base_url": base_url, "bootstrap.target_instructions": target})
            exits.run_dir = Path(out) if out else cfg.resolve_path(cfg.output_dir) / (cfg.run_id or default_run_id())
            bars = _Bars()
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
        raise typer.Exit(130)


@app.command()
def run(config: Optional[Path] = ConfigOpt, sets: Optional[list[str]] = SetOpt,
        out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default outputs/<UTC timestamp>). "
                                           "An existing run there is resumed."),
        teacher: Optional[str] = BackendOpt, model: Optional[str] = ModelOpt, base_url: Optional[str] = BaseUrlOpt,
        target: Optional[int] = typer.Option(None, "--target", help="Instructions to accept (bootstrap)."),
        force: bool = ForceOpt,
        report: bool = typer.Option(True, "--report/--no-report", help="Write report.html and the dataset card "
                                    "at the end.")) -> None:
    """Run every configured stage (bootstrap, filter, export by default), or resume the run in --out where it
    stopped; then write the HTML report."""
    _run(None, config, sets, out, teacher, model, base_url, target, force, report)


@app.command("bootstrap")
def bootstrap_cmd(config: Optional[Path] = ConfigOpt, sets: Optional[list[str]] = SetOpt,
                  out: Optional[Path] = typer.Option(None, "--out", help="Run directory."),
                  teacher: Optional[str] = BackendOpt, model: Optional[str] = ModelOpt,
                  base_url: Optional[str] = BaseUrlOpt,
                  target: Optional[int] = typer.Option(None, "--target", help="Instructions to accept."),
                  force: bool = ForceOpt) -> None:
    """Run the Self-Instruct bootstrap stage alone (writes <out>/bootstrap/kept.jsonl and rejected.jsonl)."""
    _run(["bootstrap"], config, sets, out, teacher, model, base_url, target, force, report=False)


@app.command("check-teacher")
def check_teacher(config: Optional[Path] = ConfigOpt, sets: Optional[list[str]] = SetOpt,
                  teacher: Optional[str] = BackendOpt, model: Optional[str] = ModelOpt,
                  base_url: Optional[str] = BaseUrlOpt) -> None:
    """Send one short request to the configured teacher and print its answer, latency and token counts."""
    from .config import Decoding
    from .teachers import ChatRequest, make_teacher

    try:
        cfg = _load(config, sets, **{"teacher.backend": teacher, "teacher.model": model,
                                     "teacher.base_url": base_url})
        t0 = time.time()
        tch = make_teacher(cfg.teacher)
        loaded = time.time() - t0
        t0 = time.time()
        [c] = tch.generate([ChatRequest([{"role": "user", "content": "Name three primary colours."}],
                                        Decoding(temperature=0.0, top_p=1.0, max_tokens=48))])
        tch.close()
    except (InputError, TeacherError) as e:
        _fail(e)
    console.print(f"teacher [bold]{cfg.teacher.backend}[/] model [bold]{tch.model_name}[/] answered in "
                  f"{time.time() - t0:.2f} s (start-up {loaded:.2f} s), {c.prompt_tokens} tokens in, "
                  f"{c.completion_tokens} out, finish_reason={c.finish_reason}")
    typer.echo(c.text.strip())
    if not c.text.strip():
        raise typer.Exit(1)


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM (cron, systemd, timeout) stops a run as cleanly as Ctrl-C


@app.callback()
def _setup() -> None:
    signal.signal(signal.SIGTERM, _terminate)


def main() -> None:  # pragma: no cover
    sys.exit(app())

from .tune_cmd import eval_command, tune_command  # noqa: E402
app.command("tune")(tune_command)
app.command("eval")(eval_command)
from .filter_cmd import filter_command  # noqa: E402
app.command("filter")(filter_command)
from .evolve_cmd import evolve_command  # noqa: E402
app.command("evolve")(evolve_command)
from .inspect_cmd import inspect_command, report_command  # noqa: E402
app.command("inspect")(inspect_command)
app.command("report")(report_command)
