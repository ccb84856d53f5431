"""Repeated responses: the same (or nearly the same) output given to different tasks.

A weak teacher answers many instructions with one stock reply; instruction novelty does not see it. Records are
read in file order; an output of at least ``response_min_words`` whitespace-separated words is *compared* (shorter
ones, such as labels, Yes/No or numbers, repeat by nature and are never looked at). A task is ``task_id`` or,
without one, the record's own id.

The pool holds every compared output that is not a repeat, in file order (several per task where a task has
several). A compared output is a repeat when, checked in this order,

* exact: after NFKC, lower case, collapsed whitespace and strip it equals a pool output of another task;
  ``nearest_id`` is that output's record (the earliest), ``similarity`` 1.0;
* near: its ROUGE-L F (rouge-score 0.1.2's, computed by ``NoveltyIndex`` over the outputs as given, with the
  tokenizer settings ``use_stemmer`` / ``unicode_tokens``) against a pool output of another task is strictly
  above ``response_similarity``; ``nearest_id`` is the pool output of another task with the highest score (the
  earliest on ties), ``similarity`` that score, unrounded.

A repeat never joins the pool, so the first occurrence stays and is the one later copies point to, as in the
instruction novelty filter (threshold 0.9: A, then B at 0.95 from A, then C at 0.95 from B but 0.85 from A flags
B only; a copy of B is reported as near A). Outputs of one task never count against each other (several
instances of a task may share an answer; the task rules deal with that), so a task that repeats its own output
after another task copied it keeps the repeat. And an output of the same task can never hide one of another
task: every query leaves the task's own pool outputs out (``NoveltyIndex``'s ``exclude``), so the nearest
reported is the nearest of the OTHER tasks, with the index's exact pruning guarantee (every pool pair that can
exceed the threshold is scored). Nothing depends on anything but the order of the records.

The pool is keyed by record position, not id, so two records that share an id cannot exclude each other's task.
Each output is first looked up against the whole pool and only again without its own task's outputs when
the nearest is one of them, so a big task (a whole file under one ``task_id``) does not make every query pay for
a long exclusion list: 20,000 outputs of one task take about as long as 20,000 tasks.

Nothing is rejected here: the caller (``filters.chain``) rejects the repeats when ``response_dedup = "reject"``
and only reports them when it is "report". No I/O.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Any

from ..config import FilterConfig
from ..records import Record
from .novelty import NoveltyIndex

DUPLICATE_RESPONSE = "duplicate_response"
EXAMPLES = 5  # repeats listed in the stats, with both outputs
PREVIEW = 80  # characters of each output in an example


def normal_output(text: str) -> str:
    """The form exact repeats are compared in: NFKC, lower case, runs of whitespace as one space, stripped."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


@dataclass
class ResponseDuplicates:
    # record position (in the list passed in) -> ("duplicate_response", {"kind": "exact" | "near", "nearest_id",
    # "similarity", "threshold"})
    duplicates: dict[int, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    # {"compared": n, "exact": x, "near": y, "examples": [{"id", "nearest_id", "kind", "similarity", "output",
    # "nearest_output"}, ...] (the first EXAMPLES repeats, outputs cut to PREVIEW characters)}
    stats: dict[str, Any] = field(default_factory=dict)


def _empty_stats() -> dict[str, Any]:
    return {"compared": 0, "exact": 0, "near": 0, "examples": []}


def _task(rec: Record) -> str:
    return rec.task_id or rec.id


def find_duplicate_responses(records: list[Record], cfg: FilterConfig) -> ResponseDuplicates:
    """The repeats among ``records`` (see the module docstring), by position. ``cfg.response_dedup == "off"``:
    nothing is compared."""
    if cfg.response_dedup == "off":
        return ResponseDuplicates(stats=_empty_stats())
    threshold = cfg.response_similarity
    index = NoveltyIndex(threshold, cfg.use_stemmer, cfg.unicode_tokens)
    # normal output -> position of its first occurrence in the pool. Every pool output with one normal form
    # belongs to one task (a copy from another task is a repeat and never joins the pool), so this one entry
    # decides "exact repeat of another task" for every later output.
    first_of: dict[str, int] = {}
    pooled: dict[str, list[str]] = {}  # task -> its outputs in the pool (index ids: str(position))
    result = ResponseDuplicates()
    stats = _empty_stats()
    for pos, rec in enumerate(records):
        if len(rec.output.split()) < cfg.response_min_words:
            continue
        stats["compared"] += 1
        task = _task(rec)
        key = normal_output(rec.output)
        other = first_of.get(key)
        if other is not None and _task(records[other]) != task:
            details = {"kind": "exact", "nearest_id": records[other].id, "similarity": 1.0,
                       "threshold": threshold}
            nearest_output = records[other].output
        else:
            # The nearest of the whole pool first: when it is above the threshold and of another task it is also
            # the nearest of the other tasks (same score, same earliest-on-ties item); only when it is the task's
            # own output is the query repeated without the task's outputs (rare, and it spares every other query
            # the cost of the exclusion list).
            match = index.nearest(rec.output)
            if index.is_duplicate(match) and _task(records[int(match.nearest_id)]) == task:
                match = index.nearest(rec.output, exclude=pooled[task])
            if not index.is_duplicate(match):
                index.add(str(pos), rec.output)
                pooled.setdefault(task, []).append(str(pos))
                first_of.setdefault(key, pos)
                continue
            near = records[int(match.nearest_id)]
            details = {"kind": "near", "nearest_id": near.id, "similarity": match.score, "threshold": threshold}
            nearest_output = near.output
        stats[details["kind"]] += 1
        result.duplicates[pos] = (DUPLICATE_RESPONSE, details)
        if len(stats["examples"]) < EXAMPLES:
            stats["examples"].append({"id": rec.id, "nearest_id": details["nearest_id"], "kind": details["kind"],
                                      "similarity": details["similarity"], "output": rec.output[:PREVIEW],
                                      "nearest_output": nearest_output[:PREVIEW]})
    result.stats = stats
    return result
