"""Judge then select with a scripted judge: the exact scores each reply gives, and exactly which records each
policy keeps and why the others were dropped."""
from __future__ import annotations

import numpy as np

from pipeline.config import JudgeConfig, SelectConfig
from pipeline.records import Record
from pipeline.stages.judge import score_records
from pipeline.stages.select import select_records
from pipeline.teachers import Completion, Engine

# instruction -> (quality reply, complexity reply); "???" is a reply with no score in it.
REPLIES = {
    "Summarise the water cycle in two sentences.": ("Score: 5\nReason: Exact.", "Score: 2\nReason: Short."),
    "Summarise the water cycle in three sentences.": ("Score: 5\nReason: Exact.", "Score: 2\nReason: Short."),
    "Prove that the square root of two is irrational.": ('{"score": 4, "reason": "Sound."}', "Score: 5"),
    "Name a colour.": ("Score: 2\nReason: Thin.", "Score: 1\nReason: Trivial."),
    "Plan a week of vegetarian dinners on a budget.": ("???", "Score: 4\nReason: Constraints."),
    "Translate good morning into Spanish.": ("Score: 9\nReason: off the scale", "Score: 1"),
}


class ScriptedJudge:
    backend = model_name = "scripted-judge"
    max_parallel = None

    async def send(self, r):
        text = r.messages[-1]["content"]
        instruction = text.split("Instruction:\n", 1)[1].split("\n", 1)[0]
        quality, complexity = REPLIES[instruction]
        return Completion(quality if "Response:" in text else complexity, "stop", 10, 5)

    async def aclose(self):
        pass


def records() -> list[Record]:
    return [Record(id=f"r{k}", task_id=f"r{k}", instruction=i, output="word " * (3 + 4 * k))
            for k, i in enumerate(REPLIES)]


def judged() -> list[Record]:
    engine = Engine(ScriptedJudge())
    out: list[Record] = []
    try:
        engine.run(score_records(records(), engine, JudgeConfig(), out.extend, batch=4))
    finally:
        engine.close()
    return out


def test_scores_as_the_scripted_judge_gave_them():
    got = [(r.id, r.scores["quality"], r.scores["complexity"]) for r in judged()]
    assert got == [("r0", 5, 2), ("r1", 5, 2), ("r2", 4, 5), ("r3", 2, 1), ("r4", None, 4), ("r5", None, 1)]


def test_min_quality_then_top_k_by_deita():
    res = select_records(judged(), SelectConfig(policies=["min_quality", "top_k"], min_quality=4, score="deita", k=2))
    assert [r.id for r in res.kept] == ["r0", "r2"]  # deita 10 and 20; r1 ties r0 and comes later
    why = {r.record.id: r.reason for r in res.rejected}
    assert why == {"r3": "min_quality", "r4": "no_score", "r5": "no_score", "r1": "top_k"}
    assert all(r.stage == "select" for r in res.rejected)


def test_longest_k_keeps_the_longest_outputs():
    res = select_records(judged(), SelectConfig(policies=["longest_k"], k=2))
    assert [r.id for r in res.kept] == ["r4", "r5"]


def test_diverse_top_k_skips_a_near_copy_of_a_better_record():
    vectors = {"r0": [1, 0, 0], "r1": [0.99, 0.1, 0], "r2": [0, 1, 0], "r3": [0, 0, 1], "r4": [1, 1, 0],
               "r5": [0, 1, 1]}
    by_text = {r.instruction: vectors[r.id] for r in records()}

    def embed(texts: list[str]) -> np.ndarray:
        return np.asarray([by_text[t.split("\n", 1)[0]] for t in texts], dtype=np.float32)

    res = select_records(judged(), SelectConfig(policies=["diverse_top_k"], score="quality", k=3,
                                                max_similarity=0.9), embed)
    assert [r.id for r in res.kept] == ["r0", "r2", "r3"]  # quality 5, 4, 2; r1 (5) is r0's near copy
    skipped = {r.record.id: r for r in res.rejected}
    assert skipped["r1"].reason == "too_similar" and skipped["r1"].details["nearest_id"] == "r0"
