"""Templatize: labelled dataset rows turned into instruction records with human-written templates (FLAN, P3).

A template (``prompts/templates/<task>/<id>.j2``, read and parsed by ``io.labelled``) is a jinja2 file whose
first lines are a TOML header inside a jinja comment, followed by three sections::

    {#-
    target = "label"                   # the field that holds the answer
    choices = ["negative", "positive"] # optional: an integer label indexes it, a string label must be one of them
    inverted = false                   # optional: the template asks for the question, given the answer
    fields = ["text", "label"]         # the fields the template needs
    only_if = {}                       # optional: rows whose fields differ are skipped, e.g. {label = 1}
    -#}
    ### instruction
    Is the writer of this review pleased? Answer {{ choices | join(" or ") }}.
    ### input
    {{ text }}
    ### output
    {{ answer }}

Each section sees every field of the row, ``answer`` (the target as text: the choice's text when there are
choices), ``choices`` and ``row_id``.

For every template and every shot count of ``templatize.shots``, a seeded sample of at most
``max_per_template`` eligible rows becomes records: zero-shot rows are the rendered sections; a k-shot row puts k
other rows of the same dataset, rendered with the same template, as worked examples before the row's own input
(a template with an empty input section makes no k-shot rows: its examples would be answers without questions).
Records carry ``source = "template"``, the template, dataset and row ids in ``meta``, and one ``task_id`` per
template (zero- and k-shot rows share the instruction, so they are one task for the filter chain). A row that
cannot be rendered (a missing or empty field, a label outside the choices) is rejected with its reason.

Pure: no I/O; the runner reads the files and writes what ``templatize_dataset`` returns.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import jinja2

from ..io.labelled import Template
from ..records import Record, Rejection

STAGE = "templatize"


def _label(value: Any, choices: tuple[str, ...]) -> Any:
    """A label as the template compares it: with choices, a string of digits is its integer (CSV cells)."""
    if choices and isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return value


def _answer(t: Template, value: Any) -> str:
    """The target as text; raises ValueError for a label outside the choices."""
    if not t.choices:
        return str(value)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"label {value!r} is neither an index nor one of the choices")
    if isinstance(value, int):
        if not 0 <= value < len(t.choices):
            raise ValueError(f"label {value} is outside choices 0-{len(t.choices) - 1}")
        return t.choices[value]
    if value not in t.choices:
        raise ValueError(f"label {value!r} is not one of {list(t.choices)}")
    return value


def eligible(t: Template, row: dict[str, Any]) -> bool:
    """Whether ``only_if`` lets the row through (rows it skips are neither records nor rejections)."""
    return all(_label(row.get(k), t.choices) == v for k, v in t.only_if)


def render(t: Template, row: dict[str, Any], row_id: str) -> tuple[str, str, str]:
    """(instruction, input, output) of one row; raises ValueError with the reason code and the problem."""
    for name in t.fields:
        value = row.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ValueError("missing_field", f"field {name!r} is missing or empty")
    value = _label(row[t.target], t.choices)
    try:
        answer = _answer(t, value)
    except ValueError as e:
        raise ValueError("unknown_label", str(e)) from None
    variables = {**row, t.target: value, "answer": answer, "choices": list(t.choices), "row_id": row_id, "row": row}
    try:
        instruction, input_, output = (s.render(**variables).strip() for s in t.sections)
    except jinja2.UndefinedError as e:
        raise ValueError("missing_field", str(e)) from None
    if not instruction or not output:
        raise ValueError("empty_render", "the instruction or the output renders empty")
    return instruction, input_, output


def few_shot_input(examples: list[tuple[str, str]], input_: str) -> str:
    """A k-shot row's input: the worked examples, then the row's own input."""
    shown = "\n\n".join(f"Example {i}:\n{inp}\nAnswer: {out}" for i, (inp, out) in enumerate(examples, start=1))
    return f"{shown}\n\nNow this one:\n{input_}"


@dataclass
class TemplatizeResult:
    kept: list[Record]
    rejected: list[Rejection]
    stats: dict[str, Any]


def templatize_dataset(rows: list[tuple[str, dict[str, Any]]], templates: list[Template], dataset: str,
                       shots: list[int], max_per_template: int, seed: int) -> TemplatizeResult:
    """Records from ``rows`` ((row id, row) in dataset order) with every template, at every shot count."""
    kept: list[Record] = []
    rejected: list[Rejection] = []
    per_template: dict[str, dict[str, int]] = {}
    for t in templates:
        counts = per_template.setdefault(t.id, {"rows": 0, "skipped": 0, "rejected": 0})
        rendered: list[tuple[str, dict, tuple[str, str, str]]] = []
        for row_id, row in rows:
            if not eligible(t, row):
                counts["skipped"] += 1
                continue
            try:
                rendered.append((row_id, row, render(t, row, row_id)))
            except ValueError as e:
                reason, problem = e.args if len(e.args) == 2 else ("render_error", str(e))
                counts["rejected"] += 1
                rec = Record(id=f"{dataset}/{t.id}/{row_id}", instruction="", source="template", task_id=t.task_id,
                             meta={"template": t.id, "task": t.task, "dataset": dataset, "row_id": row_id})
                rejected.append(Rejection(rec, reason, {"problem": problem}, STAGE))
        for k in shots:
            if k > 0 and (not t.has_input or len(rendered) <= k):
                continue
            rng = random.Random(f"{seed}/{dataset}/{t.id}/{k}")
            chosen = sorted(rng.sample(range(len(rendered)), min(max_per_template, len(rendered))))
            for i in chosen:
                row_id, _, (instruction, input_, output) = rendered[i]
                shot_ids: list[str] = []
                if k:
                    others = rng.sample([j for j in range(len(rendered)) if j != i], k)
                    shot_ids = [rendered[j][0] for j in others]
                    input_ = few_shot_input([(rendered[j][2][1], rendered[j][2][2]) for j in others], input_)
                kept.append(Record(
                    id=f"{dataset}/{t.id}/{k}shot/{row_id}", instruction=instruction, input=input_, output=output,
                    is_classification=bool(t.choices) and not t.inverted, source="template", task_id=t.task_id,
                    meta={"template": t.id, "task": t.task, "dataset": dataset, "row_id": row_id, "shots": k,
                          "shot_row_ids": shot_ids, "inverted": t.inverted}))
                counts["rows"] += 1
    return TemplatizeResult(kept, rejected, {"dataset": dataset, "templates": per_template,
                                             "rows_in": len(rows), "records": len(kept),
                                             "rejected": len(rejected)})


def seed_tasks(records: list[Record]) -> list[Record]:
    """One task per template (its first zero-shot row), for ``templatize.seed_bootstrap``: the templates' tasks join
    the seed tasks that the bootstrap and evolve stages show the teacher."""
    first: dict[str, Record] = {}
    for r in records:
        if r.source == "template" and not r.meta.get("shots") and r.task_id not in first:
            first[r.task_id] = Record(id=r.task_id, instruction=r.instruction, input=r.input, output=r.output,
                                      is_classification=r.is_classification, source="seed", task_id=r.task_id,
                                      meta={"template": r.meta.get("template"), "dataset": r.meta.get("dataset")})
    return list(first.values())
