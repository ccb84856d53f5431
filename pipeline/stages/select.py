"""The select stage: choose the records the dataset keeps, by named policies over judge scores, lengths and
embeddings. Pure: records in, kept and rejected out; the caller passes the embedding function.

Policies run in ``SelectConfig.policies`` order, each on what the previous one kept:

* ``min_quality``: quality >= ``min_quality`` (AlpaGasus keeps rows rated >= 4.5 of 5). A record without a
  quality score is dropped as ``no_score``: a missing score is never guessed.
* ``top_k``: the ``k`` best by ``score`` (``quality``, ``complexity`` or ``deita`` = quality x complexity).
  Ties keep input order; records without the score rank after every scored one.
* ``longest_k``: the ``k`` longest outputs in words ("Long Is More": the 1K longest responses are a strong
  baseline). Ties keep input order.
* ``diverse_top_k`` (Deita): in score order, take a record unless its embedding's cosine similarity with one
  already taken is above ``max_similarity``; stop at ``k``. What is embedded is the whole sample (instruction,
  input and output), as Deita does, so two tasks that ask the same thing with different wording are near.

Kept records stay in input order. A dropped record is a ``Rejection`` (stage "select") whose reason is the
policy (``too_similar`` and ``top_k_full`` for diverse_top_k) with the figures that decided it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from ..config import SELECT_POLICIES, SelectConfig
from ..records import Record, Rejection

STAGE = "select"
Embed = Callable[[list[str]], np.ndarray]
_CHUNK = 512  # diverse_top_k compares this many candidates at once against everything taken


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


def _rank_order(values: list[float | None]) -> list[int]:
    """Positions by value, highest first; ties in input order; missing values last (in input order)."""
    return sorted(range(len(values)), key=lambda i: (values[i] is None, -(values[i] or 0.0), i))


def _output_words(rec: Record) -> int:
    return len(rec.output.split())


def _min_quality(recs: list[Record], cfg: SelectConfig) -> tuple[list[int], dict[int, tuple[str, dict]]]:
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


def _by_rank(recs: list[Record], cfg: SelectConfig, policy: str) -> tuple[list[int], dict[int, tuple[str, dict]]]:
    """top_k by the score, or longest_k by output words."""
    if policy == "top_k":
        values: list[float | None] = [rank_score(r, cfg.score) for r in recs]
        name = cfg.score
    else:
        values = [float(_output_words(r)) for r in recs]
        name = "output_words"
    order = _rank_order(values)
    kept = order[:cfg.k]
    cutoff = values[kept[-1]] if kept else None
    drop = {i: (policy, {"score": name, "value": values[i], "rank": rank + 1, "k": cfg.k, "cutoff": cutoff})
            for rank, i in enumerate(order) if rank >= cfg.k}
    return sorted(kept), drop


def _diverse(recs: list[Record], cfg: SelectConfig, embed: Embed | None
             ) -> tuple[list[int], dict[int, tuple[str, dict]]]:
    if embed is None:
        raise ValueError("diverse_top_k needs an embedding function (io.embeddings.load_embedder)")
    values = [rank_score(r, cfg.score) for r in recs]
    order = _rank_order(values)
    if not recs:
        return [], {}
    vecs = np.asarray(embed(["\n".join((r.instruction, r.input, r.output)) for r in recs]), dtype=np.float32)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    vecs = vecs / np.where(norms > 0, norms, 1.0)  # unit rows, whatever the embedder returned
    taken: list[int] = []
    mat = np.zeros((min(cfg.k, len(recs)), vecs.shape[1]), dtype=np.float32)
    drop: dict[int, tuple[str, dict]] = {}
    rank_of = {i: r + 1 for r, i in enumerate(order)}
    pos = 0
    while pos < len(order) and len(taken) < cfg.k:
        chunk = order[pos:pos + _CHUNK]
        pos += len(chunk)
        cv = vecs[chunk]
        against_taken = cv @ mat[:len(taken)].T if taken else np.zeros((len(chunk), 0), dtype=np.float32)
        within = cv @ cv.T
        taken_here: list[int] = []  # positions in the chunk taken so far
        for j, i in enumerate(chunk):
            if len(taken) >= cfg.k:
                pos -= len(chunk) - j  # the rest of the chunk was not reached
                break
            best, nearest = -2.0, None
            if against_taken.shape[1]:
                t = int(np.argmax(against_taken[j]))
                best, nearest = float(against_taken[j, t]), taken[t]
            if taken_here:
                h = int(np.argmax(within[j, taken_here]))
                if float(within[j, taken_here[h]]) > best:
                    best, nearest = float(within[j, taken_here[h]]), chunk[taken_here[h]]
            if best > cfg.max_similarity:
                drop[i] = ("too_similar", {"similarity": round(best, 4), "nearest_id": recs[nearest].id,
                                           "max_similarity": cfg.max_similarity, "score": cfg.score,
                                           "value": values[i], "rank": rank_of[i]})
                continue
            mat[len(taken)] = cv[j]
            taken.append(i)
            taken_here.append(j)
    for i in order[pos:]:
        drop[i] = ("top_k_full", {"score": cfg.score, "value": values[i], "rank": rank_of[i], "k": cfg.k})
    return sorted(taken), drop


def apply_policy(recs: list[Record], cfg: SelectConfig, policy: str, embed: Embed | None = None
                 ) -> tuple[list[int], dict[int, tuple[str, dict]]]:
    """(positions kept, position -> (reason, details) dropped) of one policy over ``recs``."""
    if policy == "min_quality":
        return _min_quality(recs, cfg)
    if policy in ("top_k", "longest_k"):
        return _by_rank(recs, cfg, policy)
    if policy == "diverse_top_k":
        return _diverse(recs, cfg, embed)
    raise ValueError(f"unknown policy {policy!r} (known: {', '.join(SELECT_POLICIES)})")


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
    """How many records each policy alone would keep from the whole input (diverse_top_k only with ``embed``)."""
    out = {}
    for policy in SELECT_POLICIES:
        if policy == "diverse_top_k" and embed is None:
            continue
        out[policy] = len(apply_policy(records, cfg, policy, embed)[0])
    return out
