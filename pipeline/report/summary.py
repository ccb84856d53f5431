"""Figures about a run, as plain dicts: what ``pipeline inspect`` prints (or dumps with --json) and what the
HTML report draws. Nothing here writes files or prints."""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..filters.novelty import NoveltyIndex
from ..io.files import count_lines
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


# The stages that make records of other kinds than the paper's (labelled datasets through templates,
# conversations, preference pairs): a run with any of them gets the sources, conversation and preference figures.
SOURCE_STAGES = ("templatize", "conversation", "preferences")
MARGIN_BINS = ("0.00-0.25", "0.25-0.50", "0.50-0.75", "0.75-1.00")  # ``stages.preferences.margin_histogram``'s


def _share(n: int | None, total: int | None) -> float | None:
    return round(n / total, 4) if n is not None and total else None


def _numeric_keys(hist: dict[str, int]) -> dict[str, int]:
    """A histogram keyed by numbers as text ("1", "2", ... "10") in numeric order."""
    def key(k: str) -> tuple[float, str]:
        try:
            return float(k), k
        except ValueError:
            return float("inf"), k
    return {str(k): int(hist[k]) for k in sorted(hist, key=lambda k: key(str(k)))}


def kept_records(run: RunData) -> tuple[str | None, list[dict[str, Any]]]:
    """The records behind the dataset and the stage they come from (``RunData.final_stage``, ``final_rows``)."""
    return run.final_stage(), run.final_rows()


def sources(run: RunData, rows: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """What the exported dataset is made of, for a run with templatize, conversation or preferences (None for
    another): the records export writes (``RunData.final_rows``, or ``rows``) counted by ``source`` (seed,
    bootstrap, evolve, template) and, when templatize ran, per labelled dataset and template: what the stage made
    (the manifest's figures) and how many of those rows are in the dataset."""
    if not any(s in run.stages() for s in SOURCE_STAGES):
        return None
    rows = run.final_rows() if rows is None else rows
    by_source = Counter(str(r.get("source") or "?") for r in rows)
    exported = "export" in run.stages() or run.dataset_file.exists()
    out: dict[str, Any] = {
        "stage": run.export_stage(),  # None: the generated records (templatize, bootstrap, evolve)
        "files": [str(p.relative_to(run.dir)) for p in run.final_files()],
        "rows": len(rows),
        "dataset_rows": run.count("export", "kept") if exported else None,
        "by_source": [{"source": src, "rows": n, "share": _share(n, len(rows))} for src, n in by_source.most_common()],
        "templatize": None,
    }
    if "templatize" in run.stages():
        t = run.stage_stats("templatize")
        in_data: Counter = Counter()
        in_template: Counter = Counter()
        for r in rows:
            if r.get("source") == "template":
                meta = r.get("meta") or {}
                in_data[str(meta.get("dataset", "?"))] += 1
                in_template[(str(meta.get("dataset", "?")), str(meta.get("template", "?")))] += 1
        made = t.get("datasets") or {}
        datasets = []
        for name in list(made) + [n for n in in_data if n not in made]:
            d = made.get(name) or {}
            per = d.get("templates") or {}
            ids = list(per) + [tid for dn, tid in in_template if dn == name and tid not in per]
            datasets.append({
                "dataset": name, "task": d.get("task"), "origin": d.get("origin"), "rows_in": d.get("rows_in"),
                "records": d.get("records"), "rejected": d.get("rejected"), "in_dataset": in_data.get(name, 0),
                "templates": [{"template": tid, "records": (per.get(tid) or {}).get("rows"),
                               "skipped": (per.get(tid) or {}).get("skipped"),
                               "rejected": (per.get(tid) or {}).get("rejected"),
                               "in_dataset": in_template.get((name, tid), 0)} for tid in ids],
            })
        out["templatize"] = {"kept": run.count("templatize", "kept"), "rejected": run.count("templatize", "rejected"),
                             "rejected_by_reason": dict(reason_counts(run, "templatize").most_common()),
                             "shots": t.get("shots"), "max_per_template": t.get("max_per_template"),
                             "datasets": datasets}
    return out


def conversations(run: RunData) -> dict[str, Any] | None:
    """The conversation stage's figures (None when it did not run): conversations (every input record is kept),
    how many got follow-up turns, turns per conversation (the stage's histogram; the dataset's, from export, beside
    it) and the failed turns by reason, side (user: the simulated follow-up; assistant: the answer) and turn."""
    if "conversation" not in run.stages():
        return None
    m = run.stage_stats("conversation")
    turns = _numeric_keys(m.get("turns_per_conversation") or {})
    if not turns:  # a stage that never recorded its figures: count its file
        turns = _numeric_keys(Counter(str(1 + len(r.get("turns") or []) // 2)
                                      for r in run.rows("conversation", "kept")))
    failed = run.rows("conversation", "rejected")
    total = sum(turns.values())
    multi = sum(n for k, n in turns.items() if k != "1")
    target = m.get("target_turns")
    reached = (sum(n for k, n in turns.items() if k.isdigit() and int(k) >= int(target))
               if isinstance(target, int) else None)
    weighted = sum(float(k) * n for k, n in turns.items() if k.replace(".", "", 1).isdigit())
    return {
        "conversations": run.count("conversation", "kept"), "input": m.get("input"), "extended": m.get("extended"),
        "target_turns": target, "multi_turn": multi, "share_multi_turn": _share(multi, total),
        "reached_target": reached, "mean_turns": round(weighted / total, 3) if total else None,
        "turns_per_conversation": turns,
        "turns_per_row": _numeric_keys(run.stage_stats("export").get("turns_per_row") or {}) or None,
        "failed_turns": len(failed),
        "failed_by_reason": dict(Counter(str(r.get("reason", "?")) for r in failed).most_common()),
        "failed_by_side": dict(Counter(str((r.get("details") or {}).get("side", "?")) for r in failed).most_common()),
        "failed_at_turn": _numeric_keys(Counter(str((r.get("details") or {}).get("turn", "?")) for r in failed)),
        "teacher_model": m.get("teacher_model"),
    }


def preference_figures(run: RunData) -> dict[str, Any] | None:
    """The preferences stage's figures (None when it did not run): pairs kept and records dropped by reason
    (counted from its files), the margin histogram, mean margin and how often the record's own answer was chosen
    (the manifest's; counted from the pairs when it has none), and the pairs export wrote."""
    if "preferences" not in run.stages():
        return None
    m = run.stage_stats("preferences")
    pairs = run.count("preferences", "kept")
    reasons = reason_counts(run, "preferences")
    margins, mean, original = m.get("margins"), m.get("mean_margin"), m.get("chosen_is_original")
    if margins is None or original is None or (mean is None and pairs):
        rows = run.rows("preferences", "kept")
        values = [float(r["margin"]) for r in rows if isinstance(r.get("margin"), (int, float))]
        margins = dict.fromkeys(MARGIN_BINS, 0)
        for v in values:
            margins[MARGIN_BINS[min(max(int(v / 0.25), 0), 3)]] += 1
        mean = round(sum(values) / len(values), 4) if values else None
        original = sum(bool(r.get("chosen_is_original")) for r in rows)
    export = run.stage_stats("export")
    exported = export.get("preference_pairs")
    if exported is None and run.preferences_file.exists():
        exported = count_lines(run.preferences_file)
    cfg = (run.manifest.get("config") or {}).get("preferences") or {}
    dropped = sum(reasons.values())
    return {
        "input": m.get("input"), "pairs": pairs, "dropped": dropped,
        "dropped_by_reason": dict(reasons.most_common()), "keep_rate": _share(pairs, pairs + dropped),
        "margins": dict(margins), "mean_margin": mean, "min_margin": cfg.get("min_margin"),
        "chosen_is_original": original, "share_chosen_is_original": _share(original, pairs),
        "exported_pairs": exported, "teacher_model": m.get("teacher_model"), "judge_model": m.get("judge_model"),
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
    stage, rows = kept_records(run)
    final = records_frame(rows, stage or "")
    pairs = verb_objects(final["instruction"].tolist()) if parse_verbs and len(final) else None
    return {
        "overview": overview(run),
        "stages": stage_rows(run),
        "final_stage": stage,
        "diversity": diversity(final, pairs, seed_similarity(run, final["instruction"].tolist())),
        "quality": data_quality(run),
        "sources": sources(run, rows),
        "conversations": conversations(run),
        "preferences": preference_figures(run),
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
    src_a = {r["source"]: r["rows"] for r in (a.get("sources") or {}).get("by_source", [])}
    src_b = {r["source"]: r["rows"] for r in (b.get("sources") or {}).get("by_source", [])}
    for src in list(src_a) + [s for s in src_b if s not in src_a]:  # dataset rows per source, where either has them
        add(f"sources.{src}", src_a.get(src, 0), src_b.get(src, 0))
    ca, cb = a.get("conversations") or {}, b.get("conversations") or {}
    if ca or cb:
        for key in ("multi_turn", "mean_turns", "failed_turns"):
            add(f"conversation.{key}", ca.get(key), cb.get(key))
    pa, pb = a.get("preferences") or {}, b.get("preferences") or {}
    if pa or pb:
        for key in ("pairs", "dropped", "mean_margin", "share_chosen_is_original"):
            add(f"preferences.{key}", pa.get(key), pb.get(key))
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
