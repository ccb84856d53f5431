"""Selection policies on hand-made records (exact keep sets, reasons and figures), and diverse_top_k with the real
WordLlama embeddings shipped inside its package."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import SelectConfig
from pipeline.io.embeddings import load_embedder
from pipeline.records import Record
from pipeline.stages.select import compare_policies, rank_score, select_records


def rec(i: int, quality=None, complexity=None, words: int = 5, text: str = "") -> Record:
    return Record(id=f"r{i}", instruction=text or f"Task number {i}.", output=" ".join(["w"] * words),
                  scores={"quality": quality, "complexity": complexity})


def test_rank_score_deita_needs_both_scores():
    assert rank_score(rec(0, 4, 3), "deita") == 12.0
    assert rank_score(rec(0, 4, None), "deita") is None and rank_score(rec(0, None, 2), "complexity") == 2.0


def test_min_quality_drops_low_and_missing_with_their_figures():
    res = select_records([rec(0, 5), rec(1, 3.5), rec(2, None), rec(3, 4)], SelectConfig(policies=["min_quality"]))
    assert [r.id for r in res.kept] == ["r0", "r3"]
    got = {r.record.id: (r.reason, r.details.get("quality")) for r in res.rejected}
    assert got == {"r1": ("min_quality", 3.5), "r2": ("no_score", None)}


def test_top_k_breaks_ties_by_input_order_and_ranks_missing_last():
    recs = [rec(0, None), rec(1, 3), rec(2, 5), rec(3, 3), rec(4, 5)]
    res = select_records(recs, SelectConfig(policies=["top_k"], k=3))
    assert [r.id for r in res.kept] == ["r1", "r2", "r4"]  # 5, 5, then the first of the two 3s
    dropped = {r.record.id: r.details for r in res.rejected}
    assert dropped["r3"]["rank"] == 4 and dropped["r3"]["cutoff"] == 3.0 and dropped["r0"]["value"] is None
    assert dropped["r0"]["rank"] == 5


def test_longest_k():
    res = select_records([rec(0, words=3), rec(1, words=9), rec(2, words=9), rec(3, words=1)],
                         SelectConfig(policies=["longest_k"], k=2))
    assert [r.id for r in res.kept] == ["r1", "r2"]
    assert {r.record.id: r.details["value"] for r in res.rejected} == {"r0": 3.0, "r3": 1.0}


def test_policies_chain_and_the_stats_say_what_each_step_did():
    recs = [rec(i, q, words=w) for i, (q, w) in enumerate([(5, 2), (4, 8), (2, 9), (4, 3), (None, 20)])]
    res = select_records(recs, SelectConfig(policies=["min_quality", "longest_k"], k=2))
    assert [r.id for r in res.kept] == ["r1", "r3"]
    assert [(s["policy"], s["input"], s["kept"]) for s in res.stats["policies"]] == [
        ("min_quality", 5, 3), ("longest_k", 3, 2)]
    assert {r.record.id: r.reason for r in res.rejected} == {"r2": "min_quality", "r4": "no_score", "r0": "longest_k"}


def fixed_embed(vectors: dict[str, list[float]]):
    def embed(texts):
        return np.asarray([vectors[t.split("\n", 1)[0]] for t in texts], dtype=np.float32)
    return embed


def test_diverse_top_k_skips_near_copies_and_stops_at_k():
    recs = [rec(0, 5, text="a"), rec(1, 4, text="b"), rec(2, 3, text="c"), rec(3, 2, text="d"), rec(4, 1, text="e")]
    embed = fixed_embed({"a": [1, 0, 0], "b": [0.95, 0.05, 0], "c": [0, 2, 0], "d": [0, 0, 1], "e": [0, 0, 3]})
    res = select_records(recs, SelectConfig(policies=["diverse_top_k"], k=2, max_similarity=0.9), embed)
    assert [r.id for r in res.kept] == ["r0", "r2"]
    why = {r.record.id: r for r in res.rejected}
    assert why["r1"].reason == "too_similar" and why["r1"].details["nearest_id"] == "r0"
    assert why["r1"].details["similarity"] == pytest.approx(0.9986, abs=1e-3)
    assert why["r3"].reason == why["r4"].reason == "top_k_full"


def test_diverse_top_k_across_chunk_boundaries_matches_one_by_one():
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((1500, 8)).astype(np.float32)
    recs = [rec(i, float(rng.integers(0, 6)), text=str(i)) for i in range(1500)]
    embed = fixed_embed({str(i): vectors[i].tolist() for i in range(1500)})
    cfg = SelectConfig(policies=["diverse_top_k"], k=400, max_similarity=0.6)
    got = [r.id for r in select_records(recs, cfg, embed).kept]
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    taken: list[int] = []
    for i in sorted(range(1500), key=lambda i: (-recs[i].scores["quality"], i)):
        if len(taken) == 400:
            break
        if not taken or float(np.max(unit[taken] @ unit[i])) <= 0.6:
            taken.append(i)
    assert got == [f"r{i}" for i in sorted(taken)]


def test_diverse_top_k_needs_an_embedder():
    with pytest.raises(ValueError, match="embedding"):
        select_records([rec(0, 5)], SelectConfig(policies=["diverse_top_k"]))


def test_wordllama_sees_a_paraphrase_as_near_and_another_task_as_far():
    # Measured with WordLlama l2_supercat: the paraphrase pair 0.83, the unrelated pair 0.15 and 0.12.
    texts = ["Write a short poem about the ocean at night.",
             "Compose a brief poem about the sea at night.",
             "Convert 3 kilometres to metres."]
    outputs = ["Waves whisper under the silver moon, the tide breathes slow.",
               "Waves murmur under a silver moon, the tide breathes slowly.",
               "3 kilometres is 3000 metres."]
    recs = [Record(id=f"r{k}", instruction=t, output=o, scores={"quality": 5 - k})
            for k, (t, o) in enumerate(zip(texts, outputs))]
    res = select_records(recs, SelectConfig(policies=["diverse_top_k"], k=3, max_similarity=0.7), load_embedder())
    assert [r.id for r in res.kept] == ["r0", "r2"]
    assert res.rejected[0].record.id == "r1" and 0.7 < res.rejected[0].details["similarity"] < 0.95
    assert compare_policies(recs, SelectConfig(k=2, max_similarity=0.7), load_embedder()) == {
        "min_quality": 2, "top_k": 2, "longest_k": 2, "diverse_top_k": 2}
