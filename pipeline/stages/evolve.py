"""Evol-Instruct (WizardLM): make instructions harder (in-depth) or new (in-breadth), answer them, eliminate failures.

The pool holds one lineage per input task; its head is the seed, then its last accepted evolution. One round:
  1. every active item draws one operation (a generator seeded by (seed, lineage, round), weights from the config)
     and the teacher rewrites its head with ``prompts/evolve_<operation>.j2``;
  2. the reply is parsed (echoed headers, preambles, quotes and markdown stripped) and the cheap checks run:
     truncated, empty or unparseable reply, words leaked from the evolving prompt, no change against the parent,
     copied from the template's examples, repeating itself (a loop), over the absolute length caps, grown by far
     more than the 10-20 words an in-depth step asks for, drifted away from the parent;
  3. optionally the teacher judges Equal / Not Equal against the parent (``prompts/evolve_equal.j2``);
  4. the teacher answers a survivor with the plain user prompt, as the tuned model will be prompted, and the
     answer checks run: truncated, empty, "sorry" in a short answer, only punctuation and stop words.
A passing candidate becomes the item's new head and a record of the dataset, with its lineage (parent_id,
root_id, round, operation). A failing one is a ``Rejection`` and the item goes back to the pool unchanged, to be
tried again next round; after ``max_failures_per_item`` failures in all it is retired. Rounds, failures and the
length caps bound everything: no item grows or is retried without limit.

Each item runs its own chain of requests (rewrite -> judge -> answer, round after round) through the run's one
engine, so no phase or round waits for the slowest item (``run``); results are still emitted round by round in pool
order. ``run`` is a pure coroutine (state, engine, config in; each round's records, rejections and stats to
``emit``): the runner in ``pipeline.runs.stages`` owns all file I/O.
"""
from __future__ import annotations

import asyncio
import random
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from ..config import EVOLVE_OPERATIONS, EvolveConfig, FilterConfig
from ..filters.chain import Checks, FilterResult, filter_records
from ..filters.rouge import Tokenizer, lcs
from ..prompts import render_messages
from ..records import Record, Rejection
from ..teachers import ChatRequest, Completion, Teacher
from ..teachers.base import REFUSED
from ..teachers.cache import BudgetExhausted
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
class _Attempt:
    """One pool item's try in one round: the candidate record and how it ended."""

    item: PoolItem
    op: str
    record: Record
    rejection: Rejection | None = None
    growth: int = 0
    retired: bool = False


def _operation(cfg: EvolveConfig, item: PoolItem, round_no: int) -> str:
    """The operation an item draws in a round: a generator of its own per (seed, lineage, round), so the draw does
    not depend on which other items are still active or on the order their answers arrive."""
    return choose_operation(cfg, random.Random(f"{cfg.seed}:{item.root_id}:{round_no}"))


def _check_rewrite(a: _Attempt, text: str, comp: Completion, messages: list[dict[str, str]], cfg: EvolveConfig,
                   leaks: LeakDetector) -> tuple[str, dict[str, Any]] | None:
    """The cheap checks on a rewrite, in order; the first failure (reason, details), or None."""
    parent = a.item.head
    if comp.finish_reason == REFUSED:
        return "teacher_refused", {"message": comp.text[:500]}
    if comp.finish_reason == "length":
        return "truncated_rewrite", {"finish_reason": "length"}
    if not comp.text.strip():
        return "empty_rewrite", {}
    if not text:
        return "unparseable_rewrite", {}
    phrase = leaks.find(text)
    if phrase:
        return "leaked_prompt", {"phrase": phrase}
    if (normalize(text) == normalize(parent.instruction)
            or normalize(user_prompt(text, a.record.input)) == normalize(user_prompt(parent.instruction,
                                                                                     parent.input))):
        return "unchanged", {}
    copied = _ngrams(_TOKEN.findall(text.lower()), COPY_NGRAM) & example_ngrams(messages)
    copied -= _ngrams(_TOKEN.findall(user_prompt(parent.instruction, parent.input).lower()), COPY_NGRAM)
    if copied:
        return "copied_example", {"ngram": " ".join(sorted(copied)[0])}
    loop = repeated_ngram(text)
    if loop:
        return "repetitive_rewrite", {"ngram": loop}
    prompt = user_prompt(text, a.record.input)
    if words(prompt) > cfg.max_instruction_words or len(prompt) > cfg.max_instruction_chars:
        return "too_long", {"words": words(prompt), "chars": len(prompt), "max_words": cfg.max_instruction_words,
                            "max_chars": cfg.max_instruction_chars}
    growth = words(prompt) - words(user_prompt(parent.instruction, parent.input))
    if cfg.max_growth_words and a.op in IN_DEPTH and a.op != "complicate_input" and growth > cfg.max_growth_words:
        return "grew_too_much", {"growth_words": growth, "max_growth_words": cfg.max_growth_words}
    if a.op in IN_DEPTH and cfg.min_parent_overlap > 0:
        recall = parent_recall(parent.instruction, text)
        if recall < cfg.min_parent_overlap:
            return "drifted", {"parent_recall": round(recall, 3), "min_parent_overlap": cfg.min_parent_overlap}
    return None


async def evolve_item(item: PoolItem, round_no: int, engine: Teacher, cfg: EvolveConfig,
                      leaks: LeakDetector, rounds_after: int = 0) -> _Attempt:
    """One item's try in round ``round_no``: rewrite, cheap checks, the optional Equal judgment, the answer, the
    answer checks, each request sent as soon as the previous one is answered (no phase waits for other items).
    A pass makes the candidate the item's new head; a failure counts against the item and may retire it.
    ``rounds_after``: rounds this item may still run after this one (its requests' priority in the engine)."""
    later = 3 * rounds_after
    op = _operation(cfg, item, round_no)
    parent = item.head
    messages = render_messages(f"evolve_{op}", instruction=parent.instruction, input=parent.input)
    rec = Record(id=f"{item.root_id}-r{round_no}", instruction="", input="" if op in IN_BREADTH else parent.input,
                 source=STAGE, teacher_model=engine.model_name, parent_id=parent.id, root_id=item.root_id,
                 round=round_no, operation=op)
    rec.task_id = rec.id
    a = _Attempt(item, op, rec)

    def fail(reason: str, details: dict[str, Any]) -> _Attempt:
        item.failures += 1
        details = {"parent_id": parent.id, "failures": item.failures, **details}
        if item.failures >= cfg.max_failures_per_item:
            item.status, item.retired_reason = "retired", "max_failures"
            a.retired = details["retired"] = True
        a.rejection = Rejection(rec, reason, details, STAGE)
        return a

    # 1. Rewrite. The record id is the sample key: a retry next round is a fresh sample, not a replay of the
    # failed one (identical requests share a sampling seed and a cache entry).
    comp = await engine.complete(ChatRequest(messages, cfg.rewrite_decoding, sample_key=rec.id), "evolve_rewrite",
                                 priority=later + 2)
    rec.meta["raw_rewrite"] = comp.text[:4000]
    rec.instruction = parse_rewrite(comp.text) if comp.finish_reason != REFUSED else ""  # shown on a rejection too
    verdict = _check_rewrite(a, rec.instruction, comp, messages, cfg, leaks)
    if verdict is not None:
        return fail(*verdict)

    # 2. Equal / Not Equal (after the cheap checks; a short reply, so before the long answer).
    if cfg.judge_equal:
        j = await engine.complete(ChatRequest(
            render_messages("evolve_equal", first=user_prompt(parent.instruction, parent.input),
                            second=user_prompt(rec.instruction, rec.input)),
            cfg.judge_decoding, sample_key=rec.id, format=EQUAL if engine.structured != "off" else None),
            "evolve_judge", priority=later + 1)
        rec.meta["judge"] = j.text.strip()[:200]
        if j.finish_reason == REFUSED:
            return fail("teacher_refused", {"message": j.text[:500]})
        equal = parse_equal(j.text)
        if equal is None:
            return fail("judge_unparseable", {"judge": j.text.strip()[:200]})
        if equal:
            return fail("no_information_gain", {"judge": j.text.strip()[:200]})

    # 3. Answer, with the plain user prompt (as the tuned model will be prompted).
    ans = await engine.complete(ChatRequest([{"role": "user", "content": user_prompt(rec.instruction, rec.input)}],
                                            cfg.answer_decoding, sample_key=rec.id), "evolve_answer",
                                priority=later)
    rec.output = ans.text.strip() if ans.finish_reason != REFUSED else ""
    verdict = (("teacher_refused", {"message": ans.text[:500]}) if ans.finish_reason == REFUSED
               else check_answer(ans, cfg.sorry_max_words))
    if verdict is not None:
        return fail(*verdict)
    a.growth = words(user_prompt(rec.instruction, rec.input)) - words(user_prompt(parent.instruction, parent.input))
    rec.meta.pop("raw_rewrite", None)
    rec.meta["growth_words"] = a.growth
    item.head = rec
    item.evolutions += 1
    return a


def _round_result(round_no: int, attempts: list[_Attempt]) -> RoundResult:
    """A round's records and stats, in pool order."""
    stats = RoundStats(round=round_no)
    result = RoundResult(stats=stats)
    for a in attempts:
        tally = stats.by_operation[a.op]
        tally.attempts += 1
        if a.rejection is None:
            tally.passes += 1
            tally.growth_words += a.growth
            result.kept.append(a.record)
        else:
            tally.failures[a.rejection.reason] += 1
            result.rejected.append(a.rejection)
            if a.retired:
                stats.retired["max_failures"] += 1
    return result


_SKIP = None  # an item that is retired (or out of rounds) takes no part in a round


async def run(state: EvolveState, engine: Teacher, cfg: EvolveConfig, emit: Callable[[RoundResult], None],
              rounds: int | None = None) -> None:
    """Evolve the pool for ``rounds`` more rounds (default ``cfg.rounds``), emitting each round's result in order.

    Every item runs its own chain of requests (``evolve_item``, round after round) and is never held back by
    another item: an item that finished round r starts round r + 1 while slower items are still in round r, so the
    teacher stays busy across rounds. Each item's history depends only on its own answers, so the result is the
    same whatever order answers arrive in, and a resumed run replays it from the request cache. Round r is
    emitted (records in pool order) once every item taking part in it is done with it; the run stops early when
    a round has no active item left.
    """
    total = cfg.rounds if rounds is None else rounds
    first = state.round + 1
    leaks = LeakDetector(cfg.extra_leak_phrases)
    n = len(state.items)
    slots: list[list[_Attempt | None]] = [[_SKIP] * n for _ in range(total)]
    filled = [0] * total
    changed = asyncio.Event()

    async def lineage(i: int, item: PoolItem) -> None:
        for k in range(total):
            if item.status == "active":
                slots[k][i] = await evolve_item(item, first + k, engine, cfg, leaks, rounds_after=total - 1 - k)
            filled[k] += 1
            changed.set()

    tasks = [asyncio.ensure_future(lineage(i, it)) for i, it in enumerate(state.items)]
    try:
        k = 0
        while k < total:
            while k < total and filled[k] == n:
                attempts = [a for a in slots[k] if a is not _SKIP]
                if not attempts:
                    return  # no active item left
                result = _round_result(first + k, attempts)
                state.round = first + k
                state.history.append(result.stats)
                emit(result)
                slots[k] = []
                k += 1
            if k >= total:
                return
            changed.clear()
            waiter = asyncio.ensure_future(changed.wait())
            await asyncio.wait([waiter, *(t for t in tasks if not t.done())], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            for t in tasks:
                if t.done() and not t.cancelled() and t.exception() is not None:
                    if isinstance(t.exception(), BudgetExhausted):
                        # Requests already sent are paid for: let them finish and reach the cache, then stop.
                        await asyncio.gather(*tasks, return_exceptions=True)
                    raise t.exception()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# ---------------------------------------------------------------------------------------------------------------
# The filter chain over the evolved set


def final_filter(records: list[Record], reference: list[Record], fcfg: FilterConfig,
                 checks: Checks | None = None) -> FilterResult:
    """THE single call site of the filter chain for evolved records: ``filters.chain.filter_records`` (the
    heuristics, decontamination and safety ``checks``, exact duplicates, task rules and the ROUGE-L novelty filter,
    lineage-aware) with ``reference`` (the input tasks and the evolved records accepted so far) as the starting
    pool. Returns its result (.kept, .rejected, .stats).
    """
    return filter_records(records, fcfg, reference=reference, checks=checks)
