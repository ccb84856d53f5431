"""Figures about a run, as plain dicts: what ``pipeline inspect`` prints (or dumps with --json) and what the
HTML report draws. Nothing here writes files or prints."""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..filters.novelty import NoveltyIndex
from ..io.readers import load_seeds
from ..runs.read import RECORD_STAGES, RunData, records_frame
from .verbs import verb_objects


def reason_counts(run: RunData, stage: str) -> Counter:
    return Counter(row.get("reason", "?") for row in run.rows(stage, "rejected"))


def stage_rows(run: RunData) -> list[dict[str, Any]]:
    """One row per stage: kept and rejected (counted from the files), rejections by reason, time, tokens, rates."""
    out = []
    for stage in run.stages():
        m = run.manifest.get("stages", {}).get(stage, {})
        if stage in RECORD_STAGES:
            kept, rejected = run.count(stage, "kept"), run.count(stage, "rejected")
            reasons = reason_counts(run, stage)
        elif stage == "export":
            kept, rejected, reasons = run.count("export", "kept"), 0, Counter()
        else:
            kept, rejected = m.get("kept", 0), m.get("rejected", 0)
            reasons = Counter(m.get("rejected_by_reason", {}))
        wall = m.get("wall_s")
        usage = m.get("usage") or {}
        seen = kept + rejected
        out.append({
            "stage": stage, "kept": kept, "rejected": rejected,
            "rejected_by_reason": dict(reasons.most_common()),
            "keep_rate": round(kept / seen, 4) if seen else None,
            "wall_s": wall,
            # Per minute of work: only for a run made in one session (a resumed stage's wall time is its last
            # session's, often a fast replay from the cache).
            "kept_per_min": (round(kept / (wall / 60), 2) if wall and stage in ("bootstrap", "evolve")
                             and len(run.manifest.get("sessions", [])) <= 1 else None),
            "requests": usage.get("requests"), "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"), "retries": usage.get("retries"),
            "done": run.is_done(stage),
        })
    return out


def overview(run: RunData) -> dict[str, Any]:
    m = run.manifest
    cfg = m.get("config") or {}
    teacher = cfg.get("teacher") or {}
    spent = m.get("spent") or {}
    tokens = m.get("tokens") or {}
    model = next((s.get("teacher_model") for s in m.get("stages", {}).values() if s.get("teacher_model")), None)
    return {
        "run_id": run.run_id, "dir": str(run.dir), "status": m.get("status"), "created_at": m.get("created_at"),
        "teacher_backend": teacher.get("backend"), "teacher_model": model or teacher.get("model") or None,
        "sessions": len(m.get("sessions", [])) or 1, "wall_s": m.get("wall_s"),
        "requests": spent.get("requests"),
        "prompt_tokens": spent.get("prompt_tokens", tokens.get("prompt")),
        "completion_tokens": spent.get("completion_tokens", tokens.get("completion")),
        "cost_usd": spent.get("cost_usd", "unknown (no price for this model)"),
        "seeds": m.get("seeds", {}).get("tasks") or m.get("input", {}).get("tasks"),
        "dataset_rows": None if run.flat else run.count("export", "kept"),
        "stopped_because": m.get("stopped_because"),
    }


def _distinct_n(texts: list[str], n: int) -> float | None:
    grams: list[tuple[str, ...]] = []
    for t in texts:
        words = t.lower().split()
        grams.extend(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return round(len(set(grams)) / len(grams), 4) if grams else None


def seed_similarity(run: RunData, instructions: list[str]) -> list[float] | None:
    """ROUGE-L (rouge-score's F, exact) of each instruction to its nearest seed instruction; None without seeds."""
    files = run.seed_files()
    if not files:
        return None
    try:
        seeds = load_seeds(files)
    except InputError:
        return None
    index = NoveltyIndex(exact_nearest=True)
    for i, text in enumerate(dict.fromkeys(s.instruction for s in seeds)):
        index.add(f"seed-{i}", text)
    return [index.nearest(text).score for text in instructions]


def _stats(values) -> dict[str, float | None]:
    arr = np.asarray(list(values), dtype=float)
    if not len(arr):
        return {"mean": None, "median": None, "p90": None, "max": None}
    return {"mean": round(float(arr.mean()), 3), "median": round(float(np.median(arr)), 3),
            "p90": round(float(np.percentile(arr, 90)), 3), "max": round(float(arr.max()), 3)}


def diversity(df: pd.DataFrame, pairs: list[tuple[str | None, str | None]] | None = None,
              seed_scores: list[float] | None = None) -> dict[str, Any]:
    """How varied the instructions are: uniqueness, distinct n-grams, verbs and verb-object pairs, lengths,
    similarity to the seeds."""
    texts = [t for t in df["instruction"].tolist()] if len(df) else []
    norm = [" ".join(t.lower().split()) for t in texts]
    first = Counter(t.split()[0].strip(".,:;!?\"'") for t in norm if t)
    out: dict[str, Any] = {
        "records": len(texts),
        "unique_instructions": len(set(norm)),
        "distinct_1": _distinct_n(texts, 1), "distinct_2": _distinct_n(texts, 2),
        "unique_first_words": len(first),
        "top_first_words": first.most_common(5),
        "instruction_words": _stats(df["instruction_words"]) if len(df) else _stats([]),
        "output_words": _stats(df["output_words"]) if len(df) else _stats([]),
    }
    if pairs is not None:
        verbs = Counter(v for v, _ in pairs if v)
        with_pair = [(v, o) for v, o in pairs if v and o]
        out.update({"verbs_parsed": len(pairs), "unique_verbs": len(verbs),
                    "unique_verb_object_pairs": len(set(with_pair)),
                    "share_with_verb_object": round(len(with_pair) / len(pairs), 4) if pairs else None,
                    "top_verbs": verbs.most_common(5)})
    if seed_scores is not None:
        s = _stats(seed_scores)
        out["rouge_l_to_nearest_seed"] = s
        out["share_above_0_7"] = (round(float(np.mean(np.asarray(seed_scores) > 0.7)), 4)
                                  if seed_scores else None)
    return out


def evolve_stats(run: RunData) -> dict[str, Any] | None:
    return (run.manifest.get("stages", {}).get("evolve") or {}).get("stats")


def data_quality(run: RunData) -> dict[str, Any]:
    """Judge scores, selection, decontamination and repeated responses: score histograms (judge stage), what the
    select stage's policies kept (and what each policy alone would have), contamination hits per benchmark (over
    every stage's rejections) and the filter's repeated-output figures. Empty parts are None."""
    stages = run.manifest.get("stages", {})
    judge = stages.get("judge") or {}
    sel = stages.get("select") or {}
    hits: Counter = Counter()
    items: dict[str, set] = {}
    for stage in run.record_stages():
        for row in run.rows(stage, "rejected"):
            if row.get("reason") == "contaminated":
                d = row.get("details") or {}
                hits[d.get("benchmark", "?")] += 1
                items.setdefault(d.get("benchmark", "?"), set()).add(d.get("item"))
    flt = (stages.get("filter") or {}).get("stats") or {}
    return {
        "scores": ({"model": judge.get("judge_model"), "histograms": judge.get("histograms"),
                    "missing": judge.get("missing")} if judge.get("histograms") else None),
        "selection": ({"policies": sel.get("policies"), "score": sel.get("score"), "input": sel.get("input"),
                       "kept": sel.get("kept"), "steps": (sel.get("stats") or {}).get("policies"),
                       "each_policy_alone": sel.get("each_policy_alone")} if sel else None),
        "contamination": ({b: {"records": n, "items": len(items[b])} for b, n in hits.most_common()}
                          if hits or flt.get("contamination") else None),
        "responses": flt.get("responses"),
    }


# The scores of an evaluation (``pipeline.train.evaluate``): label, key in table.json's "models" (the judge score
# is in its "judge"), digits. BLEU is sacrebleu's, on 0-100.
EVAL_METRICS = (("ROUGE-L", "rouge_l", 3), ("BLEU", "bleu", 2), ("accuracy", "accuracy", 3),
                ("end-of-turn rate", "finished", 3), ("toxicity", "toxicity", 3), ("judge score", "judge", 3))


def ci_text(v: dict[str, Any] | None, digits: int = 3, signed: bool = False) -> str:
    """A score with its 95% interval, ``value [lo, hi]``; "–" when there is none."""
    if not isinstance(v, dict) or v.get("value") is None:
        return "–"
    f = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    ci = v.get("ci")
    return f.format(v["value"]) + (f" [{f.format(ci[0])}, {f.format(ci[1])}]" if ci else "")


def eval_figures(table: dict[str, Any] | None) -> dict[str, Any] | None:
    """An evaluation table (``RunData.eval_table``) as one row per model: its scores (the ``EVAL_METRICS``, each
    ``{"value", "ci", "n"}`` or None), the paired difference to the base model, the judge's record against the base
    model, what it was tuned on (and, for a data comparison, how many records its selection kept). ``metrics``: the
    ``EVAL_METRICS`` that some model has."""
    if table is None:
        return None
    judges = table.get("judge") or {}
    adapters = table.get("adapters") or {}
    kept = (table.get("selections") or {}).get("kept") or {}
    rows = []
    for name, m in table["models"].items():
        m, info, j = m or {}, adapters.get(name) or {}, judges.get(name) or {}
        rows.append({
            "model": name, **{key: m.get(key) for _, key, _ in EVAL_METRICS if key != "judge"},
            "judge": j.get("score"),
            "judge_record": ({k: j.get(k) for k in ("wins", "ties", "losses", "unjudged", "answered_A", "answered_B",
                                                    "answered_tie", "invalid")} if j else None),
            "reference_loss": m.get("reference_loss"), "mean_new_tokens": m.get("mean_new_tokens"),
            "difference": (table.get("differences") or {}).get(name),
            "train_rows": info.get("train_rows"), "steps": info.get("steps"), "train_loss": info.get("train_loss"),
            "kept": kept.get(name),
        })
    metrics = [{"label": label, "key": key, "digits": digits} for label, key, digits in EVAL_METRICS
               if any((row[key] or {}).get("value") is not None for row in rows)]
    return {
        "examples": table.get("examples"), "tasks_source": table.get("tasks_source"),
        "classification_tasks": table.get("classification_tasks"), "base_model": table.get("base_model"),
        "judge_model": table.get("judge_model"), "toxicity_classifier": table.get("toxicity_classifier"),
        "bootstrap_rounds": (table.get("settings") or {}).get("bootstrap_rounds"),
        "selections": table.get("selections"), "note": table.get("note"), "wall_s": table.get("wall_s"),
        "metrics": metrics, "models": rows,
    }


def evaluation(run: RunData) -> dict[str, Any]:
    """The run's evaluations: ``eval`` (``pipeline eval``: base vs the tuned adapter) and ``compare`` (``pipeline
    compare-data``: base vs one adapter per data selection), each ``eval_figures`` or None."""
    return {kind: eval_figures(run.eval_table(kind)) for kind in ("eval", "compare")}


def summarize(run: RunData, *, parse_verbs: bool = True) -> dict[str, Any]:
    """Everything ``inspect`` shows for one run."""
    final = records_frame(run.final_rows(), run.final_stage() or "")
    pairs = verb_objects(final["instruction"].tolist()) if parse_verbs and len(final) else None
    return {
        "overview": overview(run),
        "stages": stage_rows(run),
        "final_stage": run.final_stage(),
        "diversity": diversity(final, pairs, seed_similarity(run, final["instruction"].tolist())),
        "quality": data_quality(run),
        "evaluation": evaluation(run),
    }


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Side by side figures of two summaries: counts, rejection reasons, diversity and evaluation scores."""
    rows: list[dict[str, Any]] = []

    def add(name: str, va, vb) -> None:
        delta = None
        if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and not isinstance(va, bool):
            delta = round(vb - va, 4)
        rows.append({"figure": name, "a": va, "b": vb, "delta": delta})

    for key in ("status", "teacher_model", "wall_s", "requests", "prompt_tokens", "completion_tokens", "cost_usd",
                "dataset_rows"):
        add(key, a["overview"].get(key), b["overview"].get(key))
    sa = {s["stage"]: s for s in a["stages"]}
    sb = {s["stage"]: s for s in b["stages"]}
    for stage in [s for s in sa] + [s for s in sb if s not in sa]:
        for key in ("kept", "rejected"):
            add(f"{stage}.{key}", sa.get(stage, {}).get(key), sb.get(stage, {}).get(key))
        reasons = dict(sa.get(stage, {}).get("rejected_by_reason", {}))
        other = sb.get(stage, {}).get("rejected_by_reason", {})
        for reason in list(reasons) + [r for r in other if r not in reasons]:
            add(f"{stage}.rejected:{reason}", reasons.get(reason, 0), other.get(reason, 0))
    da, db = a["diversity"], b["diversity"]
    for key in ("records", "unique_instructions", "distinct_1", "distinct_2", "unique_first_words", "unique_verbs",
                "unique_verb_object_pairs"):
        if key in da or key in db:
            add(f"diversity.{key}", da.get(key), db.get(key))
    for key in ("instruction_words", "output_words", "rouge_l_to_nearest_seed"):
        if key in da or key in db:
            add(f"diversity.{key}.mean", (da.get(key) or {}).get("mean"), (db.get(key) or {}).get("mean"))
    for kind in ("eval", "compare"):  # the scores of the models each run evaluated, where either has them
        ma = {m["model"]: m for m in ((a.get("evaluation") or {}).get(kind) or {}).get("models", [])}
        mb = {m["model"]: m for m in ((b.get("evaluation") or {}).get(kind) or {}).get("models", [])}
        for model in list(ma) + [m for m in mb if m not in ma]:
            for key in ("rouge_l", "judge"):
                va = ((ma.get(model) or {}).get(key) or {}).get("value")
                vb = ((mb.get(model) or {}).get(key) or {}).get("value")
                if va is not None or vb is not None:
                    add(f"{kind}.{model}.{key}", va, vb)
    return rows
