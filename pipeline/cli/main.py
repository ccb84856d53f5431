"""The ``pipeline`` command: one Typer app, one module per command (``pipeline.cli.<command>``), the shared parts
in ``pipeline.cli.common``. Bad input exits 2 with one line naming the file, line and field; a teacher that fails
after its retries exits 1; an interrupted run exits 130. Nothing prints a traceback to the user."""
from __future__ import annotations

import signal
import sys

import typer

from . import check_teacher, compare, evolve, inspect, report, run, templatize, tune
from . import eval as eval_cmd
from .common import report_unexpected
from . import filter as filter_cmd

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make instruction-tuning data: Self-Instruct, Evol-Instruct, templated datasets, conversations, "
                       "preference pairs; filter, select, export, tune, evaluate.")
app.command("run")(run.run_command)
app.command("bootstrap")(run.bootstrap_command)
app.command("check-teacher")(check_teacher.check_teacher_command)
app.command("tune")(tune.tune_command)
app.command("eval")(eval_cmd.eval_command)
app.command("compare-data")(compare.compare_command)
app.command("filter")(filter_cmd.filter_command)
app.command("evolve")(evolve.evolve_command)
app.command("templatize")(templatize.templatize_command)
app.command("inspect")(inspect.inspect_command)
app.command("report")(report.report_command)


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM (cron, systemd, timeout) stops a run as cleanly as Ctrl-C


@app.callback()
def _setup() -> None:
    signal.signal(signal.SIGTERM, _terminate)


def main() -> None:
    try:
        sys.exit(app())
    except Exception as e:  # noqa: BLE001 (what no command turned into an exit code: one line and a log file)
        report_unexpected(e)
        sys.exit(1)
