"""The judge stage: a teacher scores every record, so the select stage can choose by quality and complexity.

Scales (the prompts ``prompts/judge_<score>.j2`` spell them out to the judge):

* ``quality`` 0-5, how well the output answers the instruction (AlpaGasus's scale: 0 wrong or unrelated, 5
  correct, complete and no longer than needed), with a one-sentence reason;
* ``complexity`` 1-5, how demanding the instruction is (1 trivial lookup, 5 deep reasoning under many
  constraints): the signal Deita ranks by.

An answer is read JSON-first (``{"score": 4, "reason": "..."}``), then as text (``Score: 4``, ``4/5``, a reply
that starts with the number). A reply with no number, a number off the scale, or a score on another scale
(``8/10``) is recorded as missing (``scores[name] = None``, with the problem and the start of the reply in
``meta["judge"]``): a missing score is never guessed, and the select stage treats it as missing.

The stage is a coroutine over records with no state of its own: ``score_records`` sends every request at once
(the engine's concurrency limit and priorities pace them) and hands back scored records in input order, batch by
batch, so the runner can write them as they finish.
"""
from __future__ import annotations

import asyncio
import re
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..config import Decoding, JudgeConfig
from ..prompts import render_messages
from ..records import Record
from ..teachers import Teacher
from ..teachers.base import ChatRequest
from ..teachers.formats import PAIRWISE, judge_score, max_tokens_for
from .parsing import json_choice, json_object
from .streaming import emit_in_order

STAGE = "judge"
SCALES: dict[str, tuple[int, int]] = {"quality": (0, 5), "complexity": (1, 5)}
REASON_CHARS = 300

_NUMBER = r"(-?\d+(?:\.\d+)?)"
_OUT_OF = r"(?:\s*(?:/|out\s+of)\s*(\d+))?"
_LABELLED = re.compile(r"(?i)\b(?:score|rating)\b[^\d\n-]{0,12}?" + _NUMBER + _OUT_OF)
_LEADING = re.compile(r"^\s*[*_#\s]*" + _NUMBER + _OUT_OF + r"\s*[*_]*\s*(?=$|[\s.:,;)\-])")
_REASON = re.compile(r"(?i)\breason(?:ing)?\b\s*[:=-]\s*(.+)", re.DOTALL)


@dataclass
class Score:
    value: float | None  # None: missing (see ``problem``)
    reason: str = ""
    problem: str = ""  # "" when read; no_score | out_of_range | other_scale


def parse_score(text: str, low: int, high: int) -> Score:
    """A judge's reply as a score on ``low``-``high`` and its reason (see the module docstring)."""
    obj = json_object(text)
    if obj is not None and "score" in obj:
        raw = obj["score"]
        reason = obj.get("reason") if isinstance(obj.get("reason"), str) else ""
        value = _number(raw)
        if value is None:
            return Score(None, reason.strip()[:REASON_CHARS], "no_score")
        return _on_scale(value, None, low, high, reason)
    m = _LABELLED.search(text) or _LEADING.match(text)
    if m is None:
        return Score(None, "", "no_score")
    reason_m = _REASON.search(text)
    reason = reason_m.group(1) if reason_m else text[m.end():]
    return _on_scale(float(m.group(1)), int(m.group(2)) if m.group(2) else None, low, high, reason)


def _number(raw) -> float | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        return float(raw)
    if isinstance(raw, str):
        try:
            return float(raw.strip())
        except ValueError:
            return None
    return None


def _on_scale(value: float, denominator: int | None, low: int, high: int, reason: str) -> Score:
    reason = " ".join(reason.split()).lstrip(".:-–) ").strip()[:REASON_CHARS]
    if denominator is not None and denominator != high:
        return Score(None, reason, "other_scale")
    if not low <= value <= high:
        return Score(None, reason, "out_of_range")
    return Score(value, reason)


def judge_request(name: str, rec: Record, cfg: JudgeConfig, structured: str = "off") -> ChatRequest:
    """The request that scores ``rec`` on ``name``; with structured outputs it carries the score's format (JSON
    schema or grammar, as the engine's backend takes them) and, for a schema, the prompt asks for JSON."""
    low, high = SCALES[name]
    fmt = judge_score(low, high) if structured != "off" else None
    messages = render_messages(f"judge_{name}", instruction=rec.instruction, input=rec.input, output=rec.output,
                               json=structured == "json_schema")
    decoding = cfg.decoding.model_copy(update={"max_tokens": max_tokens_for(cfg.decoding.max_tokens, fmt)})
    return ChatRequest(messages=messages, decoding=decoding, format=fmt)


async def score_record(rec: Record, engine: Teacher, cfg: JudgeConfig, problems: Counter | None = None) -> Record:
    """``rec`` with ``scores`` filled for every score in ``cfg.scores`` (the input record is not modified)."""
    names = list(cfg.scores)
    replies = await asyncio.gather(*(engine.complete(judge_request(n, rec, cfg, engine.structured), f"judge_{n}")
                                     for n in names))
    scores = dict(rec.scores)
    notes: dict[str, dict] = {}
    for name, reply in zip(names, replies):
        s = parse_score(reply.text, *SCALES[name])
        scores[name] = s.value
        notes[name] = {"reason": s.reason}
        if s.value is None:
            notes[name].update(problem=s.problem, reply=reply.text[:200])
            if problems is not None:
                problems[f"{name}_{s.problem}"] += 1
    return replace(rec, scores=scores, meta={**rec.meta, "judge": notes})


async def score_records(records: list[Record], engine: Teacher, cfg: JudgeConfig,
                        emit: Callable[[list[Record]], None], batch: int = 64,
                        problems: Counter | None = None) -> None:
    """Score every record; ``emit`` gets the scored records in input order, ``batch`` at a time. All requests are
    issued at once (the engine paces them), so a slow answer holds back the writing, never the teacher."""
    await emit_in_order([score_record(r, engine, cfg, problems) for r in records], emit, batch)


def histogram(records: list[Record], name: str) -> dict[str, int]:
    """How many records got each score of ``name`` ("missing" for None), in scale order."""
    low, high = SCALES[name]
    counts = Counter()
    for r in records:
        v = r.scores.get(name)
        counts["missing" if v is None else (str(int(v)) if float(v).is_integer() else str(v))] += 1
    keys = [str(k) for k in range(low, high + 1)]
    return {**{k: counts.pop(k, 0) for k in keys}, **dict(sorted(counts.items()))}


# ---------------------------------------------------------------------------------------------- pairwise
# One instruction, two answers, the judge asked twice with the answers in both orders (``prompts/
# judge_pairwise.j2``): used by the preferences stage and by ``pipeline eval``.

PAIRWISE_TEMPLATE = "judge_pairwise"

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


def verdict_reason(text: str) -> str:
    """What the judge said after its verdict: its reason (the prompt asks for one line)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines[1:])[:300] if len(lines) > 1 else ""


def pairwise_requests(instruction: str, first: str, second: str, decoding: Decoding, structured: str = "off",
                      reference: str = "") -> list[ChatRequest]:
    """The two requests that compare ``first`` with ``second``: ``first`` at A, then at B."""
    fmt = PAIRWISE if structured != "off" else None
    return [ChatRequest(render_messages(PAIRWISE_TEMPLATE, instruction=instruction, reference=reference,
                                        answer_a=a or "(empty)", answer_b=b or "(empty)"), decoding, format=fmt)
            for a, b in ((first, second), (second, first))]


def pair_score(verdict_first_at_a: str, verdict_first_at_b: str) -> float | None:
    """The score of the answer shown first at A and then at B, from the two orders' verdicts ('A', 'B', 'tie' or
    'invalid'): win 1, tie 0.5, loss 0 per order, averaged over the orders that gave a verdict; None when neither
    did (a judge that always says "A" scores 0.5: position bias cancels)."""
    scores = []
    for verdict, own in ((verdict_first_at_a, "A"), (verdict_first_at_b, "B")):
        if verdict == "tie":
            scores.append(0.5)
        elif verdict in ("A", "B"):
            scores.append(1.0 if verdict == own else 0.0)
    return statistics.fmean(scores) if scores else None


async def compare(engine: Teacher, instruction: str, first: str, second: str, decoding: Decoding,
                  reference: str = "", kind: str = "judge_pairwise") -> dict:
    """``first`` against ``second`` in both orders: {"verdicts", "score" (first's, or None), "reasons"}."""
    if first.strip() == second.strip():
        return {"verdicts": ["tie", "tie"], "score": 0.5, "reasons": ["identical answers"] * 2}
    replies = await asyncio.gather(*(engine.complete(r, kind) for r in pairwise_requests(
        instruction, first, second, decoding, engine.structured, reference)))
    verdicts = [parse_verdict(r.text) for r in replies]
    return {"verdicts": verdicts, "score": pair_score(*verdicts), "reasons": [verdict_reason(r.text) for r in replies]}
