"""``pipeline report RUN_DIR``: the self-contained HTML report and the dataset card of a run."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import InputError
from ..runs.read import has_dataset
from .common import console, fail


def report_command(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="The run directory."),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write the HTML "
                                            "(default RUN_DIR/report.html)."),
    sample: int = typer.Option(25, "--sample", "-n", min=0, help="Kept records in the sample table."),
    seed: int = typer.Option(0, "--seed", help="Seed of the samples."),
) -> None:
    """Write RUN_DIR/report.html (self-contained: charts, rejection reasons, diversity, samples) and the dataset
    card RUN_DIR/dataset/README.md."""
    from ..report.card import write_card  # matplotlib and spaCy load only when a report is written
    from ..report.html import write_report

    try:
        path = write_report(run_dir, out_path, sample=sample, seed=seed)
        card = write_card(run_dir) if has_dataset(run_dir) else None
    except InputError as e:
        fail(e)
    console.print(f"report: {path}" + (f"\ndataset card: {card}" if card else ""), highlight=False)
