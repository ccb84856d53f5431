"""LoRA DPO of a base (or SFT-tuned) model on preference pairs, with trl's ``DPOTrainer`` and peft.

Each row of ``<run>/dataset/preferences.jsonl`` (or any JSONL in trl's preference form) is one pair::

    {"prompt": [{"role": "user", "content": "..."}],
     "chosen": [{"role": "assistant", "content": "..."}], "rejected": [{"role": "assistant", "content": "..."}],
     "id": "...", "lineage": "...", "margin": 0.8}                      # id, lineage and margin are optional

``prompt``, ``chosen`` and ``rejected`` may also be plain strings: they become a user message and assistant
messages, as in SFT, so every pair is rendered with the base model's chat template and each completion ends with
its end-of-turn token (checked on the tokenized rows before training). Pairs whose chosen and rejected answers are
the same, or whose prompt or answers are empty, are dropped and counted; a malformed row is an error naming the
file, the line and the field.

The held-out pairs (the DPO eval loss and reward accuracy) are a seeded share of the lineages, as in SFT
(``tune.eval_fraction``); ``split.json`` is written when a run starts and checked when it resumes.

With ``tune.dpo.sft_adapter`` (an SFT adapter directory, or the ``pipeline tune`` output holding it), that adapter
is merged into the base model first: the SFT model is both where the new adapter starts and the reference model.
Otherwise the reference is the base model. Either way no second model is loaded: the reference is the policy with
its LoRA adapter disabled (trl's peft path, ``ref_model=None``).

Usage::

    pipeline tune outputs/<run> --method dpo                                   # -> outputs/<run>/tune_dpo/
    pipeline tune outputs/<run> --method dpo --sft-adapter outputs/<run>/tune/adapter --beta 0.1
    pipeline tune prefs.jsonl --method dpo --out runs/d1 --max-steps 100

Output directory: as SFT's (``adapter/``, ``checkpoints/``, ``train_log.jsonl``/``.csv``, ``loss.png``,
``heldout.jsonl``, ``split.json``, ``tune_meta.json`` with ``"method": "dpo"``; ``merged/`` with ``--merge``). The
adapter applies to the base model with the SFT adapter merged in when ``sft_adapter`` is set (``tune_meta.json``
says so under ``adapter_applies_to``).

torch, transformers, trl and peft are imported inside the functions that need them.
"""
from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import TuneConfig
from ..errors import InputError
from ..io.files import iter_jsonl
from ..progress import Progress, no_progress
from .model import EMBEDDED_HF_NAME, need_tune_extra, resolve_base_model
from .tune import (_message, _resume_checkpoint, fit, lora_base, split_examples, split_record,
                   trainer_args, training_callbacks)

# DPO's own columns of the train log (trl's names), beside SFT's.
REWARD_KEYS = ("rewards/margins", "rewards/accuracies")


# --------------------------------------------------------------------------------------------------- dataset


@dataclass
class Pair:
    id: str  # the row's own "id", else "<file name>:<line>"
    prompt: list[dict[str, str]]
    chosen: list[dict[str, str]]
    rejected: list[dict[str, str]]
    group: str = ""  # the row's lineage: pairs of one group are never on both sides of the split
    margin: float | None = None  # the judge's margin, when the file has one (kept, not used by the loss)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected,
                "group": self.group, "margin": self.margin}

    def to_row(self) -> dict[str, Any]:
        """trl's conversational preference row."""
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}


def _messages(value: Any, path: Path, line: int, field: str, role: str) -> list[dict[str, str]]:
    """A string (one ``role`` message) or a non-empty list of messages."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value:
        return [_message(m, path, line, f"{field}[{i}]") for i, m in enumerate(value)]
    raise InputError(str(path), "expected a string or a non-empty list of messages", line=line, field=field)


def _row_to_pair(obj: dict, path: Path, line: int) -> Pair:
    for key in ("prompt", "chosen", "rejected"):
        if key not in obj:
            raise InputError(str(path), "missing (a preference row has prompt, chosen and rejected)", line=line,
                             field=key)
    prompt = _messages(obj["prompt"], path, line, "prompt", "user")
    if prompt[-1]["role"] != "user":
        raise InputError(str(path), "the prompt must end with a user message", line=line, field="prompt")
    chosen = _messages(obj["chosen"], path, line, "chosen", "assistant")
    rejected = _messages(obj["rejected"], path, line, "rejected", "assistant")
    for field, msgs in (("chosen", chosen), ("rejected", rejected)):
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                raise InputError(str(path), f"must be assistant messages (got role {m['role']!r})", line=line,
                                 field=f"{field}[{i}].role")
    rid = obj.get("id")
    if rid is not None and not isinstance(rid, (str, int)):
        raise InputError(str(path), "expected a string", line=line, field="id")
    group = ""
    for key in ("lineage", "root_id", "task_id"):
        value = obj.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise InputError(str(path), "expected a string", line=line, field=key)
        group = value
        break
    margin = obj.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))
                               or not math.isfinite(margin)):
        raise InputError(str(path), "expected a number", line=line, field="margin")
    pid = str(rid) if rid not in (None, "") else f"{path.name}:{line}"
    return Pair(pid, prompt, chosen, rejected, group=group or pid,
                margin=float(margin) if margin is not None else None)


def _text(msgs: list[dict[str, str]]) -> str:
    return "".join(m["content"] for m in msgs)


def load_pairs(path: Path) -> tuple[list[Pair], Counter]:
    """Read a preferences file; returns (pairs, dropped counts). Pairs with an empty prompt or answer, or with the
    same chosen and rejected answer, are dropped and counted; a malformed row is an InputError (file, line, field)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "preferences file not found")
    pairs: list[Pair] = []
    dropped: Counter = Counter()
    for number, obj in iter_jsonl(path):
        pair = _row_to_pair(obj, path, number)
        if not any(m["content"].strip() for m in pair.prompt if m["role"] == "user"):
            dropped["empty_prompt"] += 1
        elif not _text(pair.chosen).strip():
            dropped["empty_chosen"] += 1
        elif not _text(pair.rejected).strip():
            dropped["empty_rejected"] += 1
        elif [(m["role"], m["content"].strip()) for m in pair.chosen] == \
                [(m["role"], m["content"].strip()) for m in pair.rejected]:
            dropped["identical"] += 1
        else:
            pairs.append(pair)
    if not pairs:
        raise InputError(str(path), "no usable pairs (empty file, or every pair has an empty or identical answer)")
    return pairs, dropped


# ------------------------------------------------------------------------------------------------- training


def _columns(row: dict) -> tuple[list[int], list[int], list[int]]:
    """(prompt, chosen completion, rejected completion) token ids of a row of DPOTrainer's tokenized dataset: trl
    1.x writes ``prompt_ids``/``chosen_ids``/``rejected_ids``, older trl ``prompt_input_ids``/``chosen_input_ids``/
    ``rejected_input_ids``."""
    for names in (("prompt_ids", "chosen_ids", "rejected_ids"),
                  ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids")):
        if all(n in row for n in names):
            return tuple(list(row[n]) for n in names)  # type: ignore[return-value]
    raise InputError("tune", f"unknown columns in trl's tokenized preference dataset: {sorted(row)}; this trl "
                     "version is not supported", field="tune.method")


def check_pairs(dataset, tokenizer, eot_id: int, max_length: int, limit: int = 0) -> dict[str, Any]:
    """Check the tokenized training pairs (the first ``limit``, 0 = all): the chosen and rejected completions must
    differ, and each must hold the end-of-turn token unless the row is cut at ``max_length``. Raises InputError
    when they do not."""
    n = with_eot = truncated = identical_after_cut = 0
    bad: list[tuple[int, str]] = []
    first: dict[str, str] = {}
    for i, row in enumerate(dataset):
        if limit and i >= limit:
            break
        prompt, chosen, rejected = _columns(row)
        n += 1
        cut = {side: len(prompt) + len(ids) > max_length for side, ids in (("chosen", chosen), ("rejected", rejected))}
        truncated += any(cut.values())
        if chosen == rejected:
            bad.append((i, "the chosen and rejected completions are the same tokens"))
            continue
        room = max(0, max_length - len(prompt))
        identical_after_cut += chosen[:room] == rejected[:room]
        missing = [side for side, ids in (("chosen", chosen), ("rejected", rejected))
                   if eot_id not in ids and not cut[side]]
        if missing:
            bad.append((i, f"no end-of-turn token in the {' and '.join(missing)} completion"))
        else:
            with_eot += 1
        if not first:
            first = {"prompt_text": tokenizer.decode(prompt), "chosen_text": tokenizer.decode(chosen),
                     "rejected_text": tokenizer.decode(rejected)}
    report = {"pairs": n, "with_end_of_turn": with_eot, "truncated": truncated,
              "identical_after_truncation": identical_after_cut, "first_pair": first}
    if bad:
        i, why = bad[0]
        raise InputError("tune", f"{len(bad)} of {n} training pairs are not usable after tokenizing (first: row {i}: "
                         f"{why}); check the chat template and tune.max_length", field="tune.base_model")
    if n and identical_after_cut == n:
        raise InputError("tune", f"every training pair is cut at tune.max_length={max_length} before its chosen and "
                         "rejected answers differ; raise tune.max_length", field="tune.max_length")
    return report


def _sft_adapter_dir(spec: str) -> Path:
    """The SFT adapter directory: ``spec`` itself, or ``spec/adapter`` (a ``pipeline tune`` output directory)."""
    path = Path(spec).expanduser()
    for cand in (path, path / "adapter"):
        if (cand / "adapter_config.json").is_file():
            return cand
    raise InputError(str(path), "not an SFT adapter directory (no adapter_config.json, nor adapter/ with one)",
                     field="tune.dpo.sft_adapter")


def _with_sft_adapter(model, adapter_dir: Path):
    """The base model with the SFT adapter merged into its weights (a plain model again, no peft wrapper)."""
    from peft import PeftModel

    try:
        merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as e:
        raise InputError(str(adapter_dir), f"could not load the SFT adapter on this base model (was it tuned from "
                         f"another base model? see tune.base_model): {str(e).splitlines()[0][:300]}",
                         field="tune.dpo.sft_adapter") from None
    return merged


def build_dpo_trainer(train: list[Pair], heldout: list[Pair], out_dir: Path, tcfg: TuneConfig, base_model_dir: Path,
                      callbacks: list | None = None):
    """The DPOTrainer with a fresh LoRA adapter on the base model (with the SFT adapter merged in, when set);
    returns (trainer, tokenizer, info)."""
    try:
        from datasets import Dataset
        from transformers import PrinterCallback, ProgressCallback
        from trl import DPOConfig, DPOTrainer
    except ImportError as e:
        raise need_tune_extra(e) from None

    sft_dir = _sft_adapter_dir(tcfg.dpo.sft_adapter) if tcfg.dpo.sft_adapter else None
    base = lora_base(tcfg, base_model_dir)
    tokenizer, model, lora, eot = base.tokenizer, base.model, base.lora, base.eot
    if sft_dir is not None:
        model = _with_sft_adapter(model, sft_dir)
    has_eval = bool(heldout)
    args = trainer_args(DPOConfig, tcfg, out_dir, base, has_eval, learning_rate=tcfg.dpo.learning_rate,
                        beta=tcfg.dpo.beta, loss_type=tcfg.dpo.loss_type)
    try:
        trainer = DPOTrainer(
            model=model,
            ref_model=None,  # peft: the reference is the model with the adapter disabled
            args=args,
            train_dataset=Dataset.from_list([p.to_row() for p in train]),
            eval_dataset=Dataset.from_list([p.to_row() for p in heldout]) if has_eval else None,
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=callbacks or [],
        )
    except ValueError as e:  # a loss type with settings it needs (e.g. exo_pair's label smoothing)
        if "loss" in str(e).lower():
            raise InputError("config", str(e).splitlines()[0], field="tune.dpo.loss_type") from None
        raise
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if len(trainer.train_dataset) == 0:
        raise InputError("tune", f"every training pair's prompt is longer than tune.max_length={tcfg.max_length}",
                         field="tune.max_length")
    eot_id = tokenizer.convert_tokens_to_ids(eot)
    check = check_pairs(trainer.train_dataset, tokenizer, eot_id, tcfg.max_length)
    check["dropped_long_prompt"] = len(train) - len(trainer.train_dataset)
    trainable, total = trainer.model.get_nb_trainable_parameters()
    info = {**base.info(), "pair_check": check, "trainable_params": trainable, "total_params": total,
            "world_size": trainer.args.world_size, "sft_adapter_dir": str(sft_dir) if sft_dir else None}
    return trainer, tokenizer, info


def _last(log_history: list[dict], key: str) -> float | None:
    values = [h[key] for h in log_history if key in h]
    return values[-1] if values else None


def train_dpo(pairs_path: Path, out_dir: Path, tcfg: TuneConfig, resume: str | None = None,
              progress: Progress = no_progress, callbacks: list | None = None,
              merge: bool | None = None) -> dict[str, Any]:
    """DPO-tune a LoRA adapter on a preferences file into ``out_dir``; returns the metadata written to
    tune_meta.json. ``resume``: None (a fresh run), ``"last"`` (the newest checkpoint in ``out_dir/checkpoints``)
    or a checkpoint directory. ``callbacks``: extra transformers ``TrainerCallback`` objects."""
    t_start = time.time()
    pairs_path = Path(pairs_path)
    pairs, dropped = load_pairs(pairs_path)
    out_dir = Path(out_dir)
    checkpoint = _resume_checkpoint(out_dir, resume)
    train_rows, heldout = split_examples(pairs, tcfg.eval_fraction, tcfg.seed)
    base_dir = resolve_base_model(tcfg.base_model, tcfg.cache_dir)
    sft_spec = tcfg.dpo.sft_adapter
    split = split_record(pairs_path, tcfg, train_rows, heldout, method="dpo",
                         sft_adapter=str(_sft_adapter_dir(sft_spec).resolve()) if sft_spec else "")
    if checkpoint is not None and (out_dir / "split.json").is_file():
        old = json.loads((out_dir / "split.json").read_text(encoding="utf-8"))
        if old.get("sft_adapter", "") != split["sft_adapter"]:
            raise InputError(str(out_dir / "split.json"), "the checkpoints were trained from another SFT adapter "
                             f"({old.get('sft_adapter') or 'none'}); resume with the same tune.dpo.sft_adapter, or "
                             "start a fresh --out", field="sft_adapter")
    stats, hooks = training_callbacks(progress, tcfg, out_dir, callbacks)
    trainer, tokenizer, info = build_dpo_trainer(train_rows, heldout, out_dir, tcfg, base_dir, hooks)
    meta = {"method": "dpo", "base_model": str(base_dir),
            "base_model_spec": tcfg.base_model or f"embedded:{EMBEDDED_HF_NAME}",
            "sft_adapter": info.pop("sft_adapter_dir"),
            # what the adapter is applied to: the base model, or the base model with the SFT adapter merged in
            "adapter_applies_to": "base_model + sft_adapter (merged)" if sft_spec else "base_model",
            "beta": tcfg.dpo.beta, "loss_type": tcfg.dpo.loss_type, "learning_rate": tcfg.dpo.learning_rate,
            "dataset": str(pairs_path), "rows": len(pairs), "dropped": dict(dropped), "train_rows": len(train_rows),
            "heldout_rows": len(heldout), **info, "wall_s": time.time() - t_start}

    def rewards(history: list[dict], eval_metrics: dict) -> dict[str, Any]:
        train_logs = [h for h in history if "loss" in h and "eval_loss" not in h]
        return {"rewards_margins": _last(train_logs, "rewards/margins"),
                "rewards_accuracies": _last(train_logs, "rewards/accuracies"),
                "eval_rewards_margins": eval_metrics.get("eval_rewards/margins"),
                "eval_rewards_accuracies": eval_metrics.get("eval_rewards/accuracies")}

    title = f"LoRA DPO (beta {tcfg.dpo.beta:g}" + (", from an SFT adapter)" if sft_spec else ")")
    try:
        return fit(trainer, tokenizer, out_dir, tcfg, checkpoint, heldout, split, stats, meta, merge,
                   log_title=title, log_ylabel="DPO loss", more_figures=rewards)
    except ValueError as e:  # trl checks the loss type at the first step
        if "unknown loss type" in str(e).lower():
            raise InputError("config", str(e).splitlines()[0], field="tune.dpo.loss_type") from None
        raise
