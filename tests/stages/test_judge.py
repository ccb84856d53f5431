"""The judge stage's scores: the reply parser on the shapes judges write, and the real embedded model as a judge
(with its grammar every reply is a score on the scale; in free text, a reply with no score is recorded as missing
with the reply kept, never guessed)."""
from __future__ import annotations

from collections import Counter

import pytest

from pipeline.config import JudgeConfig, TeacherConfig
from pipeline.records import Record
from pipeline.stages.judge import SCALES, histogram, parse_score, score_records
from pipeline.teachers import make_teacher

CASES = [
    ("Score: 4\nReason: Correct but terse.", 4.0, "Correct but terse.", ""),
    ('{"score": 5, "reason": "Complete."}', 5.0, "Complete.", ""),
    ('```json\n{"score": "3", "reason": "Vague."}\n```', 3.0, "Vague.", ""),
    ("4/5 - mostly right", 4.0, "mostly right", ""),
    ("**Score:** 2 because it misses the second half", 2.0, "because it misses the second half", ""),
    ("Rating: 1 out of 5. Wrong facts.", 1.0, "Wrong facts.", ""),
    ("Score: 4.5\nReason: Nearly perfect.", 4.5, "Nearly perfect.", ""),
    ("3", 3.0, "", ""),
    ("8/10", None, "", "other_scale"),
    ("Score: 7\nReason: great", None, "great", "out_of_range"),
    ("Score: -1", None, "", "out_of_range"),
    ('{"score": true}', None, "", "no_score"),
    ("The response is helpful and accurate.", None, "", "no_score"),
    ("", None, "", "no_score"),
]


@pytest.mark.parametrize("text,value,reason,problem", CASES)
def test_parse_score(text, value, reason, problem):
    s = parse_score(text, 0, 5)
    assert (s.value, s.reason, s.problem) == (value, reason, problem)


def test_histogram_counts_missing_and_keeps_scale_order():
    recs = [Record(id=str(k), instruction="x", scores={"quality": q}) for k, q in enumerate([5, 0, None, 5, 3.5])]
    assert histogram(recs, "quality") == {"0": 1, "1": 0, "2": 0, "3": 0, "4": 0, "5": 2, "3.5": 1, "missing": 1}


RECORDS = [
    Record(id="a", instruction="Name the largest planet in the solar system.", output="Jupiter is the largest."),
    Record(id="b", instruction="Name the largest planet in the solar system.", output="Bananas are yellow."),
    Record(id="c", instruction="Write a haiku about autumn rain.",
           output="Cold rain on red leaves\nthe gutter hums all night long\nsummer washed away"),
]


@pytest.mark.parametrize("structured", ["auto", "off"])
def test_the_embedded_judge_scores_every_record_or_records_it_missing(structured):
    teacher = make_teacher(TeacherConfig(structured=structured))
    try:
        out: list[Record] = []
        problems: Counter = Counter()
        teacher.run(score_records(RECORDS, teacher, JudgeConfig(), out.extend, batch=2, problems=problems))
    finally:
        teacher.close()
    assert [r.id for r in out] == ["a", "b", "c"]  # input order, batch after batch
    missing = 0
    for r in out:
        for name in ("quality", "complexity"):
            value, note = r.scores[name], r.meta["judge"][name]
            if value is None:
                missing += 1
                assert note["problem"] in ("no_score", "out_of_range", "other_scale") and "reply" in note
            else:
                low, high = SCALES[name]
                assert low <= value <= high and "problem" not in note
    assert sum(problems.values()) == missing
    if structured == "auto":  # the grammar makes every reply a score on the scale
        assert missing == 0
    assert RECORDS[0].scores == {}  # the inputs are not modified
