"""Conversations: single-turn records grown into multi-turn chats, the teacher playing both sides (UltraChat, Baize).

For each record of a seeded sample (``conversation.max_items``, kept in file order), turn by turn until the
conversation has ``conversation.turns`` user turns:

1. the teacher plays the user (``prompts/conversation_user.j2``): shown the conversation so far and a move drawn
   with the record's own seed (clarify, go deeper, change a constraint), it writes the next user message;
2. the teacher answers as the assistant, given the whole conversation as chat messages;
3. both messages are checked: a user message that is empty, a refusal, or a copy of an earlier user message
   (ROUGE-L F >= 0.7) ends the conversation, and so does one cut by the token limit unless whole sentences of it
   are left (they are kept: a user turn needs one or two); so does an answer that is empty, cut by the token
   limit, a refusal or AI boilerplate, or degenerate repetition (the filter chain's instance rules,
   ``filters.heuristics``, with the run's ``[filter]`` settings).

A failed turn is rejected with its reason (``details``: the turn, the side and the text) and the conversation
keeps the turns before it; a record whose first follow-up fails stays a single-turn record. Every input record is
kept, in input order, so export writes the same rows with more turns where the stage could add them.

No state of its own: ``converse`` is a coroutine over one record, ``extend_records`` sends them all at once (the
engine paces them) and hands back results in input order.
"""
from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..config import ConversationConfig, FilterConfig
from ..filters.heuristics import ai_boilerplate, refusal, repeated_ngrams
from ..filters.rouge import rouge_l
from ..prompts import render_messages
from ..records import Record, Rejection
from ..teachers import Teacher
from ..teachers.base import REFUSED, ChatRequest
from .streaming import emit_in_order

STAGE = "conversation"
REPEAT_ROUGE = 0.7  # a follow-up this close to an earlier user message is a repeat, not a new turn
_SENTENCE_END = re.compile(r"[.?!](?=\s|$)")
_LABEL = re.compile(r"^\s*(?:\*\*)?(?:user|next message|message)\s*(?::\s*\*\*|\*\*\s*:|:)\s*", re.IGNORECASE)


@dataclass
class Converted:
    record: Record  # the input record with the turns that passed
    rejected: list[Rejection] = field(default_factory=list)
    turns_added: int = 0


def sample(records: list[Record], cfg: ConversationConfig) -> set[int]:
    """Positions of the records to extend: a seeded sample of ``max_items`` (all when 0 or more than there are)."""
    n = len(records)
    if cfg.max_items == 0 or cfg.max_items >= n:
        return set(range(n))
    return set(random.Random(cfg.seed).sample(range(n), cfg.max_items))


def clean_followup(text: str) -> str:
    """The user's message without a label the teacher put before it, or quotes around it."""
    text = _LABEL.sub("", text.strip()).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def whole_sentences(text: str, min_words: int = 3) -> str:
    """``text`` up to its last complete sentence ("" when that leaves fewer than ``min_words`` words): what is kept
    of a follow-up the token limit cut (a user message needs one or two sentences, a small teacher writes on)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    kept = text[: ends[-1]].strip() if ends else ""
    return kept if len(kept.split()) >= min_words else ""


def check_followup(text: str, finish_reason: str, earlier: list[str], fcfg: FilterConfig) -> tuple[str, dict] | None:
    """Why the follow-up ``text`` cannot be the next user turn, or None. ``text`` is the follow-up as it will be
    used: a cut one already shortened to its whole sentences (``whole_sentences``), empty when none was left."""
    if finish_reason == REFUSED:
        return "teacher_refused", {}
    if not text:
        return ("truncated_followup", {}) if finish_reason == "length" else ("empty_followup", {})
    verdict = refusal("", text, fcfg)
    if verdict is not None:
        return "followup_" + verdict[0], verdict[1]
    for prev in earlier:
        score = rouge_l(prev, text)
        if score >= REPEAT_ROUGE:
            return "repeated_followup", {"rouge_l": round(score, 3), "earlier": prev[:200]}
    return None


def check_answer(question: str, text: str, finish_reason: str, fcfg: FilterConfig) -> tuple[str, dict] | None:
    if finish_reason == REFUSED:
        return "teacher_refused", {}
    if not text:
        return "empty_answer", {}
    if finish_reason == "length":
        return "truncated_answer", {}
    for rule in (refusal, ai_boilerplate, repeated_ngrams):
        verdict = rule(question, text, fcfg)
        if verdict is not None:
            return verdict
    return None


async def converse(rec: Record, engine: Teacher, cfg: ConversationConfig, fcfg: FilterConfig) -> Converted:
    """``rec`` grown to at most ``cfg.turns`` user turns (the input record is not modified)."""
    rng = random.Random(f"{cfg.seed}/{rec.id}")
    messages = rec.messages()
    added: list[dict[str, str]] = list(rec.turns)
    out = Converted(rec)
    while sum(m["role"] == "user" for m in messages) < cfg.turns:
        turn = sum(m["role"] == "user" for m in messages) + 1
        move = rng.choice(cfg.moves)
        ask = ChatRequest(render_messages("conversation_user", conversation=messages, move=move), cfg.user_decoding,
                          sample_key=f"{rec.id}/turn{turn}")
        reply = await engine.complete(ask, "conversation_user")
        followup = clean_followup(reply.text) if reply.finish_reason != REFUSED else ""
        if reply.finish_reason == "length":
            followup = whole_sentences(followup)
        earlier = [m["content"] for m in messages if m["role"] == "user"]
        verdict = check_followup(followup, reply.finish_reason, earlier, fcfg)
        if verdict is None:
            answer = await engine.complete(ChatRequest([*messages, {"role": "user", "content": followup}],
                                                       cfg.answer_decoding), "conversation_answer")
            text = answer.text.strip() if answer.finish_reason != REFUSED else ""
            verdict = check_answer(followup, text, answer.finish_reason, fcfg)
            side = "assistant"
        else:
            text, side = followup, "user"
        if verdict is not None:
            reason, details = verdict
            failed = replace(rec, turns=added, id=f"{rec.id}#turn{turn}",
                             meta={**rec.meta, "conversation_of": rec.id})
            out.rejected.append(Rejection(failed, reason, {**details, "turn": turn, "side": side, "move": move,
                                                           "followup": followup[:300], "text": text[:300]}, STAGE))
            break
        new = [{"role": "user", "content": followup}, {"role": "assistant", "content": text}]
        messages += new
        added += new
        out.turns_added += 1
    out.record = replace(rec, turns=added, meta={**rec.meta, "turns": 1 + len(added) // 2}) if added else rec
    return out


async def extend_records(records: list[Record], engine: Teacher, cfg: ConversationConfig, fcfg: FilterConfig,
                         emit: Callable[[list[Converted]], None], batch: int = 32) -> None:
    """Every record through ``converse`` (those outside the sample pass as they are); ``emit`` gets the results
    in input order, ``batch`` at a time. All conversations start at once; the engine paces the requests."""
    chosen = sample(records, cfg)

    async def one(i: int, rec: Record) -> Converted:
        return await converse(rec, engine, cfg, fcfg) if i in chosen else Converted(rec)

    await emit_in_order([one(i, r) for i, r in enumerate(records)], emit, batch)
