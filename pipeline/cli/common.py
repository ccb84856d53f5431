"""What every command shares: the console (stderr), the exit codes and the one-line error messages, the options
that several commands take, config loading and the progress bars.

Exit codes: 0 complete; 1 teacher failed after retries (resumable), or an unexpected error (one line; the
traceback in a log file, ``report_unexpected``); 2 bad input (nothing written); 3 budget reached (stopped cleanly,
resumable); 4 run directory in use by a live process; 130 interrupted. Nothing prints a traceback to the user.
"""
from __future__ import annotations

import os
import tempfile
import time
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..config import RunConfig, load_config
from ..errors import InputError, RunLocked, TeacherError, redact
from ..io.files import ReplayMismatch
from ..teachers.cache import BudgetExhausted

console = Console(stderr=True)
EXIT_TEACHER, EXIT_INPUT, EXIT_BUDGET, EXIT_LOCKED, EXIT_INTERRUPTED = 1, 2, 3, 4, 130

ConfigOpt = typer.Option(None, "--config", "-c", help="Run config (TOML). Default: the embedded demo.")
SetOpt = typer.Option(None, "--set", help="Override any config key: --set bootstrap.target_instructions=100.")
BackendOpt = typer.Option(None, "--teacher", help="Teacher backend: llamacpp, openai or vllm.")
ModelOpt = typer.Option(None, "--model", help="Teacher model (GGUF path, API model name, or HF model).")
BaseUrlOpt = typer.Option(None, "--base-url", help="Base URL of an OpenAI-compatible API.")
ForceOpt = typer.Option(False, "--force", help="Resume even though the config differs from the run's.")


def report_unexpected(exc: BaseException, run_dir: Path | None = None) -> Path:
    """An error nobody planned for (disk full, a library's bug, ours): the traceback goes to a log file (in the
    run directory's ``logs/`` when there is one, else the temporary directory) and one line to the user."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    folder = run_dir / "logs" if run_dir is not None and run_dir.is_dir() else Path(tempfile.gettempdir())
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"error-{stamp}-{os.getpid()}.log"
        path.write_text("".join(traceback.format_exception(exc)), encoding="utf-8")
    except OSError:  # the disk may be what failed: the traceback then goes to stderr after all
        path = Path("<stderr>")
        traceback.print_exception(exc)
    console.print(f"[bold red]error:[/] unexpected {type(exc).__name__}: {escape(redact(str(exc)))}; the traceback "
                  f"is in {path}", highlight=False, soft_wrap=True)
    return path


def fail(exc: Exception) -> None:
    """Bad input exits 2 and a teacher that failed exits 1, each with one line; anything else propagates."""
    if isinstance(exc, ReplayMismatch):
        console.print(f"[bold red]error:[/] {escape(str(exc))}; pass --force to restart the stage from its start",
                      highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INPUT)
    if isinstance(exc, InputError):
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INPUT)
    if isinstance(exc, TeacherError):
        console.print(f"[bold red]teacher error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_TEACHER)
    raise exc


def load(config: Optional[Path], sets: Optional[list[str]], base: dict | None = None, **overrides) -> RunConfig:
    return load_config(config, overrides=overrides, sets=sets, base=None if config else base)


@contextmanager
def judge_exits(kept: str):
    """The exits of the commands whose paid part is the evaluation judge (``eval``, ``compare-data``): bad input 2,
    a failed teacher 1, budget 3 (``kept`` says what a rerun does not redo), interrupted 130."""
    try:
        yield
    except (InputError, TeacherError) as e:
        fail(e)
    except BudgetExhausted as e:
        console.print(f"[yellow]budget:[/] {e}; the judge stopped. Raise the budget and run again ({kept})")
        raise typer.Exit(EXIT_BUDGET)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        raise typer.Exit(EXIT_INTERRUPTED)


def cached_judge(cfg: RunConfig, cache_path: Path):
    """(a function that builds the evaluation judge, one that closes what it built): the ``[judge]`` teacher (else
    ``[teacher]``) behind a request cache at ``cache_path`` (a rerun pays nothing again) and the config's budget."""
    from ..runs.store import budget_for
    from ..teachers import make_backend, make_engine
    from ..teachers.cache import RequestCache

    caches: list = []

    def factory():
        tcfg = cfg.judge.teacher or cfg.teacher
        caches.append(RequestCache(cache_path))
        backend = make_backend(tcfg)
        return make_engine(tcfg, caches[-1], budget_for(cfg, backend.model_name, tcfg), backend)

    def close() -> None:
        for c in caches:
            c.close()

    return factory, close


class Bars:
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
        elapsed = time.time() - self.t0[stage]
        info = " ".join(f"{k}={v}" for k, v in fields.items())
        if stage == "bootstrap" and elapsed >= 2.0:  # a rate over less is noise (the stage starts the clock at 0)
            info += f" ({done / (elapsed / 60):.1f} instr/min)"
        self.progress.update(self.tasks[stage], completed=done, total=total, info=info)


def training_bars() -> Bars:
    """The bars for ``tune`` and ``eval``, with the libraries' own bars and notices silenced."""
    # Deprecation notices that peft/trl trigger inside transformers; nothing the user can act on.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # our own bar shows the progress
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return Bars()


class RunExits:
    """Turns what can end a run into the CLI's exit codes and one-line messages (``pipeline run``, ``bootstrap``
    and ``evolve`` share it). Set ``run_dir`` inside the block so the messages can say how to resume."""

    def __init__(self) -> None:
        self.run_dir: Path | None = None
        self.budget_reached = False

    def __enter__(self) -> "RunExits":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            return False
        if isinstance(exc, (InputError, TeacherError, ReplayMismatch)):
            if isinstance(exc, TeacherError) and self.run_dir is not None:
                console.print(f"the run stopped; what it accepted is intact: resume with --out {self.run_dir}")
            fail(exc)
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
            raise typer.Exit(EXIT_INTERRUPTED)
        if isinstance(exc, Exception) and not isinstance(exc, (typer.Exit, typer.Abort)):
            report_unexpected(exc, self.run_dir)
            raise typer.Exit(EXIT_TEACHER)
        return False
