"""The filter chain: heuristics, exact duplicates, then ROUGE-L novelty, over a finished list of records.

``filter_records(records, cfg, reference=None)`` runs, in this order:

1. per record (file order): the instruction rules (``InstructionFilters``) and the instance rules
   (``check_instance`` with the config: empty output, input == output, ':' endings, refusals, AI boilerplate,
   repeated n-grams), then benchmark contamination (``Checks.contamination``) and toxicity (``Checks.toxicity``,
   one batched call) when the caller built them;
2. exact duplicates across the whole file (same instruction + input + output; the first one stays);
3. per task: one input with different outputs drops the whole task (Self-Instruct), duplicate instances, at most
   ``max_instances_per_task`` instances (a template's rows, ``source = "template"``, are one task per template:
   no cap, templatize caps them, and a conflict drops only the conflicting rows);
4. ROUGE-L novelty (``filters/novelty.py``), one check per task: records of one task share one instruction, so
   the task's first surviving record is checked against the pool and its siblings follow its decision. The pool
   starts with the reference instructions (seed tasks) when given and grows with every accepted task, in file
   order ("incremental"), or the same decisions from the batch form (``novelty_mode = "batch"``). Above
   ``minhash_above`` instructions MinHash LSH proposes the candidates (approximate recall, exact scores).
   With ``lineage_aware`` (default) an evolved task is not compared with its own ancestors and descendants
   (``parent_id`` chains through the records and the reference), as Evol-Instruct never deduplicates a rewrite
   against the instruction it was rewritten from;
5. repeated outputs across different tasks (``filters/responses.py``): counted in the stats, and rejected as
   ``duplicate_response`` when ``response_dedup = "reject"``.

Kept and rejected records carry the nearest pool instruction (``nearest_id``, ``nearest_instruction``,
``rouge_l``); rejected ones also ``reason`` and ``details``. For a duplicate, the score and nearest item are exact.
For a kept record they are exact while the pool holds at most ``exact_nearest_up_to`` instructions (default
20,000); beyond that, the best among the pairs that survived the exact pruning, None when no pair did (set
``exact_nearest`` for the exact best everywhere, at brute-force cost). A task is identified by ``task_id`` (records without
one are their own task); a task whose records carry different instructions is split by instruction.
"""
from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..config import FilterConfig
from ..records import Record, Rejection
from .decontaminate import ContaminationIndex
from .heuristics import ExactDuplicates, InstructionFilters, check_instance, check_task_instances
from .novelty import Match, NoveltyIndex, dedup
from .responses import find_duplicate_responses
from .safety import ToxicityFilter

STAGE = "filter"
Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass
class FilterResult:
    kept: list[Record]
    rejected: list[Rejection]
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class Checks:
    """The parts of the chain made from files or models: built by the caller (``runs.stages.build_checks``), since
    filters do no I/O. None = that check is off."""

    contamination: ContaminationIndex | None = None
    toxicity: ToxicityFilter | None = None


def lineages(records: list[Record], reference: list[Record] | None = None) -> dict[str, frozenset[str]]:
    """For every task in an evolution chain, the task ids of its ancestors and descendants (through ``parent_id``,
    over ``reference`` and ``records``). Tasks with no lineage are absent."""
    everything = [*(reference or []), *records]
    task_of: dict[str, str] = {}
    for rec in everything:
        task_of.setdefault(rec.id, rec.task_id or rec.id)
    parent: dict[str, str] = {}
    for rec in everything:
        if rec.parent_id:
            parent.setdefault(rec.task_id or rec.id, task_of.get(rec.parent_id, rec.parent_id))
    children: dict[str, list[str]] = defaultdict(list)
    for child, par in parent.items():
        children[par].append(child)
    out: dict[str, frozenset[str]] = {}
    for task in set(parent) | set(children):
        related: set[str] = set()
        node = task
        while node in parent and parent[node] not in related and parent[node] != task:  # ancestors
            node = parent[node]
            related.add(node)
        stack = list(children.get(task, ()))
        while stack:  # descendants
            node = stack.pop()
            if node not in related and node != task:
                related.add(node)
                stack.extend(children.get(node, ()))
        out[task] = frozenset(related)
    return out


def _task_key(rec: Record) -> tuple[str, str]:
    return (rec.task_id or rec.id, rec.instruction.strip())


def _novelty_index(cfg: FilterConfig) -> NoveltyIndex:
    return NoveltyIndex(cfg.rouge_threshold, cfg.use_stemmer, cfg.unicode_tokens, **_index_options(cfg))


def _index_options(cfg: FilterConfig) -> dict[str, Any]:
    return {"exact_nearest": cfg.exact_nearest, "exact_nearest_up_to": cfg.exact_nearest_up_to or None,
            "alpaca_similarity": cfg.alpaca_similarity,
            "minhash_above": cfg.minhash_above, "num_perm": cfg.minhash_num_perm,
            "minhash_threshold": cfg.minhash_threshold, "minhash_backend": cfg.minhash_backend,
            "minhash_seed": cfg.minhash_seed}


def filter_records(records: list[Record], cfg: FilterConfig, reference: list[Record] | None = None,
                   progress: Progress | None = None, checks: Checks | None = None) -> FilterResult:
    """Run the filter chain over ``records`` (see the module docstring). The input records are not modified."""
    t_start = time.perf_counter()
    timing: dict[str, float] = {}
    report = progress or (lambda phase, done, total: None)
    n = len(records)
    reasons: dict[int, tuple[str, dict]] = {}  # record position -> (reason, details)

    # 1. per-record rules.
    t0 = time.perf_counter()
    instruction_rules = InstructionFilters(cfg)
    verdict_by_instruction: dict[str, Any] = {}
    for pos, rec in enumerate(records):
        verdict = verdict_by_instruction.get(rec.instruction, 0)
        if verdict == 0:
            verdict = verdict_by_instruction[rec.instruction] = instruction_rules.check(rec.instruction)
        if verdict is None:
            verdict = check_instance(rec, cfg)
        if verdict is not None:
            reasons[pos] = verdict
        if (pos & 4095) == 0:
            report("heuristics", pos, n)
    report("heuristics", n, n)
    timing["heuristics_s"] = time.perf_counter() - t0
    checks = checks or Checks()
    if checks.contamination is not None:
        t0 = time.perf_counter()
        for pos, rec in enumerate(records):
            if pos not in reasons:
                verdict = checks.contamination.check(rec)
                if verdict is not None:
                    reasons[pos] = verdict
        timing["decontaminate_s"] = time.perf_counter() - t0
    if checks.toxicity is not None:
        t0 = time.perf_counter()
        alive = [pos for pos in range(n) if pos not in reasons]
        for pos, verdict in zip(alive, checks.toxicity.check_many([records[p] for p in alive])):
            if verdict is not None:
                reasons[pos] = verdict
        timing["safety_s"] = time.perf_counter() - t0

    # 2. exact duplicates across the file.
    t0 = time.perf_counter()
    if cfg.reject_exact_duplicates:
        exact = ExactDuplicates()
        for pos, rec in enumerate(records):
            if pos not in reasons:
                verdict = exact.check(rec)
                if verdict is not None:
                    reasons[pos] = verdict

    # 3. task rules.
    tasks: dict[tuple[str, str], list[int]] = {}
    for pos, rec in enumerate(records):
        tasks.setdefault(_task_key(rec), []).append(pos)
    position = {id(rec): pos for pos, rec in enumerate(records)}
    for positions in tasks.values():
        alive = [records[p] for p in positions if p not in reasons]
        if not alive:
            continue
        if alive[0].source == "template":  # a labelled dataset's rows: capped per template by templatize, and a
            # label conflict drops the conflicting rows, not the whole template
            _, dropped = check_task_instances(alive, len(alive), drop_task_on_conflict=False)
        else:
            _, dropped = check_task_instances(alive, cfg.max_instances_per_task, drop_task_on_conflict=True)
        for rec, reason, details in dropped:
            reasons[position[id(rec)]] = (reason, details)
    timing["duplicates_and_tasks_s"] = time.perf_counter() - t0

    # 4. ROUGE-L novelty, one check per task, in order of each task's first surviving record.
    t0 = time.perf_counter()
    order: list[tuple[tuple[str, str], list[int]]] = []
    for key, positions in tasks.items():
        alive = [p for p in positions if p not in reasons]
        if alive:
            order.append((key, alive))
    order.sort(key=lambda kv: kv[1][0])
    ref_pool: list[tuple[str, str]] = []
    seen_ref: set[str] = set()
    for rec in reference or []:
        tid = rec.task_id or rec.id
        if tid not in seen_ref:
            seen_ref.add(tid)
            ref_pool.append((tid, rec.instruction))
    ids = [key[0] for key, _ in order]
    texts = [records[alive[0]].instruction for _, alive in order]
    related = lineages(records, reference) if cfg.lineage_aware else {}
    excludes = [related.get(tid) for tid in ids] if related else None
    decisions: list[tuple[bool, Match]] = []
    mode = cfg.novelty_mode
    if mode == "batch":
        res = dedup(texts, ids, threshold=cfg.rouge_threshold, use_stemmer=cfg.use_stemmer,
                    unicode=cfg.unicode_tokens, reference=ref_pool, excludes=excludes,
                    progress=lambda k: report("novelty", k, len(texts)), **_index_options(cfg))
        decisions = list(zip(res.duplicate, res.matches))
        index_stats = res.stats
        pool_size = len(ref_pool) + sum(not d for d in res.duplicate)
    else:
        index = _novelty_index(cfg)
        for rid, rtext in ref_pool:
            index.add(rid, rtext)
        for k, (tid, text) in enumerate(zip(ids, texts)):
            decisions.append(index.check_and_add(tid, text, excludes[k] if excludes else None))
            if (k & 1023) == 0:
                report("novelty", k, len(texts))
        index_stats = index.stats.as_dict()
        pool_size = len(index)
    report("novelty", len(texts), len(texts))
    timing["novelty_s"] = time.perf_counter() - t0

    # 5. repeated outputs across tasks, among the records still in (file order).
    match_of: dict[int, tuple[bool, Match]] = {}
    for (_, alive), decision in zip(order, decisions):
        for p in alive:
            match_of[p] = decision
    t0 = time.perf_counter()
    survivors = [pos for pos in range(n) if pos not in reasons and not match_of[pos][0]]
    responses = find_duplicate_responses([records[p] for p in survivors], cfg)
    if cfg.response_dedup == "reject":
        for k, verdict in responses.duplicates.items():
            reasons[survivors[k]] = verdict
    timing["responses_s"] = time.perf_counter() - t0

    # Assemble the outputs, in file order.
    kept: list[Record] = []
    rejected: list[Rejection] = []
    by_reason: Counter = Counter()
    for pos, rec in enumerate(records):
        if pos in reasons:
            reason, details = reasons[pos]
            rejected.append(Rejection(replace(rec), reason, details, STAGE))
            by_reason[reason] += 1
            continue
        dup, m = match_of[pos]
        out = replace(rec, nearest_id=m.nearest_id, nearest_instruction=m.nearest_text,
                      rouge_l=m.score if m.nearest_id is not None else None)
        if m.top is not None:
            out.meta = {**rec.meta, "most_similar_instructions": m.top, "avg_similarity_score": m.mean_score}
        if dup:
            details = {"nearest_id": m.nearest_id, "nearest_instruction": m.nearest_text, "rouge_l": m.score,
                       "threshold": cfg.rouge_threshold}
            if m.top is not None:
                details["most_similar_instructions"] = m.top
                details["avg_similarity_score"] = m.mean_score
            rejected.append(Rejection(out, "rouge_duplicate", details, STAGE))
            by_reason["rouge_duplicate"] += 1
        else:
            kept.append(out)
    timing["total_s"] = time.perf_counter() - t_start
    stats = {
        "input_records": n,
        "input_tasks": len(tasks),
        "kept_records": len(kept),
        "kept_tasks": len({_task_key(r) for r in kept}),
        "rejected_records": len(rejected),
        "rejected_by_reason": dict(sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))),
        "reference_instructions": len(ref_pool),
        "lineage_aware": cfg.lineage_aware,
        "lineage_tasks": len(related),
        "responses": {"mode": cfg.response_dedup, **responses.stats},
        "contamination": ({"ngram": checks.contamination.n, "items": checks.contamination.stats.items,
                           "hits_by_benchmark": dict(Counter(reasons[p][1]["benchmark"] for p in reasons
                                                             if reasons[p][0] == "contaminated"))}
                          if checks.contamination is not None else None),
        "novelty": {
            "mode": mode,
            "threshold": cfg.rouge_threshold,
            "use_stemmer": cfg.use_stemmer,
            "unicode_tokens": cfg.unicode_tokens,
            "tasks_checked": len(texts),
            "pool_size": pool_size,
            "nearest_exact_for_kept": (cfg.exact_nearest or cfg.alpaca_similarity
                                       or pool_size <= cfg.exact_nearest_up_to),
            "minhash_above": cfg.minhash_above,
            **{k: v for k, v in index_stats.items() if k != "seconds"},
        },
        "timing": {k: round(v, 4) for k, v in timing.items()},
    }
    return FilterResult(kept, rejected, stats)
