"""``pipeline templatize``: a labelled dataset turned into instruction rows with the templates of one task
(``prompts/templates/<task>/``), then the filter chain and the export, in a run directory like ``pipeline run``'s."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .common import ConfigOpt, ForceOpt, SetOpt
from .run import _run


def _toml(value) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def templatize_command(
        data: str = typer.Argument(..., help="Labelled dataset: a .jsonl, .csv or .parquet file, or hf:NAME for a "
                                   "Hugging Face dataset (needs the hub)."),
        task: str = typer.Option(..., "--task", help="Template folder under prompts/templates/ (sentiment, topic, nli, "
                                 "extractive_qa, summarization, paraphrase, or your own)."),
        templates: Optional[str] = typer.Option(None, "--templates", help="Comma-separated template ids (default: "
                                                "all of the task's)."),
        shots: Optional[str] = typer.Option(None, "--shots", help="Comma-separated shot counts, e.g. 0,2 (default "
                                            "from the config: 0,2)."),
        max_per_template: Optional[int] = typer.Option(None, "--max-per-template", help="Rows per template and "
                                                       "shot count."),
        id_field: str = typer.Option("", "--id-field", help="The field that names a row (default: its line)."),
        split: str = typer.Option("train", "--split", help="Split of a hub dataset."),
        hf_config: str = typer.Option("", "--hf-config", help="Configuration of a hub dataset (e.g. mrpc of glue)."),
        filter_rows: bool = typer.Option(True, "--filter/--no-filter", help="Run the filter chain on the rows."),
        config: Optional[Path] = ConfigOpt, sets: Optional[list[str]] = SetOpt,
        out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default outputs/<UTC timestamp>)."),
        force: bool = ForceOpt,
        report: bool = typer.Option(True, "--report/--no-report", help="Write report.html and the dataset card.")
) -> None:
    """Turn a labelled dataset into instruction rows (zero- and k-shot, inverted where a template says so), filter
    them and export them (dataset/train.jsonl and messages.jsonl)."""
    source = ({"hf_name": data[3:], "split": split, "hf_config": hf_config} if data.startswith("hf:")
              else {"path": str(Path(data).resolve())})
    source.update(task=task, id_field=id_field)
    if templates:
        source["templates"] = [t.strip() for t in templates.split(",") if t.strip()]
    item = "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in source.items()) + "}"
    stages = ["templatize", "filter", "export"] if filter_rows else ["templatize", "export"]
    extra = [f"templatize.datasets = [{item}]", f"stages = {_toml(stages)}"]
    if shots:
        extra.append(f"templatize.shots = [{shots}]")
    if max_per_template is not None:
        extra.append(f"templatize.max_per_template = {max_per_template}")
    _run(stages, config, [*(sets or []), *extra], out, None, None, None, None, force, report)
