"""Base model against the tuned adapter on the held-out split of ``pipeline tune``.

For every held-out row both models answer the prompt (greedy decoding, batched, up to ``eval.max_new_tokens``):
the base model is the tuned model with its adapter disabled, so the weights are loaded once. Scores:

- ROUGE-L F of each answer against the dataset's reference answer (``pipeline.filters.rouge.rouge_l``, the same
  numbers as rouge-score 0.1.2);
- held-out loss: mean negative log-likelihood per reference completion token (the training objective) under each
  model;
- how often each model ends its answer itself (the end-of-turn token) rather than at the token limit;
- optionally (``eval.judge``) a pairwise judge win rate: the configured teacher sees the instruction, the reference
  and both answers in random A/B order (``prompts/judge_pairwise.j2``) and answers A, B or tie.

Writes ``eval_table.json``, ``eval_table.md`` and ``generations.jsonl`` (one line per example) to the output
directory (default ``<run>/eval``).
"""
from __future__ import annotations

import json
import random
import re
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from ..config import Decoding, EvalConfig, TeacherConfig
from ..errors import InputError
from ..filters.rouge import rouge_l
from ..io.files import read_jsonl, write_json_atomic, write_jsonl_atomic, write_text_atomic
from ..progress import Progress, no_progress
from ..prompts import render_messages
from ..stages.parsing import json_choice
from ..teachers import ChatRequest, make_teacher
from ..teachers.formats import PAIRWISE
from .model import end_of_turn_token, load_model, load_tokenizer, need_tune_extra, pick_precision

STAGE = "eval"
JUDGE_TEMPLATE = "judge_pairwise"


# ---------------------------------------------------------------------------------------------- generation


def _chat_text(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def generate(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, batch_size: int,
             eos_ids: list[int], on_batch: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Greedy answers for chat prompts, in batches (left padding). Each: text, new_tokens, finished."""
    import torch
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    gen_cfg = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos_ids,
                               pad_token_id=tokenizer.pad_token_id)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out: list[dict[str, Any]] = []
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [_chat_text(tokenizer, p, True) for p in prompts[start:start + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.inference_mode():
                seqs = model.generate(**enc, generation_config=gen_cfg)
            for row in seqs[:, enc["input_ids"].shape[1]:].tolist():
                stop = next((i for i, t in enumerate(row) if t in eos_ids), None)
                ids = row if stop is None else row[:stop]
                out.append({"text": tokenizer.decode(ids, skip_special_tokens=True).strip(),
                            "new_tokens": len(ids) + (stop is not None), "finished": stop is not None})
            if on_batch:
                on_batch(len(out))
    finally:
        tokenizer.padding_side = side
    return out


def completion_nll(model, tokenizer, prompt: list[dict], completion: list[dict], max_length: int) -> tuple[float, int]:
    """Summed negative log-likelihood of the completion tokens (end-of-turn included) and their count."""
    import torch

    p_ids = tokenizer(_chat_text(tokenizer, prompt, True), add_special_tokens=False)["input_ids"]
    full = tokenizer(_chat_text(tokenizer, prompt + completion, False), add_special_tokens=False)["input_ids"]
    k = next((i for i, (a, b) in enumerate(zip(p_ids, full)) if a != b), min(len(p_ids), len(full)))
    full = full[:max_length]
    if k >= len(full):
        return 0.0, 0
    device = next(model.parameters()).device
    ids = torch.tensor([full], device=device)
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, :-1].float()
    targets = ids[0, 1:]
    mask = torch.zeros_like(targets, dtype=torch.bool)
    mask[max(k - 1, 0):] = True
    nll = torch.nn.functional.cross_entropy(logits[mask], targets[mask], reduction="sum")
    return float(nll), int(mask.sum())


# -------------------------------------------------------------------------------------------------- judge

# A verdict is A, B or tie said as a verdict: alone or first ("B.", "**A**", "A is better"), or after a naming word
# ("Answer B", "the better response is A", "I choose B"). A reply that merely starts with the article "A"
# ("A colour wheel has ...") is not a verdict.
_VERDICT_PATTERNS = [
    re.compile(r"^[\W_]*(A|B|(?i:tie))(?=[\W_]*$|[^\S\n]*\n|\s*[.,:;!)\]*]|\s+(?i:is|wins)\b)"),
    re.compile(r"\b(?i:answer|option|response|candidate|choice|choose|pick|prefer)(?:\s+(?i:is))?\s*:?\s*[(*]*(A|B)\b"),
    re.compile(r"\b(?i:it'?s a )?((?i:tie))\b"),
]


def parse_verdict(text: str) -> str:
    """'A', 'B', 'tie' or 'invalid' (nothing that reads as a verdict). ``{"verdict": "A"}`` (structured outputs)
    first, then the words."""
    choice = json_choice(text, "verdict", ["A", "B", "tie"])
    if choice is not None:
        return choice
    text = text.strip()
    for pattern in _VERDICT_PATTERNS:
        m = pattern.search(text)
        if m:
            v = m.group(1)
            return "tie" if v.lower() == "tie" else v
    return "invalid"


def judge_pairs(teacher, rows: list[dict], decoding: Decoding, seed: int) -> list[dict[str, Any]]:
    """One judge request per row, the tuned answer at A or B at random (seeded). Returns per-row results."""
    rng = random.Random(seed)
    orders, requests = [], []
    for row in rows:
        tuned_first = rng.random() < 0.5
        a, b = (row["tuned"], row["base"]) if tuned_first else (row["base"], row["tuned"])
        orders.append(tuned_first)
        requests.append(ChatRequest(render_messages(JUDGE_TEMPLATE, instruction=row["prompt_text"],
                                                    reference=row["reference"], answer_a=a or "(empty)",
                                                    answer_b=b or "(empty)"), decoding,
                                    format=PAIRWISE if getattr(teacher, "structured", "off") != "off" else None))
    results = []
    for tuned_first, completion in zip(orders, teacher.generate(requests)):
        verdict = parse_verdict(completion.text)
        if verdict in ("A", "B"):
            winner = "tuned" if (verdict == "A") == tuned_first else "base"
        else:
            winner = verdict
        results.append({"tuned_position": "A" if tuned_first else "B", "verdict": verdict, "winner": winner,
                        "raw": completion.text.strip()[:200]})
    return results


# --------------------------------------------------------------------------------------------------- table


def _side(rows: list[dict], key: str, nll: tuple[float, int]) -> dict[str, Any]:
    scores = [r[f"{key}_rouge_l"] for r in rows]
    return {
        "rouge_l_mean": round(statistics.fmean(scores), 4) if scores else None,
        "rouge_l_median": round(statistics.median(scores), 4) if scores else None,
        "heldout_loss": round(nll[0] / nll[1], 4) if nll[1] else None,
        "finished_rate": round(sum(r[f"{key}_finished"] for r in rows) / len(rows), 4) if rows else None,
        "mean_new_tokens": round(statistics.fmean(r[f"{key}_new_tokens"] for r in rows), 1) if rows else None,
    }


def markdown_table(table: dict[str, Any]) -> str:
    b, t = table["base"], table["tuned"]

    def fmt(v):
        return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    lines = [f"# Base vs tuned on {table['examples']} held-out examples", "",
             f"base model `{table['base_model']}`, adapter `{table['adapter']}`, greedy, "
             f"max_new_tokens {table['settings']['max_new_tokens']}", "",
             "| metric | base | tuned |", "|---|---:|---:|"]
    for label, key in (("ROUGE-L F (mean)", "rouge_l_mean"), ("ROUGE-L F (median)", "rouge_l_median"),
                       ("held-out loss (nll/token)", "heldout_loss"), ("ended by end-of-turn", "finished_rate")):
        lines.append(f"| {label} | {fmt(b[key])} | {fmt(t[key])} |")
    lines.append(f"| new tokens (mean) | {b['mean_new_tokens']} | {t['mean_new_tokens']} |")
    w = table["rouge_l_wins"]
    lines.append(f"| higher ROUGE-L (examples) | {w['base']} | {w['tuned']} |")
    j = table.get("judge")
    if j:
        lines.append(f"| judge wins ({j['model']}) | {j['base_wins']} | {j['tuned_wins']} |")
        lines += ["", f"Judge: tuned win rate {fmt(j['tuned_win_rate'])} (ties count half), ties {j['ties']}, "
                      f"unparsed {j['invalid']}, answered A {j['answered_A']} / B {j['answered_B']} times "
                      "(position bias check; A/B order randomised)."]
    lines += ["", f"ROUGE-L ties: {w['tie']}. Wall {table['wall_s']} s."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- evaluate


def evaluate(tune_dir: Path, out_dir: Path, ecfg: EvalConfig, teacher_cfg: TeacherConfig | None = None,
             progress: Progress = no_progress, judge=None, judge_factory=None) -> dict[str, Any]:
    """Evaluate base against tuned on the held-out rows of ``tune_dir``; returns the table (also written).

    ``judge``: a teacher object to use instead of building one from ``teacher_cfg`` (when ``ecfg.judge``);
    ``judge_factory``: a function that builds it, called once the answers are generated (``pipeline run`` passes
    one that puts the run's request cache and budget in front of the judge); evaluate closes what it built."""
    t0 = time.time()
    tune_dir, out_dir = Path(tune_dir), Path(out_dir)
    meta_path = tune_dir / "tune_meta.json"
    if not meta_path.is_file():
        raise InputError(str(meta_path), "not found: run `pipeline tune` first")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    heldout_path = tune_dir / "heldout.jsonl"
    if not heldout_path.is_file():
        raise InputError(str(heldout_path), "held-out split not found")
    rows_in = list(read_jsonl(heldout_path))
    if not rows_in:
        raise InputError(str(heldout_path), "the held-out split is empty: tune with tune.eval_fraction > 0")
    if ecfg.max_examples:
        rows_in = rows_in[:ecfg.max_examples]
    adapter_dir = tune_dir / (meta.get("adapter") or "adapter")
    base_dir = Path(meta["base_model"])
    if not (adapter_dir / "adapter_config.json").is_file():
        raise InputError(str(adapter_dir / "adapter_config.json"), "adapter not found")
    if not (base_dir / "config.json").is_file():
        raise InputError(str(base_dir), "base model directory not found (recorded in tune_meta.json)")

    teacher = None
    if ecfg.judge and judge is None and judge_factory is None:  # a bad teacher config fails before the slow part
        teacher = judge = make_teacher(teacher_cfg or TeacherConfig())
    try:
        import torch
        from peft import PeftModel
    except ImportError as e:
        raise need_tune_extra(e, "pipeline eval") from None
    try:
        settings = meta.get("settings", {})
        threads = ecfg.num_threads or settings.get("num_threads")
        if threads:
            torch.set_num_threads(int(threads))
        precision = pick_precision(settings.get("precision", "auto"))
        tokenizer = load_tokenizer(adapter_dir)
        eot = end_of_turn_token(tokenizer)
        eos_ids = sorted({i for i in (tokenizer.convert_tokens_to_ids(eot), tokenizer.eos_token_id) if i is not None})
        model = load_model(base_dir, precision)
        if torch.cuda.is_available():
            model = model.to("cuda")
        model = PeftModel.from_pretrained(model, str(adapter_dir))
        model.eval()
        prompts = [r["prompt"] for r in rows_in]
        n = len(rows_in)
        total = 2 * n
        max_len = int(settings.get("max_length", 2048))

        with model.disable_adapter():
            base_out = generate(model, tokenizer, prompts, ecfg.max_new_tokens, ecfg.batch_size, eos_ids,
                                lambda done: progress(STAGE, done, total, {"model": "base"}))
            base_nll = [completion_nll(model, tokenizer, r["prompt"], r["completion"], max_len) for r in rows_in]
        tuned_out = generate(model, tokenizer, prompts, ecfg.max_new_tokens, ecfg.batch_size, eos_ids,
                             lambda done: progress(STAGE, n + done, total, {"model": "tuned"}))
        tuned_nll = [completion_nll(model, tokenizer, r["prompt"], r["completion"], max_len) for r in rows_in]

        rows: list[dict[str, Any]] = []
        for r, b, t in zip(rows_in, base_out, tuned_out):
            ref = r["completion"][-1]["content"]
            prompt_text = "\n\n".join(m["content"] for m in r["prompt"] if m["role"] != "system")
            rows.append({
                "id": r.get("id"), "prompt_text": prompt_text, "reference": ref,
                "base": b["text"], "tuned": t["text"],
                "base_rouge_l": round(rouge_l(b["text"], ref), 4), "tuned_rouge_l": round(rouge_l(t["text"], ref), 4),
                "base_finished": b["finished"], "tuned_finished": t["finished"],
                "base_new_tokens": b["new_tokens"], "tuned_new_tokens": t["new_tokens"],
            })

        judge_summary = None
        if ecfg.judge:
            progress(STAGE, total, total, {"judge": "..."})
            if judge is None:  # built only now: the student models have left memory
                teacher = judge = judge_factory()
            verdicts = judge_pairs(judge, rows, ecfg.judge_decoding, ecfg.seed)
            for row, v in zip(rows, verdicts):
                row["judge"] = v
            c = Counter(v["winner"] for v in verdicts)
            pos = Counter(v["verdict"] for v in verdicts)
            valid = c["tuned"] + c["base"] + c["tie"]
            judge_summary = {
                "model": getattr(judge, "model_name", "?"), "template": JUDGE_TEMPLATE,
                "tuned_wins": c["tuned"], "base_wins": c["base"], "ties": c["tie"], "invalid": c["invalid"],
                "tuned_win_rate": round((c["tuned"] + 0.5 * c["tie"]) / valid, 4) if valid else None,
                "answered_A": pos["A"], "answered_B": pos["B"],
                "usage": judge.usage.as_dict() if hasattr(judge, "usage") else None,
            }
    finally:
        if teacher is not None:
            teacher.close()

    def total_nll(xs):
        return (sum(x[0] for x in xs), sum(x[1] for x in xs))

    wins = Counter("tuned" if r["tuned_rouge_l"] > r["base_rouge_l"] else
                   "base" if r["base_rouge_l"] > r["tuned_rouge_l"] else "tie" for r in rows)
    table = {
        "examples": len(rows), "tune_dir": str(tune_dir), "base_model": meta.get("base_model_spec", str(base_dir)),
        "adapter": str(adapter_dir), "trained_steps": meta.get("trainer", {}).get("global_step"),
        "base": _side(rows, "base", total_nll(base_nll)), "tuned": _side(rows, "tuned", total_nll(tuned_nll)),
        "rouge_l_wins": {"base": wins["base"], "tuned": wins["tuned"], "tie": wins["tie"]},
        "judge": judge_summary,
        "settings": ecfg.model_dump(mode="json"),
        "wall_s": round(time.time() - t0, 1),
    }
    write_jsonl_atomic(out_dir / "generations.jsonl", rows)
    write_json_atomic(out_dir / "eval_table.json", table)
    write_text_atomic(out_dir / "eval_table.md", markdown_table(table))
    return table
