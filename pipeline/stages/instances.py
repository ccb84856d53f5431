"""Instance generation for new tasks: decide classification, then write (input, output) pairs.

Every teacher call is a plain chat request a small instruction model can follow, batched over all tasks of a step:
  - classification: the teacher's Yes/No (``classification = "teacher"``) or lexical rules (``"rules"``, the
    default for weak teachers, which answer Yes to everything);
  - input-first (other tasks): if the instruction refers to material to work on, the teacher writes that input;
    then the teacher answers the task on it, exactly as the tuned model will be prompted;
  - output-first (classification): take the class labels (from the instruction, or the teacher lists them),
    then for each label the teacher writes an input for which that label is right; the label is the output.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from ..config import BootstrapConfig
from ..prompts import render_messages
from ..records import Record
from ..teachers import ChatRequest, Teacher
from .export import user_prompt
from .parsing import parse_numbered_list, parse_yes_no

_MATERIAL = (r"text|sentence|sentences|paragraph|passage|list|code|function|program|snippet|email|review|tweet|"
             r"article|story|poem|message|statement|data|table|number|numbers|word|words|question|equation|query|"
             r"string|document|recipe|conversation|dialogue|input|json|csv|sql|essay|letter|product|description|"
             r"headline|title|abstract|argument|claim|phrase|sequence|array|expression|receipt|bio|report")
_NEEDS_INPUT = re.compile(
    rf"\b(given|following|below|above|provided|attached)\b|\b(this|these|the|a|an|each)\s+({_MATERIAL})\b",
    re.IGNORECASE)
_LABELS = re.compile(r"((?:\b[\w'-]+, )*\b[\w'-]+),? or (not [\w'-]+|[\w'-]+)\b", re.IGNORECASE)
_CLASSIFY_CUE = re.compile(
    r"\b(classify|categori[sz]e|label|decide|determine|whether|tell if|tell whether|identify if|detect|"
    r"is it|is this|is the|are the|does the|true or false|yes or no|which (one|of|category|class))\b",
    re.IGNORECASE)
_STOP_LABEL = {"the", "a", "an", "and", "to", "of", "in", "is", "it", "not"}
_INPUT_PREAMBLE = re.compile(r"^\s*(?:(?:here(?:'s| is)|sure)[^\n:]*:\s*\n?|(?:example )?input\s*:\s*)", re.IGNORECASE)


def needs_input(instruction: str) -> bool:
    return bool(_NEEDS_INPUT.search(instruction))


def labels_from_instruction(instruction: str) -> list[str]:
    """Class labels spelt out in the instruction: "positive or negative", "spam or not", "A, B, or C"."""
    m = _LABELS.search(instruction)
    if not m:
        return []
    labels = [s.strip() for s in m.group(1).split(",")] + [m.group(2).strip()]
    if labels[-1].lower() == "not" and labels[:-1]:
        labels[-1] = f"not {labels[-2]}"
    labels = [lab for lab in labels if lab and lab.lower() not in _STOP_LABEL]
    return _dedupe(labels) if len(labels) >= 2 else []


def is_classification_by_rules(instruction: str) -> bool:
    return bool(_CLASSIFY_CUE.search(instruction)) and bool(labels_from_instruction(instruction))


def _dedupe(labels: list[str]) -> list[str]:
    seen, out = set(), []
    for lab in labels:
        key = lab.lower().strip(" .")
        if key and key not in seen:
            seen.add(key)
            out.append(lab.strip(" ."))
    return out


def parse_labels(text: str) -> list[str]:
    """Labels from a reply: a comma-separated line or a list; long phrases are not labels."""
    items = parse_numbered_list(text)
    if len(items) < 2:
        first = text.strip().splitlines()[0] if text.strip() else ""
        items = [s for s in re.split(r",|/|\bor\b", first)]
    labels = [re.sub(r"^[\"'*\s]+|[\"'*\s.]+$", "", s) for s in items]
    return _dedupe([lab for lab in labels if lab and len(lab.split()) <= 4])[:10]


def clean_input(text: str) -> str:
    text = _INPUT_PREAMBLE.sub("", text.strip(), count=1).strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    return text


@dataclass
class InstanceResult:
    kept: list[Record] = field(default_factory=list)
    rejected: list[tuple[Record, str, dict]] = field(default_factory=list)
    stats: Counter = field(default_factory=Counter)


def instance_request(messages: list[dict[str, str]], decoding, instance: int = 0) -> ChatRequest:
    """A request; the instance number keeps the k-th instance of a task from being the same request (and answer)
    as the first (the first has no key, so its cache key is the plain request's)."""
    return ChatRequest(messages=messages, decoding=decoding, sample_key=f"instance-{instance}" if instance else "")


def classify(tasks: list[Record], teacher: Teacher, cfg: BootstrapConfig, stats: Counter) -> None:
    """Set ``is_classification`` on every task."""
    if cfg.classification == "rules":
        for t in tasks:
            t.is_classification = is_classification_by_rules(t.instruction)
        return
    answers = teacher.generate([instance_request(render_messages("classify", instruction=t.instruction),
                                                 cfg.classification_decoding) for t in tasks])
    for t, a in zip(tasks, answers):
        verdict = parse_yes_no(a.text)
        if verdict is None:
            stats["classification_unparsed"] += 1
        t.is_classification = bool(verdict)


def generate_instances(tasks: list[Record], teacher: Teacher, cfg: BootstrapConfig) -> InstanceResult:
    """(input, output) candidates for each task; rejections carry a reason. Instance filters run later."""
    res = InstanceResult()
    classify(tasks, teacher, cfg, res.stats)

    # Output-first: labels for classification tasks.
    cls_tasks = [t for t in tasks if t.is_classification]
    labels = {t.id: labels_from_instruction(t.instruction) for t in cls_tasks}
    ask = [t for t in cls_tasks if not labels[t.id]]
    replies = teacher.generate([instance_request(render_messages("list_labels", instruction=t.instruction),
                                                 cfg.labels_decoding) for t in ask]) if ask else []
    for t, r in zip(ask, replies):
        labels[t.id] = parse_labels(r.text)
    # (task, label or None) drafts whose input is written by the teacher; the rest need no input.
    drafts: list[tuple[Record, str | None, list[dict], int]] = []
    for t in tasks:
        if t.is_classification:
            if not labels[t.id]:
                res.rejected.append((t, "no_class_labels", {}))
                continue
            for lab in labels[t.id][: cfg.max_instances_per_task]:
                drafts.append((t, lab, render_messages("write_input_for_label", instruction=t.instruction, label=lab),
                               0))
        elif needs_input(t.instruction):
            for k in range(cfg.instances_per_task):
                drafts.append((t, None, render_messages("write_input", instruction=t.instruction), k))
        else:
            for k in range(cfg.instances_per_task):
                drafts.append((t, None, [], k))

    written = teacher.generate([instance_request(m, cfg.input_decoding, k) for _, _, m, k in drafts if m])
    it = iter(written)
    pending: list[tuple[Record, str | None, str, int]] = []
    for t, lab, messages, k in drafts:
        inp = ""
        if messages:
            reply = next(it)
            if reply.finish_reason == "length":
                res.rejected.append((t, "truncated_input", {"label": lab}))
                continue
            inp = clean_input(reply.text)
            if not inp:
                res.rejected.append((t, "empty_input", {"label": lab}))
                continue
        pending.append((t, lab, inp, k))

    # Input-first tasks are answered by the teacher; classification tasks take their label as the output.
    to_answer = [(t, inp, k) for t, lab, inp, k in pending if lab is None]
    answers = teacher.generate([instance_request([{"role": "user", "content": user_prompt(t.instruction, inp)}],
                                                 cfg.answer_decoding, k) for t, inp, k in to_answer])
    answer_of = iter(answers)
    counters: Counter = Counter()
    for t, lab, inp, _ in pending:
        if lab is None:
            reply = next(answer_of)
            if reply.finish_reason == "length":
                res.rejected.append((Record(**{**t.to_dict(), "input": inp, "output": reply.text}),
                                     "truncated_output", {}))
                continue
            output = reply.text.strip()
        else:
            output = lab
        k = counters[t.id]
        counters[t.id] += 1
        res.kept.append(Record(**{**t.to_dict(), "id": f"{t.task_id}-{k}", "input": inp, "output": output}))
    return res
