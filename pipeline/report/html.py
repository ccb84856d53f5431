"""``pipeline report RUN_DIR``: one self-contained HTML file (inline SVG charts and CSS, no scripts, nothing
fetched) that shows what a run kept, what it rejected and why, how diverse the kept instructions are, and how the
models tuned on them did (``pipeline eval``, ``pipeline compare-data``) when the run was evaluated."""
from __future__ import annotations

import random
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2

from ..io.files import write_text_atomic
from ..records import user_prompt
from ..runs.read import RunData, records_frame
from . import plots
from .summary import (ci_text, conversations, data_quality, diversity, evaluation, evolve_stats, kept_records,
                      overview, preference_figures, seed_similarity, sources, stage_rows)
from .verbs import first_words, parser_name, top_pairs, verb_objects

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"  # pipeline/templates, the package data
SAMPLE_TEXT_CHARS = 600
EVAL_SAMPLE = 5  # result rows shown per evaluation
CHAT_SAMPLE = 2  # conversations and preference pairs shown


def _clip(text: str, n: int = SAMPLE_TEXT_CHARS) -> str:
    text = text or ""
    return text if len(text) <= n else text[:n].rstrip() + " …"


def _sample(rows: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    rows = list(rows)
    if len(rows) > n:
        rows = random.Random(seed).sample(rows, n)
    return rows


def _rejected_samples(run: RunData, per_reason: int, seed: int) -> list[dict[str, Any]]:
    """A few rejected records of every reason, with the details that explain the rejection."""
    by_reason: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for stage in run.record_stages():
        for row in run.rows(stage, "rejected"):
            by_reason.setdefault((stage, row.get("reason", "?")), []).append(row)
    out = []
    for (stage, reason), rows in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        for row in _sample(rows, per_reason, seed):
            details = dict(row.get("details") or {})
            out.append({"stage": stage, "reason": reason, "instruction": _clip(row.get("instruction", ""), 300),
                        "output": _clip(row.get("output", ""), 200),
                        "details": ", ".join(f"{k}={_clip(str(v), 160)}" for k, v in details.items())})
    return out


def _eval_samples(run: RunData, kind: str, seed: int) -> list[dict[str, Any]]:
    """A few result rows of an evaluation: the task, the base model's and a tuned model's answers, the judge's
    verdicts (the tuned answer was A in the first order, B in the second) and reasons."""
    out = []
    for row in run.eval_samples(kind, EVAL_SAMPLE, seed):
        judge = row.get("judge") or {}
        reasons = [r for r in judge.get("reasons") or [] if r]
        out.append({"task_id": row.get("task_id", ""), "model": row.get("model", ""),
                    "prompt": _clip(row.get("prompt", ""), 400), "reference": _clip(row.get("reference", ""), 300),
                    "base_answer": _clip(row.get("base_answer", ""), 400), "answer": _clip(row.get("answer", ""), 400),
                    "rouge_l": (row.get("scores") or {}).get("rouge_l"),
                    "verdicts": " / ".join(map(str, judge.get("verdicts") or [])), "judge_score": judge.get("score"),
                    "reasons": [_clip(r, 200) for r in reasons]})
    return out


def _conversation_samples(run: RunData, n: int, seed: int) -> list[dict[str, Any]]:
    """A few conversations of the conversation stage (records that got follow-up turns), as chat messages."""
    rows = [r for r in run.rows("conversation", "kept") if r.get("turns")]
    out = []
    for row in _sample(rows, n, seed):
        messages = [{"role": "user", "content": user_prompt(row.get("instruction") or "", row.get("input") or "")},
                    {"role": "assistant", "content": row.get("output") or ""}, *(row.get("turns") or [])]
        out.append({"id": row.get("id", ""), "source": row.get("source", ""),
                    "turns": sum(m.get("role") == "user" for m in messages),
                    "messages": [{"role": m.get("role", "?"), "content": _clip(m.get("content", ""), 900)}
                                 for m in messages]})
    return out


def _judge_orders(pair: dict[str, Any]) -> list[dict[str, Any]]:
    """The judge's verdicts and reasons on the chosen answer against the rejected one, one per order (the pair's
    first candidate was A in the first request, B in the second)."""
    texts = [c.get("text") for c in pair.get("candidates") or []]
    if pair.get("chosen") not in texts or pair.get("rejected") not in texts:
        return []
    best, worst = texts.index(pair["chosen"]), texts.index(pair["rejected"])
    for v in pair.get("verdicts") or []:
        if {v.get("first"), v.get("second")} == {best, worst}:
            verdicts, reasons = list(v.get("verdicts") or []), list(v.get("reasons") or [])
            return [{"order": "chosen as " + ("A" if (v.get("first") == best) == (i == 0) else "B"),
                     "verdict": verdicts[i] if i < len(verdicts) else None,
                     "reason": _clip(str(reasons[i]), 300) if i < len(reasons) and reasons[i] else ""}
                    for i in range(max(len(verdicts), len(reasons)))]
    return []


def _preference_samples(run: RunData, n: int, seed: int) -> list[dict[str, Any]]:
    """A few preference pairs: prompt, chosen, rejected, margin, every candidate's win share and the judge's
    verdicts and reasons on chosen against rejected."""
    out = []
    for row in _sample(run.rows("preferences", "kept"), n, seed):
        cands = [{"label": "own answer" if c.get("temperature") is None else f"t={c.get('temperature')}",
                  "share": c.get("share"), "chosen": c.get("text") == row.get("chosen"),
                  "rejected": c.get("text") == row.get("rejected")} for c in row.get("candidates") or []]
        out.append({"id": row.get("id", ""), "source": row.get("source", ""),
                    "prompt": _clip(row.get("prompt", ""), 500),
                    "chosen": _clip(row.get("chosen", ""), 700), "rejected": _clip(row.get("rejected", ""), 700),
                    "margin": row.get("margin"), "chosen_is_original": row.get("chosen_is_original"),
                    "candidates": cands, "judge": _judge_orders(row)})
    return out


def build_context(run: RunData, sample: int = 25, seed: int = 0) -> dict[str, Any]:
    final_stage, rows = kept_records(run)
    final = records_frame(rows, final_stage or "")
    instructions = final["instruction"].tolist()
    pairs = verb_objects(instructions) if instructions else None
    parser = parser_name()
    if pairs is not None:  # as in the paper: the instructions with a verb-direct object structure
        chart_pairs = [(v, o) for v, o in pairs if v and o]
        verb_note = (f"the verb nearest the root and its first direct object, parsed with {parser}; "
                     f"{len(chart_pairs)} of {len(pairs)} kept instructions"
                     + (" (a random sample)" if len(pairs) < len(instructions) else "") + " have this structure")
    else:
        chart_pairs = first_words(instructions)
        verb_note = "spaCy is not installed (pip install 'instruct-pipeline[report]'): first words shown instead"
    scores = seed_similarity(run, instructions)
    seed_score = dict(zip((r.get("id") for r in rows), scores or []))
    stages = stage_rows(run)
    quality = data_quality(run)
    src = sources(run, rows)
    conv = conversations(run)
    prefs = preference_figures(run)
    evals = evaluation(run)
    threshold = ((run.manifest.get("config") or {}).get("filter") or {}).get("rouge_threshold", 0.7)
    samples = [{"id": r.get("id", ""), "source": r.get("source", ""), "instruction": _clip(r.get("instruction", "")),
                "input": _clip(r.get("input", ""), 300), "output": _clip(r.get("output", "")),
                "seed_rouge_l": seed_score.get(r.get("id"))} for r in _sample(rows, sample, seed)]
    lengths = {"instruction": final["instruction_words"].tolist(),
               "input (non-empty)": [n for n in final["input_words"].tolist() if n],
               "output": final["output_words"].tolist()}
    return {
        "generated_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "overview": overview(run),
        "stages": stages,
        "final_stage": final_stage,
        "diversity": diversity(final, pairs, scores),
        "verb_note": verb_note,
        "charts": {
            "verbs": plots.verb_sunburst(top_pairs(chart_pairs), "top 20 verbs and their top 4 direct objects"
                                         if pairs is not None else "top 20 first words"),
            "lengths": plots.histograms(lengths, "lengths of the kept records", "words"),
            "seed_rouge": plots.similarity_histogram(scores or [], threshold,
                                                     "similarity of kept instructions to the seeds"),
            "reasons": plots.reason_bars(stages, "why candidates were rejected"),
            "evolve": plots.evolve_bars(evolve_stats(run)),
            "scores": plots.score_bars((quality["scores"] or {}).get("histograms"), "judge scores"),
            "eval": plots.eval_bars((evals["eval"] or {}).get("models"), "base vs tuned on the held-out tasks"),
            "compare": plots.eval_bars((evals["compare"] or {}).get("models"),
                                       "one adapter per data selection, on the held-out tasks"),
            "sources": plots.count_bars([
                ("by source", {r["source"]: r["rows"] for r in src["by_source"]}, "source", "rows"),
                ("template rows by labelled dataset",
                 {d["dataset"]: d["in_dataset"] for d in (src["templatize"] or {}).get("datasets", [])},
                 "dataset", "rows")], "the exported dataset's rows") if src else None,
            "turns": plots.count_bars([
                ("turns per conversation", conv["turns_per_conversation"], "user turns", "conversations"),
                ("failed turns by reason", conv["failed_by_reason"], "reason", "failed turns")],
                "conversations") if conv else None,
            "margins": plots.count_bars([
                ("kept pairs by margin", prefs["margins"], "margin (chosen's win share − rejected's)", "pairs"),
                ("records without a pair", prefs["dropped_by_reason"], "reason", "records")],
                "preference pairs") if prefs else None,
        },
        "quality": quality,
        "sources": src,
        "conversations": conv,
        "preferences": prefs,
        "conversation_samples": _conversation_samples(run, CHAT_SAMPLE, seed) if conv else [],
        "preference_samples": _preference_samples(run, CHAT_SAMPLE, seed) if prefs else [],
        "evaluation": evals,
        "eval_samples": {kind: _eval_samples(run, kind, seed) for kind in evals if evals[kind]},
        "evolve": evolve_stats(run),
        "samples": samples,
        "rejected_samples": _rejected_samples(run, per_reason=3, seed=seed),
        "threshold": threshold,
    }


def render(context: dict[str, Any]) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda v: "–" if v is None else (f"{v:,}" if isinstance(v, int) else
                                                          f"{v:,.2f}" if isinstance(v, float) else str(v))
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.1f}%"
    env.filters["ci"] = ci_text  # a score {"value", "ci"}: "value [lo, hi]"
    return env.get_template("report.html.j2").render(**context)


def write_report(run_dir: str | Path, out: str | Path | None = None, sample: int = 25, seed: int = 0) -> Path:
    """Write the report (default ``RUN_DIR/report.html``) in one atomic step and return its path."""
    run = RunData.open(run_dir)
    path = Path(out) if out else run.report_path
    write_text_atomic(path, render(build_context(run, sample=sample, seed=seed)))
    return path
