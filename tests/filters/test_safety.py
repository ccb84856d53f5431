"""The toxicity filter: exact logic with a scripted scorer (one batched call, the highest field decides, a strict
threshold), and the real alt-profanity-check classifier shipped inside its package."""
from __future__ import annotations

import sys

import pytest

from pipeline.errors import InputError
from pipeline.filters.safety import TOXIC, ToxicityFilter
from pipeline.io.classifiers import load_toxicity_scorer
from pipeline.records import Record

SCRIPTED = {"fine instruction": 0.1, "nasty input": 0.95, "borderline output": 0.8, "calm output": 0.05,
            "rude output": 0.81, "rude instruction": 0.81}


class Scripted:
    """A scorer that answers from SCRIPTED and records every call."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, texts):
        self.calls.append(list(texts))
        return [SCRIPTED[t] for t in texts]


def test_the_highest_field_above_the_threshold_rejects_in_one_batched_call():
    score = Scripted()
    f = ToxicityFilter(score, threshold=0.8)
    recs = [Record(id="a", instruction="fine instruction", input="nasty input", output="calm output"),
            Record(id="b", instruction="fine instruction", output="borderline output"),  # 0.8 is not above 0.8
            Record(id="c", instruction="fine instruction", input="   ", output="calm output"),
            Record(id="d", instruction="fine instruction", output="rude output"),
            Record(id="e", instruction="", output="")]  # nothing to score: kept
    verdicts = f.check_many(recs)
    assert verdicts == [(TOXIC, {"score": 0.95, "field": "input", "threshold": 0.8}), None, None,
                        (TOXIC, {"score": 0.81, "field": "output", "threshold": 0.8}), None]
    # One call, with every non-empty field in record order; empty and blank fields are not sent.
    assert score.calls == [["fine instruction", "nasty input", "calm output", "fine instruction", "borderline output",
                            "fine instruction", "calm output", "fine instruction", "rude output"]]
    assert f.stats() == {"threshold": 0.8, "checked": 5, "flagged": 2, "flagged_by_field": {"input": 1, "output": 1},
                         "texts_scored": 9, "max_score": 0.95}


def test_the_threshold_decides_and_a_tie_names_the_first_field():
    recs = [Record(id="a", instruction="rude instruction", output="rude output")]
    assert ToxicityFilter(Scripted(), threshold=0.81).check_many(recs) == [None]
    assert ToxicityFilter(Scripted(), threshold=0.5).check_many(recs) == [
        (TOXIC, {"score": 0.81, "field": "instruction", "threshold": 0.5})]


def test_no_records_or_no_text_makes_no_call():
    score = Scripted()
    f = ToxicityFilter(score)
    assert f.check_many([]) == []
    assert f.check_many([Record(id="a", instruction=" ", input="", output="\n")]) == [None]
    assert score.calls == []


def test_a_scorer_that_miscounts_is_an_error():
    f = ToxicityFilter(lambda texts: [0.1], threshold=0.8)
    with pytest.raises(ValueError, match="1 scores for 2 texts"):
        f.check_many([Record(id="a", instruction="fine instruction", output="calm output")])
    f = ToxicityFilter(lambda texts: [float("nan")] * len(texts), threshold=0.8)
    with pytest.raises(ValueError, match="non-finite"):
        f.check_many([Record(id="a", instruction="fine instruction")])


def test_the_real_classifier_flags_an_insult_and_keeps_a_clean_record():
    score = load_toxicity_scorer()
    rude, clean = "Shut up, you stupid fucking idiot.", "Thanks, see you at the meeting on Tuesday."
    probs = score([rude, clean])
    assert len(probs) == 2 and all(isinstance(p, float) for p in probs)
    assert probs[0] > 0.9 and probs[1] < 0.2
    f = ToxicityFilter(score, threshold=0.8)
    recs = [Record(id="rude", instruction="Reply to the message.", output=rude),
            Record(id="clean", instruction="Reply to the message.", output=clean)]
    verdicts = f.check_many(recs)
    assert verdicts[0] == (TOXIC, {"score": probs[0], "field": "output", "threshold": 0.8})
    assert verdicts[1] is None
    assert score([]) == []


def test_a_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "profanity_check", None)  # what an uninstalled package looks like to import
    with pytest.raises(InputError, match=r"pip install 'instruct-pipeline\[safety\]'") as e:
        load_toxicity_scorer()
    assert e.value.path == "safety.enabled"
