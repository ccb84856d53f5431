"""Instance generation for new tasks: decide classification, then write (input, output) pairs.

Every teacher call is a plain chat request a small instruction model can follow; one task's requests form a chain
(each is sent the moment the one it depends on is answered), and the chains of all tasks run at once in the engine:
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
from ..teachers import ChatRequest, Completion, Engine
from ..teachers.base import REFUSED
from ..teachers.engine import gather_or_cancel
from ..teachers.formats import LABELS, YES_NO, OutputFormat
from .export import user_prompt
from .parsing import json_choice, json_string_list, parse_numbered_list, parse_yes_no

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


def _request(name: str, decoding, instance: int = 0, fmt: OutputFormat | None = None, **values) -> ChatRequest:
    req = instance_request(render_messages(name, **values), decoding, instance)
    req.format = fmt
    return req


def _format(engine: Engine, fmt: OutputFormat) -> OutputFormat | None:
    """The format where the engine's backend does structured outputs, else None (free text, as before)."""
    return fmt if getattr(engine, "structured", "off") != "off" else None


def parse_yes_no_answer(text: str, stats: Counter | None = None) -> bool | None:
    """A Yes/No answer: ``{"answer": "Yes"}`` first, then the tolerant parser (stats count which one read it)."""
    choice = json_choice(text, "answer", ["Yes", "No"])
    if choice is not None:
        if stats is not None:
            stats["classification_parsed_as_json"] += 1
        return choice == "Yes"
    return parse_yes_no(text)


def parse_labels_answer(text: str, stats: Counter | None = None) -> list[str]:
    """Class labels: ``{"labels": [...]}`` first, then the tolerant parser (stats count which one read them)."""
    parsed = json_string_list(text, "labels")
    if parsed is not None:
        if stats is not None:
            stats["labels_parsed_as_json"] += 1
        return _dedupe([lab for lab in parsed[0] if len(lab.split()) <= 4])[:10]
    return parse_labels(text)


async def is_classification(task: Record, engine: Engine, cfg: BootstrapConfig, stats: Counter
                            ) -> bool | Completion:
    """Whether the task is a classification task; the teacher's refusal (a ``Completion``) when it refused."""
    if cfg.classification == "rules":
        return is_classification_by_rules(task.instruction)
    answer = await engine.complete(_request("classify", cfg.classification_decoding, fmt=_format(engine, YES_NO),
                                            instruction=task.instruction), "classify", priority=2)
    if answer.finish_reason == REFUSED:
        return answer
    verdict = parse_yes_no_answer(answer.text, stats)
    if verdict is None:
        stats["classification_unparsed"] += 1
    return bool(verdict)


async def instances_for(task: Record, engine: Engine, cfg: BootstrapConfig) -> InstanceResult:
    """(input, output) candidates for one task, each request sent as soon as the one it depends on is answered;
    rejections carry a reason. Instance filters run later."""
    res = InstanceResult()
    verdict = await is_classification(task, engine, cfg, res.stats)
    if isinstance(verdict, Completion):
        res.rejected.append((task, "teacher_refused", {"message": verdict.text}))
        return res
    task.is_classification = verdict
    # (label or None, messages for the input, instance number): drafts whose input the teacher writes, or none.
    drafts: list[tuple[str | None, list[dict], int]] = []
    if task.is_classification:  # output-first: the labels, then an input for each
        labels = labels_from_instruction(task.instruction)
        if not labels:
            reply = await engine.complete(_request("list_labels", cfg.labels_decoding, fmt=_format(engine, LABELS),
                                                   instruction=task.instruction), "labels", priority=1)
            labels = parse_labels_answer(reply.text, res.stats) if reply.finish_reason != REFUSED else []
        if not labels:
            res.rejected.append((task, "no_class_labels", {}))
            return res
        drafts = [(lab, render_messages("write_input_for_label", instruction=task.instruction, label=lab), 0)
                  for lab in labels[: cfg.max_instances_per_task]]
    else:  # input-first: the input the instruction refers to, if any, then the answer on it
        messages = render_messages("write_input", instruction=task.instruction) if needs_input(task.instruction) else []
        drafts = [(None, messages, k) for k in range(cfg.instances_per_task)]

    async def one(label: str | None, messages: list[dict], k: int) -> tuple[Record | None, str, dict, str]:
        inp = ""
        if messages:
            reply = await engine.complete(instance_request(messages, cfg.input_decoding, k), "input",
                                          priority=0 if label is not None else 1)
            if reply.finish_reason == REFUSED:
                return None, "teacher_refused", {"label": label, "message": reply.text}, ""
            if reply.finish_reason == "length":
                return None, "truncated_input", {"label": label}, ""
            inp = clean_input(reply.text)
            if not inp:
                return None, "empty_input", {"label": label}, ""
        if label is not None:  # classification: the label is the output
            return None, "", {}, inp
        reply = await engine.complete(instance_request([{"role": "user", "content": user_prompt(task.instruction, inp)}],
                                                       cfg.answer_decoding, k), "answer", priority=0)
        with_answer = Record(**{**task.to_dict(), "input": inp, "output": reply.text})
        if reply.finish_reason == REFUSED:
            return with_answer, "teacher_refused", {"message": reply.text}, inp
        if reply.finish_reason == "length":
            return with_answer, "truncated_output", {}, inp
        return None, "", {"output": reply.text.strip()}, inp

    outcomes = await gather_or_cancel(one(lab, m, k) for lab, m, k in drafts)
    n = 0
    for (label, _, _), (rec, reason, details, inp) in zip(drafts, outcomes):
        if reason:
            res.rejected.append((rec or task, reason, details))
            continue
        output = label if label is not None else details["output"]
        res.kept.append(Record(**{**task.to_dict(), "id": f"{task.task_id}-{n}", "input": inp, "output": output}))
        n += 1
    return res
