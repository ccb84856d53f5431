"""Preference pairs for DPO (UltraFeedback style): several answers per instruction, ranked by a pairwise judge.

For each record of a seeded sample (``preferences.max_items``, in file order):

1. candidates: the record's own output, plus ``answers - 1`` new answers from the generator (``[preferences]
   teacher``, else the run's teacher) sampled at ``temperatures`` (cycled), each request with its own sample key;
   a candidate that is empty, cut by the token limit or refused is dropped, and identical candidates count once;
2. every pair of candidates is compared by the judge (``[judge] teacher``, else the run's teacher) in both orders
   (``judge.compare``: position bias cancels); a candidate's win share is the mean of its pair scores;
3. chosen is the candidate with the highest share, rejected the one with the lowest; the margin is the difference
   (0-1). A record gives no pair, with its reason, when fewer than two distinct candidates are left
   (``too_few_answers``), no comparison gave a verdict (``unjudged``), or the margin is below ``min_margin``
   (``small_margin``).

A pair row holds the prompt (the user message of the record's first exchange), chosen, rejected, the margin, every
candidate with its temperature and share, the verdicts and reasons, and the record's lineage (so DPO's held-out
split, like SFT's, never splits a task family). Export writes them as ``dataset/preferences.jsonl``.
"""
from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import PreferencesConfig
from ..records import Record, Rejection
from ..teachers import Teacher
from ..teachers.base import REFUSED, ChatRequest
from .heldout import lineage
from .judge import compare
from .streaming import emit_in_order

STAGE = "preferences"


@dataclass
class Ranked:
    record: Record
    pair: dict[str, Any] | None = None
    rejection: Rejection | None = None


def sample(records: list[Record], cfg: PreferencesConfig) -> list[int]:
    """Positions of the records to make pairs for, in file order (a seeded sample of ``max_items``; 0 = all)."""
    n = len(records)
    if cfg.max_items == 0 or cfg.max_items >= n:
        return list(range(n))
    return sorted(random.Random(cfg.seed).sample(range(n), cfg.max_items))


async def candidates(rec: Record, generator: Teacher, cfg: PreferencesConfig) -> tuple[list[dict], dict[str, int]]:
    """The record's own answer and the new samples, distinct and usable: [{"text", "temperature"}], and what was
    dropped by reason."""
    temps = [cfg.temperatures[k % len(cfg.temperatures)] for k in range(cfg.answers - 1)]
    prompt = rec.messages()[:1]
    replies = await asyncio.gather(*(
        generator.complete(ChatRequest(prompt, cfg.answer_decoding.model_copy(update={"temperature": t}),
                                       sample_key=f"{rec.id}/preference{k}"), "preference_answer")
        for k, t in enumerate(temps)))
    found = [{"text": rec.output.strip(), "temperature": None}]
    dropped: dict[str, int] = {}
    for t, reply in zip(temps, replies):
        text = reply.text.strip()
        why = ("refused" if reply.finish_reason == REFUSED else "empty" if not text
               else "truncated" if reply.finish_reason == "length" else None)
        if why is None and any(text == c["text"] for c in found):
            why = "identical"
        if why:
            dropped[why] = dropped.get(why, 0) + 1
        else:
            found.append({"text": text, "temperature": t})
    return [c for c in found if c["text"]], dropped


async def rank(rec: Record, generator: Teacher, judge: Teacher, cfg: PreferencesConfig) -> Ranked:
    """One record's preference pair, or its rejection."""
    cands, dropped = await candidates(rec, generator, cfg)
    prompt = rec.messages()[0]["content"]

    def reject(reason: str, **details) -> Ranked:
        return Ranked(rec, rejection=Rejection(rec, reason, {"dropped_candidates": dropped, **details}, STAGE))

    if len(cands) < 2:
        return reject("too_few_answers", candidates=len(cands))
    pairs = list(itertools.combinations(range(len(cands)), 2))
    results = await asyncio.gather(*(compare(judge, prompt, cands[i]["text"], cands[j]["text"],
                                             cfg.judge_decoding, kind="preference_judge") for i, j in pairs))
    scores: list[list[float]] = [[] for _ in cands]
    verdicts = []
    for (i, j), res in zip(pairs, results):
        verdicts.append({"first": i, "second": j, **res})
        if res["score"] is not None:
            scores[i].append(res["score"])
            scores[j].append(1.0 - res["score"])
    shares = [sum(s) / len(s) if s else None for s in scores]
    judged = [k for k, s in enumerate(shares) if s is not None]
    if not judged:
        return reject("unjudged", verdicts=verdicts)
    best = max(judged, key=lambda k: (shares[k], -k))  # ties go to the earlier candidate (the record's own)
    worst = min(judged, key=lambda k: (shares[k], -k))
    margin = round(shares[best] - shares[worst], 4)
    for k, c in enumerate(cands):
        c["share"] = None if shares[k] is None else round(shares[k], 4)
    if best == worst or margin < cfg.min_margin:
        return reject("small_margin", margin=margin, min_margin=cfg.min_margin, candidates=cands, verdicts=verdicts)
    pair = {"id": rec.id, "lineage": lineage(rec), "source": rec.source, "prompt": prompt,
            "chosen": cands[best]["text"], "rejected": cands[worst]["text"], "margin": margin,
            "chosen_is_original": best == 0, "candidates": cands, "verdicts": verdicts,
            "dropped_candidates": dropped}
    return Ranked(rec, pair=pair)


async def rank_records(records: list[Record], generator: Teacher, judge: Teacher, cfg: PreferencesConfig,
                       emit: Callable[[list[Ranked]], None], batch: int = 32) -> None:
    """Every sampled record through ``rank``; ``emit`` gets the results in input order, ``batch`` at a time."""
    await emit_in_order([rank(records[i], generator, judge, cfg) for i in sample(records, cfg)], emit, batch)


def margin_histogram(pairs: list[dict]) -> dict[str, int]:
    """Kept pairs by margin, in bins of 0.25 ("0.50-0.75", ...; a margin of 1 in the last bin)."""
    bins = {"0.00-0.25": 0, "0.25-0.50": 0, "0.50-0.75": 0, "0.75-1.00": 0}
    for p in pairs:
        k = min(int(p["margin"] / 0.25), 3)
        bins[list(bins)[k]] += 1
    return bins
