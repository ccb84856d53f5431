"""``pipeline inspect RUN_DIR [RUN_B]``: the morning-after look at a run.

inspect prints rich tables (or JSON with --json): per stage kept and rejected by reason, tokens, cost, time and
rates, the diversity of the kept instructions, and the run's evaluations (``pipeline eval``, ``pipeline
compare-data``) when it has them; with --rejected/--kept/--query it shows records instead; with a
second run directory it compares the two.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import InputError
from ..report.summary import ci_text, compare, kept_records, summarize
from ..runs.read import RunData, records_frame
from .common import fail

# Tables and records go to stdout, so they can be piped; piped output gets room for the wide tables.
out = Console() if sys.stdout.isatty() else Console(width=160)
TEXT_CHARS = 400


def _fmt(v: Any) -> str:
    """A value for a rich table cell; text from the data is escaped (``[/INST]`` is text, not markup)."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return escape(str(v))


def _clip(text: Any, n: int = TEXT_CHARS) -> str:
    text = "" if text is None else str(text)
    return escape(text if len(text) <= n else text[:n] + " …")


def _print_summary(s: dict[str, Any]) -> None:
    o = s["overview"]
    out.print(f"[bold]run {_fmt(o['run_id'])}[/]  status [bold]{o['status']}[/]  teacher {_fmt(o['teacher_backend'])} / "
              f"{_fmt(o['teacher_model'])}  sessions {o['sessions']}  wall {_fmt(o['wall_s'])} s", highlight=False)
    out.print(f"requests {_fmt(o['requests'])}  tokens in {_fmt(o['prompt_tokens'])} out "
              f"{_fmt(o['completion_tokens'])}  cost {_fmt(o['cost_usd'])}  dataset rows {_fmt(o['dataset_rows'])}",
              highlight=False)
    if o.get("stopped_because"):
        out.print(f"[yellow]stopped because:[/] {_fmt(o['stopped_because'])}", highlight=False)
    table = Table(title="stages")
    for col in ("stage", "kept", "rejected", "keep rate", "kept/min", "wall s", "requests*", "tokens in*",
                "tokens out*", "finished"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for row in s["stages"]:
        rate = f"{100 * row['keep_rate']:.1f}%" if row["keep_rate"] is not None else "–"
        table.add_row(row["stage"], _fmt(row["kept"]), _fmt(row["rejected"]), rate, _fmt(row["kept_per_min"]),
                      _fmt(row["wall_s"]), _fmt(row["requests"]), _fmt(row["prompt_tokens"]),
                      _fmt(row["completion_tokens"]), "yes" if row["done"] else "no")
    out.print(table)
    out.print("* sent by the session that finished the stage; the run's totals are above", style="dim")
    reasons = Table(title="rejected by reason")
    for col in ("stage", "reason", "count", "share of stage"):
        reasons.add_column(col, justify="right" if col in ("count", "share of stage") else "left")
    for row in s["stages"]:
        for reason, n in row["rejected_by_reason"].items():
            reasons.add_row(row["stage"], reason, _fmt(n), f"{100 * n / max(row['rejected'], 1):.1f}%")
    if reasons.row_count:
        out.print(reasons)
    d = s["diversity"]
    div = Table(title=f"diversity of the kept records ({s['final_stage'] or 'none'})")
    div.add_column("figure")
    div.add_column("value", justify="right")
    for key, value in d.items():
        if isinstance(value, dict):
            value = "  ".join(f"{k} {_fmt(v)}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(f"{w} {n}" for w, n in value)
        div.add_row(key, _fmt(value))
    out.print(div)
    _print_quality(s["quality"])
    _print_sources(s.get("sources"))
    _print_conversations(s.get("conversations"))
    _print_preferences(s.get("preferences"))
    _print_evaluation(s["evaluation"])


def _print_quality(q: dict[str, Any]) -> None:
    """Judge score histograms, what the selection kept, contamination per benchmark, repeated responses."""
    if q["scores"]:
        t = Table(title=f"judge scores ({q['scores']['model']})")
        t.add_column("score")
        hists = q["scores"]["histograms"]
        keys = list(dict.fromkeys(k for h in hists.values() for k in h))
        for k in keys:
            t.add_column(k, justify="right")
        for name, h in hists.items():
            t.add_row(name, *(_fmt(h.get(k, 0)) for k in keys))
        out.print(t)
    sel = q["selection"]
    if sel:
        t = Table(title=f"selection by {sel['score']}: {' -> '.join(sel['policies'] or [])}")
        for col in ("policy", "input", "kept", "dropped by reason", "alone on the whole input"):
            t.add_column(col, justify="left" if col in ("policy", "dropped by reason") else "right")
        alone = sel.get("each_policy_alone") or {}
        for step in sel.get("steps") or []:
            why = ", ".join(f"{r} {n}" for r, n in (step.get("rejected_by_reason") or {}).items())
            t.add_row(step["policy"], _fmt(step["input"]), _fmt(step["kept"]), why, _fmt(alone.get(step["policy"])))
        for name, n in alone.items():
            if name not in (sel["policies"] or []):
                t.add_row(f"[dim]{name}[/]", "", "", "", _fmt(n))
        out.print(t)
    if q["contamination"] is not None:
        t = Table(title="contamination hits")
        for col in ("benchmark", "records rejected", "benchmark items hit"):
            t.add_column(col, justify="left" if col == "benchmark" else "right")
        for bench, v in q["contamination"].items():
            t.add_row(bench, _fmt(v["records"]), _fmt(v["items"]))
        if not q["contamination"]:
            t.add_row("(none)", "0", "0")
        out.print(t)
    r = q["responses"]
    if r and r.get("mode") != "off":
        out.print(f"repeated responses ({r['mode']}): {_fmt(r.get('exact'))} exact, {_fmt(r.get('near'))} near, "
                  f"of {_fmt(r.get('compared'))} outputs compared", highlight=False)


def _counts(d: dict[str, Any] | None) -> str:
    return ", ".join(f"{escape(str(k))} {_fmt(v)}" for k, v in (d or {}).items()) or "–"


def _print_sources(src: dict[str, Any] | None) -> None:
    """The dataset's rows by record source, and per labelled dataset and template when templatize ran."""
    if not src:
        return
    t = Table(title="dataset rows by source", caption=f"{_fmt(src['rows'])} records of "
              f"{_fmt(', '.join(src['files']) or src['stage'] or 'the generating stages')}")
    for col in ("source", "rows", "share"):
        t.add_column(col, justify="left" if col == "source" else "right")
    for r in src["by_source"]:
        t.add_row(_fmt(r["source"]), _fmt(r["rows"]), f"{100 * r['share']:.1f}%" if r["share"] is not None else "–")
    out.print(t)
    if src["dataset_rows"] is not None and src["dataset_rows"] != src["rows"]:
        out.print(f"[yellow]dataset/train.jsonl holds {_fmt(src['dataset_rows'])} rows, the export's input "
                  f"{_fmt(src['rows'])} records[/]: export has not finished, or its input changed after it ran",
                  highlight=False)
    tz = src["templatize"]
    if tz:
        t = Table(title=f"templatize: labelled datasets through templates (shots "
                        f"{', '.join(map(str, tz['shots'] or [])) or '–'}, at most {_fmt(tz['max_per_template'])} "
                        "per template and shot count)",
                  caption="made: records the stage wrote; in dataset: those export wrote after the stages between")
        for col in ("dataset / template", "task", "rows in", "made", "skipped", "rejected", "in dataset"):
            t.add_column(col, justify="left" if col in ("dataset / template", "task") else "right")
        for d in tz["datasets"]:
            t.add_row(f"[bold]{_fmt(d['dataset'])}[/]", _fmt(d["task"]), _fmt(d["rows_in"]), _fmt(d["records"]), "",
                      _fmt(d["rejected"]), f"[bold]{_fmt(d['in_dataset'])}[/]")
            for tm in d["templates"]:
                t.add_row(f"  {_fmt(tm['template'])}", "", "", _fmt(tm["records"]), _fmt(tm["skipped"]),
                          _fmt(tm["rejected"]), _fmt(tm["in_dataset"]))
        out.print(t)
        if tz["rejected_by_reason"]:
            out.print(f"templatize rejected: {_counts(tz['rejected_by_reason'])}", highlight=False)


def _print_conversations(c: dict[str, Any] | None) -> None:
    """Turns per conversation (the stage's, and the dataset rows' from export) and the failed turns' reasons."""
    if not c:
        return
    t = Table(title="turns per conversation")
    t.add_column("user turns")
    t.add_column("conversations", justify="right")
    if c["turns_per_row"]:
        t.add_column("dataset rows", justify="right")
    for k, n in c["turns_per_conversation"].items():
        t.add_row(escape(k), _fmt(n), *([_fmt(c["turns_per_row"].get(k, 0))] if c["turns_per_row"] else []))
    out.print(t)
    share = f"{100 * c['share_multi_turn']:.1f}%" if c["share_multi_turn"] is not None else "–"
    out.print(f"conversations: {_fmt(c['conversations'])} records, {_fmt(c['extended'])} sampled for follow-ups, "
              f"target {_fmt(c['target_turns'])} user turns; multi-turn {_fmt(c['multi_turn'])} ({share}), reached "
              f"the target {_fmt(c['reached_target'])}, mean user turns {_fmt(c['mean_turns'])}", highlight=False)
    at_turn = ", ".join(f"turn {escape(k)}: {_fmt(n)}" for k, n in c["failed_at_turn"].items())
    out.print(f"failed turns {_fmt(c['failed_turns'])}"
              + (f": {_counts(c['failed_by_reason'])} (by side: {_counts(c['failed_by_side'])}; {at_turn})"
                 if c["failed_turns"] else ""), highlight=False)


def _print_preferences(p: dict[str, Any] | None) -> None:
    """Preference pairs kept and dropped by reason, the margin histogram, the mean margin and how often the
    record's own answer was chosen."""
    if not p:
        return
    t = Table(title="preference pairs by margin")
    t.add_column("margin")
    t.add_column("pairs", justify="right")
    for k, n in p["margins"].items():
        t.add_row(escape(k), _fmt(n))
    out.print(t)
    share = f"{100 * p['share_chosen_is_original']:.1f}%" if p["share_chosen_is_original"] is not None else "–"
    out.print(f"preference pairs: {_fmt(p['pairs'])} kept, {_fmt(p['dropped'])} records without a pair"
              + (f" ({_counts(p['dropped_by_reason'])})" if p["dropped"] else "")
              + f"; mean margin {_fmt(p['mean_margin'])} (min {_fmt(p['min_margin'])}); chosen is the record's own "
              f"answer {_fmt(p['chosen_is_original'])} ({share}); pairs in dataset/preferences.jsonl "
              f"{_fmt(p['exported_pairs'])}; judge {_fmt(p['judge_model'])}", highlight=False)


def _eval_caption(e: dict[str, Any]) -> str:
    return (f"tasks: {_fmt(e['tasks_source'])}, {_fmt(e['classification_tasks'])} of them classification; base model "
            f"{_fmt(e['base_model'])}; values with 95% bootstrap intervals over tasks")


def _print_judge(e: dict[str, Any]) -> None:
    for m in e["models"]:
        j = m["judge_record"]
        if j:
            out.print(f"judge {_fmt(e['judge_model'])} on {_fmt(m['model'])} vs base: score {ci_text(m['judge'])} "
                      f"(win 1, tie 0.5, loss 0, both orders): {j['wins']} wins, {j['ties']} ties, {j['losses']} "
                      f"losses, {j['unjudged']} unjudged; verdicts A {j['answered_A']} / B {j['answered_B']} / tie "
                      f"{j['answered_tie']} / unreadable {j['invalid']}", highlight=False)
    if e["note"]:
        out.print(_fmt(e["note"]), style="dim", highlight=False)


def _print_evaluation(ev: dict[str, Any]) -> None:
    """``pipeline eval``'s table: the models side by side (and each tuned model minus the base model, paired);
    ``pipeline compare-data``'s: one row per model with the rows its selection kept."""
    e = ev["eval"]
    if e:
        tuned = [m for m in e["models"] if m["model"] != "base"]
        t = Table(title=f"evaluation on {_fmt(e['examples'])} held-out tasks", caption=_eval_caption(e))
        t.add_column("metric")
        for m in e["models"]:
            t.add_column(_fmt(m["model"]), justify="right")
        for m in tuned:
            t.add_column(f"{_fmt(m['model'])} - base", justify="right")
        for metric in e["metrics"]:
            key, digits = metric["key"], metric["digits"]
            t.add_row(metric["label"], *(ci_text(m[key], digits) for m in e["models"]),
                      *(ci_text((m["difference"] or {}).get(key), digits, signed=True) for m in tuned))
        t.add_row("reference loss (nll/token)", *(_fmt(m["reference_loss"]) for m in e["models"]), *[""] * len(tuned))
        t.add_row("new tokens (mean)", *(_fmt(m["mean_new_tokens"]) for m in e["models"]), *[""] * len(tuned))
        out.print(t)
        _print_judge(e)
    c = ev["compare"]
    if c:
        sel = c["selections"] or {}
        steps = sorted({m["steps"] for m in c["models"] if m["steps"] is not None})
        caption = (_eval_caption(c) + "; kept: the rows of the selection"
                   + (f", each adapter tuned for {', '.join(map(_fmt, steps))} steps" if steps else ""))
        # Six scores with their intervals fill the 160 columns of piped output: short headers, no outer edge.
        t = Table(title=f"data comparison on {_fmt(c['examples'])} held-out tasks: one adapter per selection of the "
                        f"{_fmt(sel.get('input'))} records kept by {_fmt(sel.get('input_stage'))}",
                  caption=caption, show_edge=False, pad_edge=False)
        t.add_column("model", overflow="fold")
        t.add_column("kept", justify="right")
        for metric in c["metrics"]:
            t.add_column(metric["label"], justify="right")
        for m in c["models"]:
            t.add_row(_fmt(m["model"]), _fmt(m["kept"]),
                      *(ci_text(m[metric["key"]], metric["digits"]) for metric in c["metrics"]))
        out.print(t)
        _print_judge(c)


def _print_compare(rows: list[dict[str, Any]], a: str, b: str) -> None:
    table = Table(title=escape(f"{a} vs {b}"))
    table.add_column("figure")
    for col in (a, b, "delta"):
        table.add_column(col, justify="right")
    for row in rows:
        delta = row["delta"]
        style = "" if not delta else ("green" if delta > 0 else "red")
        table.add_row(row["figure"], _fmt(row["a"]), _fmt(row["b"]),
                      f"[{style}]{delta:+,}[/]" if delta else _fmt(delta))
    out.print(table)


def _select(run: RunData, stage: Optional[str], rejected: Optional[str]) -> pd.DataFrame:
    """The records to show: the rejected ones of a reason ("all" for every reason), else the kept ones."""
    if rejected is not None:
        stages = [stage] if stage else run.record_stages()
        df = records_frame([row for s in stages for row in run.rows(s, "rejected")], stage or "")
        if rejected != "all":
            known = sorted(set(df["reason"])) if len(df) else []
            if rejected not in known:
                raise InputError("--rejected", f"no rejected records with reason {rejected!r}; reasons in this run: "
                                 + (", ".join(known) or "none"))
            df = df[df["reason"] == rejected]
        return df
    if stage:
        if not run.path(stage, "kept").exists():
            raise InputError("--stage", f"no kept records for stage {stage!r}; stages with records: "
                             + ", ".join(run.record_stages()))
        return run.frame(stage, "kept")
    final_stage, rows = kept_records(run)
    return records_frame(rows, final_stage or "")


def _query(df: pd.DataFrame, expr: str) -> pd.DataFrame:
    if not len(df):
        return df
    try:
        return df.query(expr, engine="python")
    except Exception as e:  # a user's pandas expression: any error is bad input, reported in one line
        raise InputError("--query", f"{type(e).__name__}: {e}; columns: {', '.join(map(str, df.columns))}") \
            from None


def _record_view(row: dict[str, Any]) -> dict[str, Any]:
    keep = ["id", "stage", "source", "reason", "instruction", "input", "output", "turns", "prompt", "chosen",
            "rejected", "margin", "is_classification", "nearest_instruction", "rouge_l", "parent_id", "root_id",
            "round", "operation", "details"]
    return {k: row[k] for k in keep if k in row and _shown(row[k])}


def _shown(v: Any) -> bool:
    if isinstance(v, (list, dict)):
        return bool(v)
    return v is not None and v != "" and not _isnan(v)


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and v != v


def _print_records(rows: list[dict[str, Any]], total: int, title: str) -> None:
    out.print(f"[bold]{escape(title)}[/]: showing {len(rows)} of {total}", highlight=False)
    for row in rows:
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column("field", style="bold cyan", no_wrap=True)
        table.add_column("value", overflow="fold")
        for key, value in _record_view(row).items():
            if key == "details":
                table.add_row(key, ", ".join(f"{escape(str(k))}={_clip(v, 200)}" for k, v in value.items()))
            elif key == "turns" and isinstance(value, list):  # a conversation's further turns, a line each
                table.add_row(key, "\n".join(_clip(f"{m.get('role', '?')}: {m.get('content', '')}")
                                              for m in value if isinstance(m, dict)))
            else:
                table.add_row(key, _clip(value))
        out.rule()
        out.print(table)


def inspect_command(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN_DIR [RUN_B]",
                                          help="A run directory; with two, compare them."),
    rejected: Optional[str] = typer.Option(None, "--rejected", metavar="REASON",
                                           help="Show rejected records of this reason ('all' for every reason)."),
    kept: bool = typer.Option(False, "--kept", help="Show kept records (the dataset's, or --stage's)."),
    stage: Optional[str] = typer.Option(None, "--stage", help="Limit records to one stage (templatize, bootstrap, "
                                        "evolve, filter, judge, select, conversation, preferences)."),
    query: Optional[str] = typer.Option(None, "--query", metavar="EXPR",
                                        help="Filter records with a pandas expression, e.g. "
                                        "\"output_words < 5 and source == 'bootstrap'\"."),
    sample: int = typer.Option(5, "--sample", "-n", min=0, help="How many records to show (random, seeded)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random sample."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    verbs: bool = typer.Option(True, "--verbs/--no-verbs", help="Parse verbs for the diversity figures."),
) -> None:
    """Summarize a run: kept and rejected per stage and reason, tokens, cost, time, diversity; browse records."""
    try:
        if len(run_dirs) > 2:
            raise InputError(str(run_dirs[2]), "inspect takes one run directory, or two to compare")
        runs = [RunData.open(d) for d in run_dirs]
        if len(runs) == 2:
            a, b = (summarize(r, parse_verbs=verbs) for r in runs)
            rows = compare(a, b)
            if as_json:
                typer.echo(json.dumps({"a": a, "b": b, "compare": rows}, indent=2, default=str))
            else:
                _print_compare(rows, runs[0].run_id, runs[1].run_id)
            return
        run = runs[0]
        if rejected is not None or kept or query:
            df = _select(run, stage, rejected)
            if query:
                df = _query(df, query)
            rows = df.to_dict(orient="records")
            shown = random.Random(seed).sample(rows, min(sample, len(rows))) if len(rows) > sample else rows
            title = f"rejected: {rejected}" if rejected is not None else f"kept ({stage or run.final_stage()})"
            if as_json:
                typer.echo(json.dumps({"total": len(rows), "shown": len(shown),
                                       "records": [_record_view(r) for r in shown]}, indent=2, default=str))
            else:
                _print_records(shown, len(rows), title + (f", query {query}" if query else ""))
            return
        summary = summarize(run, parse_verbs=verbs)
        if as_json:
            typer.echo(json.dumps(summary, indent=2, default=str))
        else:
            _print_summary(summary)
    except InputError as e:
        fail(e)
