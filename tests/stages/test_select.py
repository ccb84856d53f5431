"""Selection policies on hand-made records (exact keep sets, reasons and figures), and diverse_top_k with the real
WordLlama embeddings shipped inside its package."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import SelectConfig
from pipeline.errors import InputError
from pipeline.io.embeddings import load_embedder
from pipeline.records import Record
from pipeline.stages.select import STAGE, compare_policies, rank_score, select_records


def rec(i: int, quality=None, complexity=None, words: int = 5, text: str = "") -> Record:
    return Record(id=f"r{i}", instruction=text or f"Task number {i}.", output=" ".join(["w"] * words),
                  scores={"quality": quality, "complexity": complexity})


def fixed_embed(vectors: dict[str, list[float]], calls: list | None = None):
    """Embeds a record by its instruction (the first line of the embedded text); records each call's size."""
    def embed(texts):
        if calls is not None:
            calls.append(len(texts))
        return np.asarray([vectors[t.split("\n", 1)[0]] for t in texts], dtype=np.float32)
    return embed


def test_rank_score_deita_needs_both_scores():
    assert rank_score(rec(0, 4, 3), "deita") == 12.0
    assert rank_score(rec(0, 4, None), "deita") is None and rank_score(rec(0, None, 2), "deita") is None
    assert rank_score(rec(0, None, 2), "complexity") == 2.0 and rank_score(rec(0, None, 2), "quality") is None


def test_min_quality_drops_low_and_missing_with_their_figures():
    res = select_records([rec(0, 5), rec(1, 3.5), rec(2, None), rec(3, 4)], SelectConfig(policies=["min_quality"]))
    assert [r.id for r in res.kept] == ["r0", "r3"]
    got = {r.record.id: (r.reason, r.details) for r in res.rejected}
    assert got == {"r1": ("min_quality", {"policy": "min_quality", "quality": 3.5, "min_quality": 4.0}),
                   "r2": ("no_score", {"policy": "min_quality", "score": "quality", "value": None})}
    assert all(r.stage == STAGE == "select" for r in res.rejected)


def test_top_k_breaks_ties_by_input_order_and_ranks_missing_last():
    recs = [rec(0, None), rec(1, 3), rec(2, 5), rec(3, 3), rec(4, 5)]
    res = select_records(recs, SelectConfig(policies=["top_k"], k=3))
    assert [r.id for r in res.kept] == ["r1", "r2", "r4"]  # kept in input order: 5, 5, then the first of the 3s
    dropped = {r.record.id: (r.reason, r.details) for r in res.rejected}
    assert dropped == {
        "r3": ("top_k", {"policy": "top_k", "score": "quality", "value": 3.0, "rank": 4, "k": 3, "cutoff": 3.0}),
        "r0": ("top_k", {"policy": "top_k", "score": "quality", "value": None, "rank": 5, "k": 3, "cutoff": 3.0})}


def test_top_k_puts_a_missing_score_after_a_zero():
    res = select_records([rec(0, None), rec(1, 0)], SelectConfig(policies=["top_k"], k=1))
    assert [r.id for r in res.kept] == ["r1"]


def test_longest_k_counts_words_and_breaks_ties_by_input_order():
    recs = [rec(0, words=3), rec(1, words=9), rec(2, words=9), rec(3, words=1), rec(4, words=9)]
    recs[3].output = "one  two\nthree\tfour five six seven"  # whitespace split: 7 words, any whitespace
    res = select_records(recs, SelectConfig(policies=["longest_k"], k=2))
    assert [r.id for r in res.kept] == ["r1", "r2"]  # three outputs of 9 words: the first two
    assert {r.record.id: r.details for r in res.rejected} == {
        "r4": {"policy": "longest_k", "output_words": 9, "rank": 3, "k": 2, "cutoff": 9},
        "r0": {"policy": "longest_k", "output_words": 3, "rank": 5, "k": 2, "cutoff": 9},
        "r3": {"policy": "longest_k", "output_words": 7, "rank": 4, "k": 2, "cutoff": 9}}


def test_policies_chain_and_the_stats_say_what_each_step_did():
    recs = [rec(i, q, words=w) for i, (q, w) in enumerate([(5, 2), (4, 8), (2, 9), (4, 3), (None, 20)])]
    res = select_records(recs, SelectConfig(policies=["min_quality", "longest_k"], k=2))
    assert [r.id for r in res.kept] == ["r1", "r3"]
    assert res.stats == {"input": 5, "kept": 2, "policies": [
        {"policy": "min_quality", "input": 5, "kept": 3, "rejected_by_reason": {"min_quality": 1, "no_score": 1}},
        {"policy": "longest_k", "input": 3, "kept": 2, "rejected_by_reason": {"longest_k": 1}}]}
    assert {r.record.id: r.reason for r in res.rejected} == {"r2": "min_quality", "r4": "no_score", "r0": "longest_k"}


def test_select_returns_new_records_and_leaves_the_input_as_it_was():
    recs = [rec(0, 5), rec(1, 1)]
    res = select_records(recs, SelectConfig(policies=["min_quality"]))
    assert res.kept == [recs[0]] and res.kept[0] is not recs[0] and res.rejected[0].record is not recs[1]
    assert recs == [rec(0, 5), rec(1, 1)]


def test_diverse_top_k_skips_near_copies_and_stops_at_k():
    recs = [rec(0, 5, text="a"), rec(1, 4, text="b"), rec(2, 3, text="c"), rec(3, 2, text="d"), rec(4, 1, text="e")]
    # Not unit length on purpose: select normalises the rows itself ("c" = 2 x a unit vector).
    embed = fixed_embed({"a": [1, 0, 0], "b": [0.95, 0.05, 0], "c": [0, 2, 0], "d": [0, 0, 1], "e": [0, 0, 3]})
    res = select_records(recs, SelectConfig(policies=["diverse_top_k"], k=2, max_similarity=0.9), embed)
    assert [r.id for r in res.kept] == ["r0", "r2"]
    why = {r.record.id: r for r in res.rejected}
    assert why["r1"].reason == "too_similar"
    assert why["r1"].details == {"policy": "diverse_top_k", "similarity": 0.9986, "nearest_id": "r0",
                                 "max_similarity": 0.9, "score": "quality", "value": 4.0, "rank": 2}
    assert why["r3"].reason == why["r4"].reason == "top_k_full"
    assert why["r3"].details == {"policy": "diverse_top_k", "score": "quality", "value": 2.0, "rank": 4, "k": 2}


def test_diverse_top_k_names_the_most_similar_taken_record_and_goes_by_score_not_input_order():
    # r3 (best) is taken first; r0 and r1 are both taken (0.6 apart); r2 is near both and nearest to r1.
    vectors = {"a": [1, 0], "b": [0.6, 0.8], "c": [0.5, 0.866], "d": [-1, 0]}
    recs = [rec(0, 4, text="a"), rec(1, 3, text="b"), rec(2, 2, text="c"), rec(3, 5, text="d")]
    res = select_records(recs, SelectConfig(policies=["diverse_top_k"], k=4, max_similarity=0.9),
                         fixed_embed(vectors))
    assert [r.id for r in res.kept] == ["r0", "r1", "r3"]
    (skipped,) = res.rejected
    assert (skipped.record.id, skipped.reason, skipped.details["nearest_id"]) == ("r2", "too_similar", "r1")
    assert skipped.details["similarity"] == pytest.approx(0.6 * 0.5 + 0.8 * 0.866, abs=1e-3)


def test_min_quality_then_diverse_top_k_embeds_only_the_survivors():
    vectors = {"a": [1, 0, 0], "b": [0.99, 0.1, 0], "c": [0, 1, 0], "d": [0, 0, 1], "e": [0, 1, 0.05]}
    recs = [rec(0, 5, text="a"), rec(1, 4.5, text="b"), rec(2, 4, text="c"), rec(3, 3, text="d"),
            rec(4, None, text="e")]
    calls: list[int] = []
    res = select_records(recs, SelectConfig(policies=["min_quality", "diverse_top_k"], k=5, max_similarity=0.9),
                         fixed_embed(vectors, calls))
    assert calls == [3]  # one call, for the three records min_quality kept
    assert [r.id for r in res.kept] == ["r0", "r2"]
    assert {r.record.id: (r.reason, r.details["policy"]) for r in res.rejected} == {
        "r3": ("min_quality", "min_quality"), "r4": ("no_score", "min_quality"),
        "r1": ("too_similar", "diverse_top_k")}
    assert [(s["policy"], s["input"], s["kept"], s["rejected_by_reason"]) for s in res.stats["policies"]] == [
        ("min_quality", 5, 3, {"min_quality": 1, "no_score": 1}), ("diverse_top_k", 3, 2, {"too_similar": 1})]


def test_diverse_top_k_ranks_missing_scores_last_and_by_deita():
    vectors = {"a": [1, 0], "b": [0, 1], "c": [1, 0.01]}
    # deita: r0 none (complexity missing), r1 5 x 1 = 5, r2 3 x 3 = 9. r2 first, then r1, then r0: near r2.
    recs = [rec(0, 5, None, text="a"), rec(1, 5, 1, text="b"), rec(2, 3, 3, text="c")]
    res = select_records(recs, SelectConfig(policies=["diverse_top_k"], score="deita", k=3, max_similarity=0.9),
                         fixed_embed(vectors))
    assert [r.id for r in res.kept] == ["r1", "r2"]
    (skipped,) = res.rejected
    assert skipped.record.id == "r0" and skipped.details["nearest_id"] == "r2" and skipped.details["value"] is None
    assert skipped.details["rank"] == 3


def test_diverse_top_k_across_block_boundaries_matches_one_by_one():
    # Candidates are compared in blocks of 512: this input crosses two block boundaries and reaches k inside the
    # third block, and must give exactly what the one-candidate-at-a-time definition gives.
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((1500, 24)).astype(np.float32)
    recs = [rec(i, float(q), text=str(i)) for i, q in enumerate(rng.integers(0, 6, 1500))]
    embed = fixed_embed({str(i): vectors[i].tolist() for i in range(1500)})
    res = select_records(recs, SelectConfig(policies=["diverse_top_k"], k=350, max_similarity=0.5), embed)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    taken: list[int] = []
    nearest: dict[int, int] = {}
    looked = 0
    for i in sorted(range(1500), key=lambda i: (-recs[i].scores["quality"], i)):
        if len(taken) == 350:
            break
        looked += 1
        sims = unit[taken] @ unit[i]
        if len(sims) and float(sims.max()) > 0.5:
            nearest[i] = taken[int(sims.argmax())]
        else:
            taken.append(i)
    assert len(taken) == 350 and 1024 < looked < 1500 and len(nearest) > 500
    assert [r.id for r in res.kept] == [f"r{i}" for i in sorted(taken)]
    skipped = {r.record.id: r.details["nearest_id"] for r in res.rejected if r.reason == "too_similar"}
    assert skipped == {f"r{i}": f"r{j}" for i, j in nearest.items()}
    full = sorted(r.details["rank"] for r in res.rejected if r.reason == "top_k_full")
    assert full == list(range(looked + 1, 1501))


def test_diverse_top_k_needs_an_embedder():
    for recs in ([rec(0, 5)], [rec(0, 1)], []):  # even when nothing reaches it
        with pytest.raises(ValueError, match="diverse_top_k needs an embedding function"):
            select_records(recs, SelectConfig(policies=["min_quality", "diverse_top_k"]))


def test_diverse_top_k_refuses_an_embedding_of_the_wrong_shape_or_with_nan():
    cfg = SelectConfig(policies=["diverse_top_k"])
    with pytest.raises(ValueError, match="shape"):
        select_records([rec(0, 5), rec(1, 4)], cfg, lambda texts: np.ones((1, 4)))
    with pytest.raises(ValueError, match="NaN"):
        select_records([rec(0, 5), rec(1, 4)], cfg, lambda texts: np.array([[1.0, 0.0], [np.nan, 1.0]]))


def test_compare_policies_counts_each_policy_alone_on_the_whole_input():
    recs = [rec(0, 5, text="a"), rec(1, 4, text="b"), rec(2, None, text="c"), rec(3, 2, text="d")]
    cfg = SelectConfig(policies=["min_quality"], k=3, max_similarity=0.9)
    assert compare_policies(recs, cfg) == {"min_quality": 2, "top_k": 3, "longest_k": 3}
    embed = fixed_embed({"a": [1, 0], "b": [1, 0.01], "c": [0, 1], "d": [0.01, 1]})
    assert compare_policies(recs, cfg, embed) == {"min_quality": 2, "top_k": 3, "longest_k": 3, "diverse_top_k": 2}


def test_load_embedder_refuses_an_unknown_model():
    with pytest.raises(InputError, match="unknown embedding model 'bert'"):
        load_embedder("bert")


def test_wordllama_embeds_offline_to_unit_rows():
    embed = load_embedder()
    v = embed(["", "Write a poem.", "Convert 3 km to metres."])
    assert v.dtype == np.float32 and v.shape == (3, 256)
    # "" has no tokens: WordLlama's own norm=True would give NaN; the loader returns a zero row.
    assert np.linalg.norm(v, axis=1) == pytest.approx([0.0, 1.0, 1.0], abs=1e-5)
    assert embed([]).shape == (0, 256)


def test_wordllama_sees_a_paraphrase_as_near_and_another_task_as_far():
    # Cosine similarities measured with WordLlama l2_supercat (wordllama 0.4.0.post1) on the embedded text
    # (instruction, input, output): the two paraphrase pairs 0.83 (poems) and 0.88 (kilometres); the ocean poem
    # and the mountain poem (same kind of task, other content) 0.46 and 0.35; unrelated tasks 0.00 to 0.17.
    # max_similarity = 0.7 sits between the two groups, and so does the config default 0.8. WordLlama's mean-pooled
    # static vectors put paraphrases lower than Deita's own embedder does: its 0.9 would keep both paraphrases.
    samples = [("Write a short poem about the ocean at night.",
                "Waves whisper under the silver moon, the tide breathes slow."),
               ("Compose a brief poem about the sea at night.",
                "Waves murmur under a silver moon, the tide breathes slowly."),
               ("Write a short poem about a mountain in winter.",
                "Snow settles on the silent peak, the pines stand still and white."),
               ("Convert 3 kilometres to metres.", "3 kilometres is 3000 metres."),
               ("How many metres are in 3 kilometres?", "There are 3000 metres in 3 kilometres.")]
    recs = [Record(id=f"r{k}", instruction=t, output=o, scores={"quality": 5 - k})
            for k, (t, o) in enumerate(samples)]
    embed = load_embedder()
    res = select_records(recs, SelectConfig(policies=["diverse_top_k"], k=5, max_similarity=0.7), embed)
    assert [r.id for r in res.kept] == ["r0", "r2", "r3"]
    skipped = {r.record.id: r.details for r in res.rejected}
    assert {i: (d["nearest_id"], r.reason) for i, d, r in
            ((r.record.id, r.details, r) for r in res.rejected)} == {"r1": ("r0", "too_similar"),
                                                                     "r4": ("r3", "too_similar")}
    assert 0.78 < skipped["r1"]["similarity"] < 0.88 and 0.83 < skipped["r4"]["similarity"] < 0.93
    default = select_records(recs, SelectConfig(policies=["diverse_top_k"], k=5), embed)
    assert [r.id for r in default.kept] == ["r0", "r2", "r3"]
    deita = select_records(recs, SelectConfig(policies=["diverse_top_k"], k=5, max_similarity=0.9), embed)
    assert len(deita.kept) == 5
