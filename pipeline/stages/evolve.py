"""Evol-Instruct (WizardLM): make instructions harder (in-depth) or new (in-breadth), answer them, eliminate failures.

The pool holds one lineage per input task; its head is the seed, then its last accepted evolution. One round:
  1. every active item draws one operation (seeded rng, weights from the config) and the teacher rewrites its
     head with ``prompts/evolve_<operation>.j2`` (one batched ``teacher.generate`` call);
  2. the reply is parsed (echoed headers, preambles, quotes and markdown stripped) and the cheap checks run:
     truncated, empty or unparseable reply, words leaked from the evolving prompt, no change against the parent,
     copied from the template's examples, repeating itself (a loop), over the absolute length caps, grown by far
     more than the 10-20 words an in-depth step asks for, drifted away from the parent;
  3. optionally the teacher judges Equal / Not Equal against the parent (``prompts/evolve_equal.j2``, one call);
  4. the teacher answers the survivors with the plain user prompt, as the tuned model will be prompted (one
     call), and the answer checks run: truncated, empty, "sorry" in a short answer, only punctuation and stop words.
A passing candidate becomes the item's new head and a record of the dataset, with its lineage (parent_id,
root_id, round, operation). A failing one is a ``Rejection`` and the item goes back to the pool unchanged, to be
tried again next round; after ``max_failures_per_item`` failures in all it is retired. Rounds, failures and the
length caps bound everything: no item grows or is retried without limit.

``evolve_round`` is pure (state, teacher, config, rng in; records, rejections and stats out): the runner in
``pipeline.runs.stages`` owns all file I/O.
"""
from __future__ import annotations

import random
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..config import EVOLVE_OPERATIONS, EvolveConfig, FilterConfig
from ..filters.chain import FilterResult, filter_records
from ..filters.rouge import Tokenizer, lcs
from ..prompts import render_messages
from ..records import Record, Rejection
from ..teachers import ChatRequest, Completion, Teacher
from ..teachers.formats import EQUAL
from .export import user_prompt
from .parsing import json_choice

STAGE = "evolve"
OPERATIONS = EVOLVE_OPERATIONS
IN_DEPTH = ("constraints", "deepen", "concretize", "reasoning", "complicate_input")
IN_BREADTH = ("breadth",)

# Words of the evolving prompt that must never reach an accepted instruction. Every header and role phrase the
# templates in prompts/evolve_*.j2 use is here (tests/test_evolve.py checks that), plus the phrasings models echo.
LEAK_PHRASES: tuple[str, ...] = (
    "#given prompt#", "#rewritten prompt#", "#created prompt#", "#input#",
    "given prompt", "rewritten prompt", "created prompt", "new prompt", "original prompt", "the prompt above",
    "the rewritten", "rewritten version", "rewritten instruction", "rewritten task", "rewritten question",
    "given instruction", "original instruction", "new instruction:", "prompt rewriter", "prompt creator",
    "it stays the same", "rewrite the prompt", "#new prompt#", "#prompt#",
)
# A "#Word Word#" marker of the kind the templates use (no space after the first or before the last '#', so C#,
# F# and markdown headings do not match).
_MARKER = re.compile(r"#[A-Za-z][A-Za-z ]{0,30}[A-Za-z]#")

_STOP_WORDS = frozenset(
    "a an the and or but if then else of to in on at by for with from as is are was were be been being am do does "
    "did have has had i you he she it we they me him her us them my your his its our their this that these those "
    "there here what which who whom whose when where why how not no yes so too very can could will would shall "
    "should may might must just also only than such all any both each few more most other some own same into about "
    "over under again further once up down out off ok okay well oh ah um uh".split()
)
_PUNCT_OR_SPACE = set(string.punctuation + string.whitespace + "\u2018\u2019\u201c\u201d\u2013\u2014\u2026")
_WORD = re.compile(r"\S+")
_TOKEN = re.compile(r"[a-z0-9]+")


def words(text: str) -> int:
    return len(_WORD.findall(text))


def normalize(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: two prompts equal after this did not change."""
    return " ".join(_TOKEN.findall(text.lower()))


# ---------------------------------------------------------------------------------------------------------------
# Parsing the teacher's rewrite

_HEADER_WORDS = r"(?:rewritten|created|new|revised|evolved|harder|final|updated|modified)"
_HEADER = re.compile(
    rf"(?im)^[ \t>*_\"'`]*#?[ \t]*{_HEADER_WORDS}[ \t]+(?:prompt|instruction|task|version|question)[ \t]*#?"
    r"[ \t]*(?:\*\*|__)?[ \t]*[:\-\u2013\u2014]?[ \t]*(?:\*\*|__)?[ \t]*")
_GENERIC_LABEL = re.compile(
    r"(?i)^[ \t>*_]*(?:prompt|instruction|task|question|answer|output)[ \t]*(?:\*\*|__)?[ \t]*:"
    r"[ \t]*(?:\*\*|__)?[ \t]*")
_PREAMBLE_LINE = re.compile(
    r"(?i)^\s*(?:sure|certainly|of course|okay|ok|absolutely|great|here(?:'s| is| are)|below is|this is)\b[^\n]*"
    r"(?::|\bprompt\b[^\n]*[.!])\s*$")
_PREAMBLE_INLINE = re.compile(
    r"(?i)^\s*(?:(?:sure|certainly|of course|okay|ok|absolutely)[!,.]?\s*)?"
    r"(?:here(?:'s| is| are)[^:\n]{0,80}:|(?:sure|certainly|of course|okay|ok|absolutely)[!,.])\s*")
# Sections after the instruction that belong to the template, not to the new task.
_TRAILING_SECTION = re.compile(
    r"(?im)^[ \t*_]*(?:#input#|#given prompt#|#output#|#answer#|\(?note\b\s*:|explanation\s*:|"
    r"rewrite the #given prompt#|write a brand-new prompt|"
    r"this (?:rewritten|new|revised|created) (?:prompt|version|instruction|task)\b|"
    r"i hope this|let me know)")
_QUOTES = {'"': '"', "'": "'", "`": "`", "\u201c": "\u201d", "\u2018": "\u2019", "\u00ab": "\u00bb"}


def _unwrap(text: str) -> str:
    """Strip quotes or markdown emphasis that wrap the whole text (repeatedly: **"..."**)."""
    while True:
        t = text.strip()
        for mark in ("**", "__", "*", "_"):
            inner = t[len(mark):-len(mark)]
            if len(t) > 2 * len(mark) and t.startswith(mark) and t.endswith(mark) and mark not in inner:
                t = inner.strip()
                break
        if len(t) >= 2 and t[0] in _QUOTES and t[-1] == _QUOTES[t[0]] and t[0] not in t[1:-1]:
            t = t[1:-1].strip()
        if t == text.strip():
            return t
        text = t


def parse_rewrite(text: str) -> str:
    """The new instruction in a rewrite reply, or "" when nothing usable is left (a counted failure).

    Strips an echoed header ("#Rewritten Prompt#:", "Rewritten prompt:", "**New instruction:**"; text after the
    last one wins), a preamble ("Sure, here is the rewritten prompt:"), template sections the model appends
    ("#Input#", "Note:"), a generic "Prompt:" label, and quotes or markdown wrapping the whole text. Line breaks
    inside the instruction (tables, code, JSON) are kept.
    """
    t = text.replace("\r\n", "\n").strip()
    headers = list(_HEADER.finditer(t))
    if headers:
        t = t[headers[-1].end():]
    t = t.strip()
    lines = t.split("\n")
    while lines and (_PREAMBLE_LINE.match(lines[0]) or not lines[0].strip()):
        lines.pop(0)
    t = "\n".join(lines).strip()
    t = _PREAMBLE_INLINE.sub("", t, count=1).strip()
    t = _GENERIC_LABEL.sub("", t, count=1).strip()
    cut = _TRAILING_SECTION.search(t)
    if cut and cut.start() > 0:
        t = t[: cut.start()].strip()
    t = _unwrap(t)
    t = _GENERIC_LABEL.sub("", t, count=1).strip()
    t = "\n".join(line.rstrip() for line in t.split("\n")).strip()
    if not t or all(ch in _PUNCT_OR_SPACE for ch in t):
        return ""
    return t


# ---------------------------------------------------------------------------------------------------------------
# Cheap checks

Verdict = tuple[str, dict[str, Any]] | None  # None = pass; (reason, details) = fail


def _phrase_pattern(phrase: str) -> re.Pattern:
    body = r"\s+".join(re.escape(part) for part in phrase.lower().split())
    left = r"(?<![a-z0-9])" if phrase[:1].isalnum() else ""
    right = r"(?![a-z0-9])" if phrase[-1:].isalnum() else ""
    return re.compile(left + body + right)


class LeakDetector:
    def __init__(self, extra: list[str] | tuple[str, ...] = ()):
        self.phrases = tuple(dict.fromkeys([*LEAK_PHRASES, *(p.lower().strip() for p in extra if p.strip())]))
        self._patterns = [(p, _phrase_pattern(p)) for p in self.phrases]

    def find(self, text: str) -> str | None:
        """The first leaked phrase in ``text`` (case-insensitive), or None."""
        low = text.lower()
        for phrase, pattern in self._patterns:
            if pattern.search(low):
                return phrase
        m = _MARKER.search(text)
        return m.group(0).lower() if m else None


def only_stop_words(text: str) -> bool:
    """True when the text holds nothing but punctuation, whitespace and stop words."""
    return all(tok in _STOP_WORDS for tok in _TOKEN.findall(text.lower()))


def check_answer(answer: Completion, sorry_max_words: int) -> Verdict:
    text = answer.text.strip()
    if answer.finish_reason == "length":
        return "truncated_answer", {"words": words(text)}
    if not text:
        return "empty_answer", {}
    n = words(text)
    if "sorry" in text.lower() and n < sorry_max_words:
        return "sorry_answer", {"words": n}
    if only_stop_words(text):
        return "stopword_answer", {"answer": text[:200]}
    return None


def _ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


_tokenizer = Tokenizer()


def parent_recall(parent: str, child: str) -> float:
    """ROUGE-L recall of the parent instruction's tokens in the child (1.0 = every parent word kept, in order)."""
    p = _tokenizer.tokenize(parent)
    return lcs(p, _tokenizer.tokenize(child)) / len(p) if p else 1.0


COPY_NGRAM = 5
REPEAT_NGRAM = 8  # a word 8-gram that occurs twice in one rewrite: the model looped


def repeated_ngram(text: str, n: int = REPEAT_NGRAM) -> str | None:
    """The first word n-gram that occurs more than once in ``text`` (a degenerate loop), or None."""
    tokens = _TOKEN.findall(text.lower())
    seen: set[tuple[str, ...]] = set()
    for i in range(len(tokens) - n + 1):
        gram = tuple(tokens[i:i + n])
        if gram in seen:
            return " ".join(gram)
        seen.add(gram)
    return None


def example_ngrams(messages: list[dict[str, str]]) -> set[tuple[str, ...]]:
    """Word n-grams of a template's own text (system rules, few-shot turns): all turns but the last."""
    out: set[tuple[str, ...]] = set()
    for m in messages[:-1]:
        out |= _ngrams(_TOKEN.findall(m["content"].lower()), COPY_NGRAM)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Pool and stats


@dataclass
class PoolItem:
    root_id: str
    head: Record  # the seed, then its last accepted evolution
    failures: int = 0  # failed evolutions in all (never reset)
    evolutions: int = 0
    status: str = "active"  # active | retired
    retired_reason: str | None = None


@dataclass
class Tally:
    attempts: int = 0
    passes: int = 0
    failures: Counter = field(default_factory=Counter)
    growth_words: int = 0  # summed over passes: words(evolved prompt) - words(parent prompt)

    def add(self, other: "Tally") -> None:
        self.attempts += other.attempts
        self.passes += other.passes
        self.failures.update(other.failures)
        self.growth_words += other.growth_words

    def as_dict(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "passes": self.passes,
            "pass_rate": round(self.passes / self.attempts, 4) if self.attempts else None,
            "failures": dict(self.failures.most_common()),
            "mean_growth_words": round(self.growth_words / self.passes, 2) if self.passes else None,
        }


@dataclass
class RoundStats:
    round: int
    by_operation: dict[str, Tally] = field(default_factory=lambda: {op: Tally() for op in OPERATIONS})
    retired: Counter = field(default_factory=Counter)

    def total(self) -> Tally:
        t = Tally()
        for tally in self.by_operation.values():
            t.add(tally)
        return t

    def as_dict(self) -> dict[str, Any]:
        return {"round": self.round, **self.total().as_dict(),
                "by_operation": {op: t.as_dict() for op, t in self.by_operation.items() if t.attempts},
                "retired": dict(self.retired)}


@dataclass
class EvolveState:
    items: list[PoolItem]
    round: int = 0
    history: list[RoundStats] = field(default_factory=list)

    @classmethod
    def start(cls, records: list[Record], max_items: int = 0, rng: random.Random | None = None) -> "EvolveState":
        """One pool item per input task (the first record of each task_id). With ``max_items`` > 0, a seeded
        sample of that many tasks, kept in input order."""
        firsts: dict[str, Record] = {}
        for rec in records:
            firsts.setdefault(rec.task_id or rec.id, rec)
        chosen = list(firsts.values())
        if max_items and len(chosen) > max_items:
            keep = sorted((rng or random.Random(0)).sample(range(len(chosen)), max_items))
            chosen = [chosen[i] for i in keep]
        items, seen = [], Counter()
        for rec in chosen:
            root = rec.id if not seen[rec.id] else f"{rec.id}~{seen[rec.id]}"  # ids must be unique per lineage
            seen[rec.id] += 1
            items.append(PoolItem(root_id=root, head=rec))
        return cls(items=items)

    def active(self) -> list[PoolItem]:
        return [it for it in self.items if it.status == "active"]

    def summary(self) -> dict[str, Any]:
        retired = Counter(it.retired_reason for it in self.items if it.status == "retired")
        by_op: dict[str, Tally] = {op: Tally() for op in OPERATIONS}
        total = Tally()
        for rs in self.history:
            for op, t in rs.by_operation.items():
                by_op[op].add(t)
                total.add(t)
        return {
            "rounds": [rs.as_dict() for rs in self.history],
            "by_operation": {op: t.as_dict() for op, t in by_op.items()},
            "total": total.as_dict(),
            "pool": {"items": len(self.items), "active": len(self.active()), "retired": sum(retired.values()),
                     "retired_by_reason": dict(retired),
                     "evolved_items": sum(1 for it in self.items if it.evolutions),
                     "max_depth": max((it.evolutions for it in self.items), default=0)},
        }


@dataclass
class RoundResult:
    kept: list[Record] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    stats: RoundStats | None = None


def choose_operation(cfg: EvolveConfig, rng: random.Random) -> str:
    ops = [op for op in OPERATIONS if cfg.operations.get(op, 0) > 0]
    return rng.choices(ops, weights=[cfg.operations[op] for op in ops], k=1)[0]


def parse_equal(text: str) -> bool | None:
    """The equality judgment: True = Equal (no information gain), False = Not Equal, None = unreadable.
    ``{"verdict": "Equal"}`` (structured outputs) first, then the words."""
    choice = json_choice(text, "verdict", ["Equal", "Not Equal"])
    if choice is not None:
        return choice == "Equal"
    low = text.lower()
    if re.search(r"\bnot\s+equal\b|\bunequal\b|\bdifferent\b|\bnot\s+(?:the\s+)?same\b|\bnot\s+identical\b", low):
        return False
    if re.search(r"\bequal\b|\bthe same\b|\bidentical\b", low):
        return True
    return None


@dataclass
class _Candidate:
    item: PoolItem
    op: str
    record: Record
    messages: list[dict[str, str]]
    completion: Completion | None = None


# ---------------------------------------------------------------------------------------------------------------
# One round


def evolve_round(state: EvolveState, teacher: Teacher, cfg: EvolveConfig, rng: random.Random) -> RoundResult:
    """Evolve every active pool item once. Batched: one ``teacher.generate`` call for the rewrites, one for the
    optional equality judgment, one for the answers."""
    state.round += 1
    r = state.round
    stats = RoundStats(round=r)
    result = RoundResult(stats=stats)
    leaks = LeakDetector(cfg.extra_leak_phrases)

    cands: list[_Candidate] = []
    for item in state.active():
        op = choose_operation(cfg, rng)
        parent = item.head
        messages = render_messages(f"evolve_{op}", instruction=parent.instruction, input=parent.input)
        rec = Record(id=f"{item.root_id}-r{r}", instruction="", input="" if op in IN_BREADTH else parent.input,
                     source=STAGE, teacher_model=teacher.model_name, parent_id=parent.id, root_id=item.root_id,
                     round=r, operation=op)
        rec.task_id = rec.id
        cands.append(_Candidate(item, op, rec, messages))
    if not cands:
        state.history.append(stats)
        return result

    def fail(c: _Candidate, reason: str, **details: Any) -> None:
        tally = stats.by_operation[c.op]
        tally.attempts += 1
        tally.failures[reason] += 1
        c.item.failures += 1
        details = {"parent_id": c.item.head.id, "failures": c.item.failures, **details}
        if c.item.failures >= cfg.max_failures_per_item:
            c.item.status, c.item.retired_reason = "retired", "max_failures"
            stats.retired["max_failures"] += 1
            details["retired"] = True
        result.rejected.append(Rejection(c.record, reason, details, STAGE))

    # 1. Rewrite.
    # Each request carries its record id as sample key: a retry next round is a fresh sample, not a replay of the
    # failed one (identical requests share a sampling seed and a cache entry).
    completions = teacher.generate([ChatRequest(c.messages, cfg.rewrite_decoding, sample_key=c.record.id)
                                    for c in cands])
    survivors: list[_Candidate] = []
    for c, comp in zip(cands, completions):
        c.completion = comp
        parent = c.item.head
        c.record.meta["raw_rewrite"] = comp.text[:4000]
        text = parse_rewrite(comp.text)
        c.record.instruction = text  # also on a rejection, so rejected.jsonl shows what was parsed
        if comp.finish_reason == "length":
            fail(c, "truncated_rewrite", finish_reason="length")
            continue
        if not comp.text.strip():
            fail(c, "empty_rewrite")
            continue
        if not text:
            fail(c, "unparseable_rewrite")
            continue
        phrase = leaks.find(text)
        if phrase:
            fail(c, "leaked_prompt", phrase=phrase)
            continue
        if (normalize(text) == normalize(parent.instruction)
                or normalize(user_prompt(text, c.record.input)) == normalize(user_prompt(parent.instruction,
                                                                                         parent.input))):
            fail(c, "unchanged")
            continue
        copied = _ngrams(_TOKEN.findall(text.lower()), COPY_NGRAM) & example_ngrams(c.messages)
        copied -= _ngrams(_TOKEN.findall(user_prompt(parent.instruction, parent.input).lower()), COPY_NGRAM)
        if copied:
            fail(c, "copied_example", ngram=" ".join(sorted(copied)[0]))
            continue
        loop = repeated_ngram(text)
        if loop:
            fail(c, "repetitive_rewrite", ngram=loop)
            continue
        prompt = user_prompt(text, c.record.input)
        if words(prompt) > cfg.max_instruction_words or len(prompt) > cfg.max_instruction_chars:
            fail(c, "too_long", words=words(prompt), chars=len(prompt),
                 max_words=cfg.max_instruction_words, max_chars=cfg.max_instruction_chars)
            continue
        growth = words(prompt) - words(user_prompt(parent.instruction, parent.input))
        if cfg.max_growth_words and c.op in IN_DEPTH and c.op != "complicate_input" and growth > cfg.max_growth_words:
            fail(c, "grew_too_much", growth_words=growth, max_growth_words=cfg.max_growth_words)
            continue
        if c.op in IN_DEPTH and cfg.min_parent_overlap > 0:
            recall = parent_recall(parent.instruction, text)
            if recall < cfg.min_parent_overlap:
                fail(c, "drifted", parent_recall=round(recall, 3), min_parent_overlap=cfg.min_parent_overlap)
                continue
        survivors.append(c)

    # 2. Equal / Not Equal judgment (cheap checks ran first; short replies, so before the long answers).
    if cfg.judge_equal and survivors:
        judged = teacher.generate([
            ChatRequest(render_messages("evolve_equal", first=user_prompt(c.item.head.instruction, c.item.head.input),
                                        second=user_prompt(c.record.instruction, c.record.input)),
                        cfg.judge_decoding, sample_key=c.record.id,
                        format=EQUAL if getattr(teacher, "structured", "off") != "off" else None)
            for c in survivors])
        kept_after_judge = []
        for c, j in zip(survivors, judged):
            verdict = parse_equal(j.text)
            c.record.meta["judge"] = j.text.strip()[:200]
            if verdict is None:
                fail(c, "judge_unparseable", judge=j.text.strip()[:200])
            elif verdict:
                fail(c, "no_information_gain", judge=j.text.strip()[:200])
            else:
                kept_after_judge.append(c)
        survivors = kept_after_judge

    # 3. Answer, with the plain user prompt.
    answers = teacher.generate([
        ChatRequest([{"role": "user", "content": user_prompt(c.record.instruction, c.record.input)}],
                    cfg.answer_decoding, sample_key=c.record.id) for c in survivors]) if survivors else []
    for c, ans in zip(survivors, answers):
        c.record.output = ans.text.strip()
        verdict = check_answer(ans, cfg.sorry_max_words)
        if verdict is not None:
            fail(c, verdict[0], **verdict[1])
            continue
        parent = c.item.head
        growth = words(user_prompt(c.record.instruction, c.record.input)) - words(user_prompt(parent.instruction,
                                                                                               parent.input))
        tally = stats.by_operation[c.op]
        tally.attempts += 1
        tally.passes += 1
        tally.growth_words += growth
        c.record.meta.pop("raw_rewrite", None)
        c.record.meta["growth_words"] = growth
        c.item.head = c.record
        c.item.evolutions += 1
        result.kept.append(c.record)
    state.history.append(stats)
    return result


# ---------------------------------------------------------------------------------------------------------------
# The filter chain over the evolved set


def final_filter(records: list[Record], reference: list[Record], fcfg: FilterConfig) -> FilterResult:
    """THE single call site of the filter chain for evolved records: ``filters.chain.filter_records`` (the
    heuristics, exact duplicates, task rules and the ROUGE-L novelty filter) with ``reference`` (the input tasks
    and the evolved records accepted so far) as the starting pool. Returns its result (.kept, .rejected, .stats).
    """
    return filter_records(records, fcfg, reference=reference)
