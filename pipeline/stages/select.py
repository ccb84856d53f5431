"""The select stage: choose the records the dataset keeps, by named policies over judge scores, lengths and
embeddings. Pure: records in, kept and rejected out; the caller passes the embedding function
(``io.embeddings.load_embedder``), so nothing here reads a file or loads a model.

Policies run in ``SelectConfig.policies`` order, each on what the previous one kept:

* ``min_quality``: quality >= ``min_quality`` (AlpaGasus keeps rows rated >= 4.5 of 5). A record without a
  quality score is dropped as ``no_score``: a missing score is never guessed.
* ``top_k``: the ``k`` best by ``score`` (``quality``, ``complexity`` or ``deita`` = quality x complexity).
  Ties keep input order; records without the score rank after every scored one.
* ``longest_k``: the ``k`` longest outputs in words (whitespace split; "Long Is More": the 1K longest responses
  are a strong baseline). Ties keep input order.
* ``diverse_top_k`` (Deita): in score order (as ``top_k``), take a record unless its embedding's cosine similarity
  with one already taken is above ``max_similarity``; stop at ``k``. What is embedded is the whole sample,
  ``instruction + "\\n" + input + "\\n" + output``, as Deita does: two records that ask the same thing in other
  words and answer it alike are near, while one instruction answered two different ways is not a repeat. The
  embedder's rows are normalised here (it is not trusted to return unit vectors); an all-zero row has similarity
  0 with everything, so it is never skipped.

Kept records stay in input order. A dropped record is a ``Rejection`` (stage "select") whose reason is the
policy's (``no_score`` / ``min_quality``, ``top_k``, ``longest_k``, ``too_similar`` / ``top_k_full``) with the
figures that decided it and the policy that dropped it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from ..config import SELECT_POLICIES, SelectConfig
from ..records import Record, Rejection

STAGE = "select"
Embed = Callable[[list[str]], np.ndarray]
Drops = dict[int, tuple[str, dict[str, Any]]]  # position in the policy's input -> (reason, details)
# diverse_top_k compares this many candidates at once with everything taken before them (one matrix product),
# then one by one with those taken inside the block.
_CHUNK = 512


@dataclass
class SelectResult:
    kept: list[Record]
    rejected: list[Rejection]
    stats: dict[str, Any] = field(default_factory=dict)


def rank_score(rec: Record, score: str) -> float | None:
    """The value ``score`` ranks ``rec`` by; None when a judge score it needs is missing."""
    if score == "deita":
        q, c = rec.scores.get("quality"), rec.scores.get("complexity")
        return None if q is None or c is None else float(q) * float(c)
    v = rec.scores.get(score)
    return None if v is None else float(v)


def embedding_text(rec: Record) -> str:
    """What diverse_top_k embeds: the whole sample (see the module docstring)."""
    return f"{rec.instruction}\n{rec.input}\n{rec.output}"


def output_words(rec: Record) -> int:
    return len(rec.output.split())


def _rank_order(values: list[float | None]) -> list[int]:
    """Positions by value, highest first; ties in input order; missing values last (in input order)."""
    return sorted(range(len(values)), key=lambda i: (values[i] is None, -(values[i] or 0.0), i))


def _min_quality(recs: list[Record], cfg: SelectConfig) -> tuple[list[int], Drops]:
    keep, drop = [], {}
    for i, r in enumerate(recs):
        q = r.scores.get("quality")
        if q is None:
            drop[i] = ("no_score", {"score": "quality", "value": None})
        elif q < cfg.min_quality:
            drop[i] = ("min_quality", {"quality": q, "min_quality": cfg.min_quality})
        else:
            keep.append(i)
    return keep, drop


def _top_k(recs: list[Record], cfg: SelectConfig) -> tuple[list[int], Drops]:
    values = [rank_score(r, cfg.score) for r in recs]
    order = _rank_order(values)
    kept = order[:cfg.k]
    cutoff = values[kept[-1]] if kept else None
    drop = {i: ("top_k", {"score": cfg.score, "value": values[i], "rank": rank, "k": cfg.k, "cutoff": cutoff})
            for rank, i in enumerate(order[cfg.k:], start=cfg.k + 1)}
    return sorted(kept), drop


def _longest_k(recs: list[Record], cfg: SelectConfig) -> tuple[list[int], Drops]:
    words = [output_words(r) for r in recs]
    order = sorted(range(len(recs)), key=lambda i: (-words[i], i))
    kept = order[:cfg.k]
    cutoff = words[kept[-1]] if kept else None
    drop = {i: ("longest_k", {"output_words": words[i], "rank": rank, "k": cfg.k, "cutoff": cutoff})
            for rank, i in enumerate(order[cfg.k:], start=cfg.k + 1)}
    return sorted(kept), drop


def _unit_rows(vecs: Any, n: int) -> np.ndarray:
    """The embedder's answer as unit float32 rows, after checking it is one finite row per text."""
    arr = np.asarray(vecs, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] != n:
        raise ValueError(f"the embedding function returned shape {arr.shape} for {n} texts; expected ({n}, d)")
    if not np.isfinite(arr).all():
        raise ValueError("the embedding function returned NaN or infinite values")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return np.ascontiguousarray(arr / np.where(norms > 0, norms, 1.0))


def _diverse_top_k(recs: list[Record], cfg: SelectConfig, embed: Embed | None) -> tuple[list[int], Drops]:
    """Greedy Deita selection. The taken embeddings grow as rows of one preallocated matrix; each block of
    ``_CHUNK`` candidates is compared with all of them in one product, and with the ones taken inside the block
    through the block's own Gram matrix, so the Python loop does O(1) numpy calls per candidate."""
    if embed is None:
        raise ValueError("diverse_top_k needs an embedding function: pass embed=pipeline.io.embeddings."
                         "load_embedder(cfg.embedding)")
    if not recs:
        return [], {}
    values = [rank_score(r, cfg.score) for r in recs]
    order = _rank_order(values)
    vecs = _unit_rows(embed([embedding_text(r) for r in recs]), len(recs))
    mat = np.empty((min(cfg.k, len(recs)), vecs.shape[1]), dtype=np.float32)
    taken: list[int] = []  # record positions, in the order taken (= the rows of mat)
    drop: Drops = {}
    done = 0  # candidates of `order` looked at
    while done < len(order) and len(taken) < cfg.k:
        block = order[done:done + _CHUNK]
        cv = vecs[block]
        before = len(taken)
        if before:
            sims = cv @ mat[:before].T
            best_before, row_before = sims.max(axis=1).tolist(), sims.argmax(axis=1).tolist()
        else:
            best_before, row_before = [-np.inf] * len(block), [-1] * len(block)
        gram = cv @ cv.T
        here: list[int] = []  # offsets in the block of the candidates taken from it
        for j, i in enumerate(block):
            if len(taken) >= cfg.k:
                break
            done += 1
            best, row = best_before[j], row_before[j]
            if here:
                w = gram[j, here]
                h = int(w.argmax())
                if w[h] > best:
                    best, row = float(w[h]), before + h
            if best > cfg.max_similarity:
                drop[i] = ("too_similar", {"similarity": round(best, 4), "nearest_id": recs[taken[row]].id,
                                           "max_similarity": cfg.max_similarity, "score": cfg.score,
                                           "value": values[i], "rank": done})
                continue
            mat[len(taken)] = cv[j]
            taken.append(i)
            here.append(j)
    for rank, i in enumerate(order[done:], start=done + 1):
        drop[i] = ("top_k_full", {"score": cfg.score, "value": values[i], "rank": rank, "k": cfg.k})
    return sorted(taken), drop


def apply_policy(recs: list[Record], cfg: SelectConfig, policy: str, embed: Embed | None = None
                 ) -> tuple[list[int], Drops]:
    """(positions kept, in input order; position -> (reason, details) of the dropped) of one policy."""
    if policy == "min_quality":
        return _min_quality(recs, cfg)
    if policy == "top_k":
        return _top_k(recs, cfg)
    if policy == "longest_k":
        return _longest_k(recs, cfg)
    if policy == "diverse_top_k":
        return _diverse_top_k(recs, cfg, embed)
    raise ValueError(f"unknown select policy {policy!r} (known: {', '.join(SELECT_POLICIES)})")


def select_records(records: list[Record], cfg: SelectConfig, embed: Embed | None = None) -> SelectResult:
    """Apply ``cfg.policies`` in order (see the module docstring). The input records are not modified."""
    alive = list(records)
    rejected: list[Rejection] = []
    steps = []
    for policy in cfg.policies:
        keep, drop = apply_policy(alive, cfg, policy, embed)
        reasons: dict[str, int] = {}
        for i, (reason, details) in sorted(drop.items()):
            rejected.append(Rejection(replace(alive[i]), reason, {"policy": policy, **details}, STAGE))
            reasons[reason] = reasons.get(reason, 0) + 1
        steps.append({"policy": policy, "input": len(alive), "kept": len(keep), "rejected_by_reason": reasons})
        alive = [alive[i] for i in keep]
    kept = [replace(r) for r in alive]
    return SelectResult(kept, rejected, {"input": len(records), "kept": len(kept), "policies": steps})


def compare_policies(records: list[Record], cfg: SelectConfig, embed: Embed | None = None) -> dict[str, int]:
    """How many records each policy alone would keep from the whole input, for the report's table.
    diverse_top_k is left out without ``embed`` (and embeds the whole input again with it)."""
    return {policy: len(apply_policy(records, cfg, policy, embed)[0]) for policy in SELECT_POLICIES
            if policy != "diverse_top_k" or embed is not None}
