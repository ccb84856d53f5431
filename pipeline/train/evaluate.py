"""Base model against tuned adapters on held-out human tasks (``pipeline eval``, ``pipeline compare-data``).

The tasks: the human-written tasks a run held out before any generation step saw them (``<run>/heldout/
tasks.jsonl``, see ``pipeline.stages.heldout``), or any task file (``--tasks``); without either, the held-out rows
of the tune split (their references were written by the teacher, and the table says so).

Every model answers every task's prompt (greedy, batched, up to ``eval.max_new_tokens``). The base model is loaded
once; each adapter is put on it, used and taken off again. Scores (``pipeline.train.metrics``), each with a 95%
bootstrap interval over tasks, for every model side by side, and the paired difference to the base model:

- ROUGE-L F against the human reference (rouge-score's numbers) and corpus BLEU (sacrebleu);
- accuracy (exact match) on the classification tasks;
- the share of answers ended by the end-of-turn token rather than the token limit;
- the toxicity rate of the answers (the ``[safety]`` classifier, when the ``safety`` extra is installed);
- the loss of the human reference (mean negative log-likelihood per reference token);
- optionally (``eval.judge``) a pairwise judge score against the base model: every task is judged twice, with the
  answers in both orders (``prompts/judge_pairwise.j2``), win 1, tie 0.5, loss 0, averaged over the two orders.

Writes ``table.json``, ``table.md`` and ``results.jsonl`` (one row per task and model: prompt, reference, the
answer and the base model's answer, scores, the judge's verdicts and reasons) to the output directory, each
atomically.
"""
from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..config import Decoding, EvalConfig, TeacherConfig
from ..errors import InputError
from ..io.classifiers import load_toxicity_scorer
from ..io.files import read_jsonl, write_json_atomic, write_jsonl_atomic, write_text_atomic
from ..records import Record
from ..stages.export import user_prompt
from ..progress import Progress, no_progress
from ..stages.judge import pair_score, pairwise_requests, parse_verdict, verdict_reason
from ..teachers import make_teacher
from .metrics import (bleu_ci, bootstrap, corpus_bleu, exact_match, mean_ci, paired_diff_ci,
                      rouge_l_scores)
from .model import end_of_turn_token, load_model, load_tokenizer, need_tune_extra, pick_precision

STAGE = "eval"
TABLE_JSON, TABLE_MD, RESULTS = "table.json", "table.md", "results.jsonl"


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

def judge_both_orders(teacher, tasks: list["EvalTask"], base: list[str], other: list[str],
                      decoding: Decoding) -> list[dict[str, Any]]:
    """Two judge requests per task: the other model's answer at A (base at B), then at B (base at A). Returns, per
    task, both verdicts ('A', 'B', 'tie' or 'invalid'), the other model's score (win 1, tie 0.5, loss 0, mean of
    the orders that gave a verdict; None when neither did) and the judge's reasons. Identical answers are a tie
    without a request."""
    structured = getattr(teacher, "structured", "off")
    requests, asked = [], []
    for i, (task, b, o) in enumerate(zip(tasks, base, other)):
        if o.strip() == b.strip():  # the same answer twice: a tie, nothing to ask
            continue
        asked.append(i)
        requests.extend(pairwise_requests(task.prompt_text, o, b, decoding, structured, reference=task.reference))
    done = teacher.generate(requests) if requests else []
    replies = {i: (done[2 * k], done[2 * k + 1]) for k, i in enumerate(asked)}
    out = []
    for i in range(len(tasks)):
        if i not in replies:
            out.append({"verdicts": ["tie", "tie"], "score": 0.5, "reasons": ["identical answers"] * 2,
                        "raw": ["", ""], "asked": False})
            continue
        first, second = replies[i]
        v1, v2 = parse_verdict(first.text), parse_verdict(second.text)
        out.append({"verdicts": [v1, v2], "score": pair_score(v1, v2),
                    "reasons": [verdict_reason(first.text), verdict_reason(second.text)],
                    "raw": [first.text.strip()[:200], second.text.strip()[:200]], "asked": True})
    return out


def judge_summary(verdicts: list[dict], rounds: int, seed: int) -> dict[str, Any]:
    scores = [v["score"] for v in verdicts]
    wins = sum(s is not None and s > 0.5 for s in scores)
    losses = sum(s is not None and s < 0.5 for s in scores)
    position = Counter(x for v in verdicts if v.get("asked", True) for x in v["verdicts"])
    return {"score": mean_ci(scores, rounds, seed), "wins": wins, "losses": losses,
            "ties": sum(s == 0.5 for s in scores), "unjudged": sum(s is None for s in scores),
            "identical_answers": sum(not v.get("asked", True) for v in verdicts),
            "answered_A": position["A"], "answered_B": position["B"], "answered_tie": position["tie"],
            "invalid": position["invalid"]}


# --------------------------------------------------------------------------------------------------- tasks


@dataclass
class EvalTask:
    id: str
    prompt: list[dict[str, str]]
    reference: str
    is_classification: bool = False
    lineage: str = ""

    @property
    def prompt_text(self) -> str:
        return "\n\n".join(m["content"] for m in self.prompt if m["role"] != "system")


def tasks_from_records(records: list[Record]) -> list[EvalTask]:
    """One task per distinct task id (its first instance): human tasks, e.g. a run's held-out seed tasks."""
    out, seen = [], set()
    for r in records:
        key = r.task_id or r.id
        if key in seen or not r.output.strip():
            continue
        seen.add(key)
        out.append(EvalTask(key, [{"role": "user", "content": user_prompt(r.instruction, r.input)}], r.output,
                            bool(r.is_classification), r.root_id or key))
    return out


def tasks_from_tune_split(tune_dir: Path) -> list[EvalTask]:
    """The held-out rows of a tune run (``heldout.jsonl``): references written by whoever made the dataset."""
    path = tune_dir / "heldout.jsonl"
    if not path.is_file():
        raise InputError(str(path), "held-out split not found")
    rows = list(read_jsonl(path))
    return [EvalTask(r.get("id") or str(i), r["prompt"], r["completion"][-1]["content"], False,
                     r.get("group") or r.get("id") or str(i)) for i, r in enumerate(rows)]


# ------------------------------------------------------------------------------------------------ students


class Students:
    """The base model, loaded once, answering with no adapter or with one adapter at a time."""

    def __init__(self, base_dir: Path, tokenizer_dir: Path, settings: dict, ecfg: EvalConfig):
        try:
            import torch
        except ImportError as e:
            raise need_tune_extra(e, "pipeline eval") from None
        threads = ecfg.num_threads or settings.get("num_threads")
        if threads:
            torch.set_num_threads(int(threads))
        self.ecfg = ecfg
        self.max_len = int(settings.get("max_length", 2048))
        self.tokenizer = load_tokenizer(tokenizer_dir)
        eot = end_of_turn_token(self.tokenizer)
        self.eos_ids = sorted({i for i in (self.tokenizer.convert_tokens_to_ids(eot), self.tokenizer.eos_token_id)
                               if i is not None})
        model = load_model(base_dir, pick_precision(settings.get("precision", "auto")))
        if torch.cuda.is_available():
            model = model.to("cuda")
        model.eval()
        self.base = model

    def answer(self, tasks: list[EvalTask], adapter_dir: Path | None,
               on_batch: Callable[[int], None] | None = None, under: Path | None = None) -> list[dict[str, Any]]:
        """Each task's answer (text, new_tokens, finished) and the reference's loss (nll, tokens) under the base
        model (``adapter_dir`` None) or the base model with that adapter. ``under``: the SFT adapter a DPO adapter
        was trained on top of; both LoRA adapters are active at once, which is the SFT model merged plus the DPO
        adapter (LoRA deltas add), with the base weights left untouched."""
        model = self.base
        if adapter_dir is not None:
            try:
                from peft import PeftModel
            except ImportError as e:
                raise need_tune_extra(e, "pipeline eval") from None
            if under is not None:
                model = PeftModel.from_pretrained(self.base, str(under), adapter_name="sft")
                model.load_adapter(str(adapter_dir), adapter_name="tuned")
                model.base_model.set_adapter(["sft", "tuned"])
            else:
                model = PeftModel.from_pretrained(self.base, str(adapter_dir))
            model.eval()
        try:
            outs = generate(model, self.tokenizer, [t.prompt for t in tasks], self.ecfg.max_new_tokens,
                            self.ecfg.batch_size, self.eos_ids, on_batch)
            for task, out in zip(tasks, outs):
                out["nll"] = completion_nll(model, self.tokenizer, task.prompt,
                                            [{"role": "assistant", "content": task.reference}], self.max_len)
        finally:
            if adapter_dir is not None:
                self.base = model.unload()  # the LoRA layers come off; the base weights were never changed
        return outs


# ---------------------------------------------------------------------------------------------- the scores


def per_task_scores(tasks: list[EvalTask], outs: list[dict], toxicity: list[float] | None,
                    threshold: float) -> list[dict[str, Any]]:
    rouge = rouge_l_scores([o["text"] for o in outs], [t.reference for t in tasks])
    rows = []
    for i, (task, out) in enumerate(zip(tasks, outs)):
        row = {"rouge_l": round(rouge[i], 4), "finished": out["finished"],
               "new_tokens": out["new_tokens"], "reference_nll": round(out["nll"][0], 4),
               "reference_tokens": out["nll"][1]}
        if task.is_classification:
            row["exact_match"] = exact_match(out["text"], task.reference)
        if toxicity is not None:
            row["toxicity"] = round(toxicity[i], 4)
            row["toxic"] = toxicity[i] >= threshold
        rows.append(row)
    return rows


def model_summary(tasks: list[EvalTask], outs: list[dict], scores: list[dict], rounds: int,
                  seed: int) -> dict[str, Any]:
    nll = sum(s["reference_nll"] for s in scores)
    tokens = sum(s["reference_tokens"] for s in scores)
    cls = [s["exact_match"] for s in scores if "exact_match" in s]
    return {
        "rouge_l": mean_ci([s["rouge_l"] for s in scores], rounds, seed),
        "bleu": bleu_ci([o["text"] for o in outs], [t.reference for t in tasks], rounds, seed),
        "accuracy": mean_ci([float(x) for x in cls], rounds, seed) if cls else None,
        "finished": mean_ci([float(s["finished"]) for s in scores], rounds, seed),
        "toxicity": (mean_ci([float(s["toxic"]) for s in scores], rounds, seed)
                     if scores and "toxic" in scores[0] else None),
        "reference_loss": round(nll / tokens, 4) if tokens else None,
        "mean_new_tokens": round(statistics.fmean(s["new_tokens"] for s in scores), 1) if scores else None,
    }


def differences(tasks: list[EvalTask], base: tuple[list[dict], list[dict]], other: tuple[list[dict], list[dict]],
                rounds: int, seed: int) -> dict[str, Any]:
    """The other model minus the base model, paired over the same tasks."""
    (b_out, b_sc), (o_out, o_sc) = base, other
    refs = [t.reference for t in tasks]
    b_txt, o_txt = [o["text"] for o in b_out], [o["text"] for o in o_out]
    out = {"rouge_l": paired_diff_ci([s["rouge_l"] for s in b_sc], [s["rouge_l"] for s in o_sc], rounds, seed)}
    if tasks:
        out["bleu"] = {"value": round(corpus_bleu(o_txt, refs) - corpus_bleu(b_txt, refs), 4), "n": len(tasks),
                       "ci": bootstrap(len(tasks), lambda ix: corpus_bleu([o_txt[i] for i in ix], [refs[i] for i in ix])
                                       - corpus_bleu([b_txt[i] for i in ix], [refs[i] for i in ix]), rounds, seed)}
    if any("exact_match" in s for s in b_sc):
        out["accuracy"] = paired_diff_ci([float(s["exact_match"]) if "exact_match" in s else None for s in b_sc],
                                         [float(s["exact_match"]) if "exact_match" in s else None for s in o_sc],
                                         rounds, seed)
    out["finished"] = paired_diff_ci([float(s["finished"]) for s in b_sc], [float(s["finished"]) for s in o_sc],
                                     rounds, seed)
    return out


# --------------------------------------------------------------------------------------------------- tables


def _fmt(m: Any, digits: int = 3) -> str:
    if m is None:
        return "-"
    if isinstance(m, dict):
        if m.get("value") is None:
            return "-"
        ci = m.get("ci")
        return f"{m['value']:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")
    return f"{m:.{digits}f}" if isinstance(m, float) else str(m)


_ROWS = (("ROUGE-L F", "rouge_l", 3), ("BLEU", "bleu", 2), ("accuracy (classification)", "accuracy", 3),
         ("ended by end-of-turn", "finished", 3), ("toxic answers", "toxicity", 3))


def markdown_table(table: dict[str, Any]) -> str:
    """Two models: metrics down, base / tuned / difference across. More: one row per model."""
    names = list(table["models"])
    head = [f"# Evaluation on {table['examples']} held-out tasks ({table['tasks_source']})", "",
            f"base model `{table['base_model']}`, greedy, max_new_tokens {table['settings']['max_new_tokens']}; "
            f"{table['classification_tasks']} classification tasks; values with 95% bootstrap intervals over "
            f"tasks ({table['settings']['bootstrap_rounds']} resamples).", ""]
    lines = list(head)
    models, deltas, judges = table["models"], table["differences"], table.get("judge") or {}
    if len(names) == 2:
        other = names[1]
        lines += [f"| metric | base | {other} | {other} - base |", "|---|---:|---:|---:|"]
        for label, key, d in _ROWS:
            if models["base"].get(key) is None and models[other].get(key) is None:
                continue
            lines.append(f"| {label} | {_fmt(models['base'].get(key), d)} | {_fmt(models[other].get(key), d)} | "
                         f"{_fmt(deltas[other].get(key), d)} |")
        lines.append(f"| reference loss (nll/token) | {_fmt(models['base']['reference_loss'])} | "
                     f"{_fmt(models[other]['reference_loss'])} | |")
        lines.append(f"| new tokens (mean) | {models['base']['mean_new_tokens']} | "
                     f"{models[other]['mean_new_tokens']} | |")
    else:
        cols = [c for c in _ROWS if any(models[n].get(c[1]) is not None for n in names)]
        lines += ["| model | rows | steps | " + " | ".join(c[0] for c in cols) + " | judge vs base |",
                  "|---|---:|---:|" + "---:|" * (len(cols) + 1)]
        for n in names:
            info = table.get("adapters", {}).get(n) or {}
            j = judges.get(n)
            lines.append(f"| {n} | {info.get('train_rows', '-')} | {info.get('steps', '-')} | "
                         + " | ".join(_fmt(models[n].get(c[1]), c[2]) for c in cols)
                         + f" | {_fmt(j['score']) if j else '-'} |")
    for n, j in judges.items():
        lines += ["", f"Judge `{table['judge_model']}` on {n} vs base: score {_fmt(j['score'])} (win 1, tie 0.5, "
                      f"loss 0, both orders): {j['wins']} wins, {j['ties']} ties, {j['losses']} losses, "
                      f"{j['unjudged']} unjudged; verdicts A {j['answered_A']} / B {j['answered_B']} / tie "
                      f"{j['answered_tie']} / unreadable {j['invalid']} (every task asked in both orders)."]
    if table.get("note"):
        lines += ["", table["note"]]
    lines += ["", f"Wall {table['wall_s']} s."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ evaluate


def _tune_meta(tune_dir: Path) -> dict[str, Any]:
    meta_path = tune_dir / "tune_meta.json"
    if not meta_path.is_file():
        raise InputError(str(meta_path), "not found: run `pipeline tune` first")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    adapter_dir = tune_dir / (meta.get("adapter") or "adapter")
    if not (adapter_dir / "adapter_config.json").is_file():
        raise InputError(str(adapter_dir / "adapter_config.json"), "adapter not found")
    if not (Path(meta["base_model"]) / "config.json").is_file():
        raise InputError(meta["base_model"], "base model directory not found (recorded in tune_meta.json)")
    meta["adapter_dir"] = str(adapter_dir)
    return meta


def evaluate_models(adapters: dict[str, Path], out_dir: Path, ecfg: EvalConfig, tasks: list[EvalTask],
                    tasks_source: str, progress: Progress = no_progress, judge=None, judge_factory=None,
                    teacher_cfg: TeacherConfig | None = None, toxicity_threshold: float = 0.8,
                    note: str = "", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The base model and every adapter (name -> tune directory; all tuned from one base model) on ``tasks``.

    ``judge``: a teacher object for the pairwise judge (when ``ecfg.judge``); ``judge_factory``: a function that
    builds one, called once the answers are generated (the student models have then left memory);
    otherwise one is built from ``teacher_cfg``. Evaluate closes what it built."""
    t0 = time.time()
    out_dir = Path(out_dir)
    if not tasks:
        raise InputError(str(out_dir), "no held-out tasks to evaluate on")
    if ecfg.max_examples:
        tasks = tasks[:ecfg.max_examples]
    metas = {name: _tune_meta(Path(d)) for name, d in adapters.items()}
    bases = {m["base_model"] for m in metas.values()}
    if len(bases) != 1:
        raise InputError(str(out_dir), f"the adapters were tuned from different base models: {sorted(bases)}")
    first = next(iter(metas.values()))
    built = None
    if ecfg.judge and judge is None and judge_factory is None:  # a bad teacher config fails before the slow part
        built = judge = make_teacher(teacher_cfg or TeacherConfig())
    try:
        toxicity_score = None
        try:
            toxicity_score = load_toxicity_scorer()
        except InputError:
            pass  # the safety extra is not installed: no toxicity rate (the table says "-")
        students = Students(Path(first["base_model"]), Path(first["adapter_dir"]), first.get("settings", {}), ecfg)
        n, names = len(tasks), ["base", *adapters]
        total = n * len(names)
        answers: dict[str, list[dict]] = {}
        for k, name in enumerate(names):
            adapter = None if name == "base" else Path(metas[name]["adapter_dir"])
            under = metas[name].get("sft_adapter") if name != "base" else None
            answers[name] = students.answer(tasks, adapter, under=Path(under) if under else None,
                                            on_batch=lambda done, k=k, name=name: progress(STAGE, k * n + done, total,
                                                                                           {"model": name}))
        del students
        scores = {name: per_task_scores(tasks, answers[name],
                                        toxicity_score([o["text"] for o in answers[name]]) if toxicity_score else None,
                                        toxicity_threshold) for name in names}
        verdicts: dict[str, list[dict]] = {}
        judge_name = None
        if ecfg.judge:
            progress(STAGE, total, total, {"judge": "..."})
            if judge is None:
                built = judge = judge_factory()
            judge_name = getattr(judge, "model_name", "?")
            base_texts = [o["text"] for o in answers["base"]]
            for name in adapters:
                verdicts[name] = judge_both_orders(judge, tasks, base_texts, [o["text"] for o in answers[name]],
                                                   ecfg.judge_decoding)
        judge_usage = judge.usage.as_dict() if ecfg.judge and hasattr(judge, "usage") else None
    finally:
        if built is not None:
            built.close()

    rounds, seed = ecfg.bootstrap_rounds, ecfg.seed
    table: dict[str, Any] = {
        "examples": len(tasks), "tasks_source": tasks_source,
        "classification_tasks": sum(t.is_classification for t in tasks),
        "base_model": first.get("base_model_spec", first["base_model"]),
        "adapters": {name: {"tune_dir": str(adapters[name]), "adapter": metas[name]["adapter_dir"],
                            "train_rows": metas[name].get("train_rows"),
                            "steps": metas[name].get("trainer", {}).get("global_step"),
                            "train_loss": metas[name].get("trainer", {}).get("train_loss")} for name in adapters},
        "models": {name: model_summary(tasks, answers[name], scores[name], rounds, seed) for name in names},
        "differences": {name: differences(tasks, (answers["base"], scores["base"]), (answers[name], scores[name]),
                                          rounds, seed) for name in adapters},
        "judge": {name: judge_summary(v, rounds, seed) for name, v in verdicts.items()} or None,
        "judge_model": judge_name, "judge_usage": judge_usage,
        "toxicity_classifier": "alt-profanity-check" if toxicity_score else None,
        "settings": ecfg.model_dump(mode="json"),
        "note": note,
        **(extra or {}),
        "wall_s": round(time.time() - t0, 1),
    }
    results = []
    for i, task in enumerate(tasks):
        for name in names:
            row = {"task_id": task.id, "model": name, "prompt": task.prompt_text, "reference": task.reference,
                   "is_classification": task.is_classification, "answer": answers[name][i]["text"],
                   "scores": scores[name][i]}
            if name != "base":
                row["base_answer"] = answers["base"][i]["text"]
                if name in verdicts:
                    row["judge"] = {k: verdicts[name][i][k] for k in ("verdicts", "score", "reasons")}
            results.append(row)
    write_jsonl_atomic(out_dir / RESULTS, results)
    write_json_atomic(out_dir / TABLE_JSON, table)
    write_text_atomic(out_dir / TABLE_MD, markdown_table(table))
    return table


def evaluate(tune_dir: Path, out_dir: Path, ecfg: EvalConfig, teacher_cfg: TeacherConfig | None = None,
             progress: Progress = no_progress, judge=None, judge_factory=None,
             tasks: list[EvalTask] | None = None, tasks_source: str = "",
             toxicity_threshold: float = 0.8) -> dict[str, Any]:
    """Base against the adapter of ``tune_dir`` (named "tuned") on ``tasks``, or on the tune run's held-out rows
    when no tasks are given; returns the table (also written, see the module docstring)."""
    tune_dir = Path(tune_dir)
    note = ""
    if tasks is None:
        _tune_meta(tune_dir)
        tasks = tasks_from_tune_split(tune_dir)
        if not tasks:
            raise InputError(str(tune_dir / "heldout.jsonl"),
                             "the held-out split is empty: tune with tune.eval_fraction > 0, or give held-out tasks")
        tasks_source = "rows of the tune split"
        note = ("References: dataset rows held out of tuning, written by the teacher, not by people; hold out "
                "human tasks with eval.heldout_share or eval.heldout_files.")
    return evaluate_models({"tuned": tune_dir}, out_dir, ecfg, tasks, tasks_source, progress, judge,
                           judge_factory, teacher_cfg, toxicity_threshold, note)
