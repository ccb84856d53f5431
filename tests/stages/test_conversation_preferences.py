"""The conversation and preferences stages: their rules with a scripted teacher (every branch, exactly), then a real
run on the embedded teacher: templatize -> conversation -> preferences -> export, whose messages.jsonl and
preferences.jsonl load in ``datasets`` in the forms trl reads."""
from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.config import ConversationConfig, FilterConfig, PreferencesConfig, PROJECT_ROOT
from pipeline.records import Record
from pipeline.stages import conversation, preferences
from pipeline.stages.judge import compare, pair_score
from pipeline.teachers.base import Completion


class Scripted:
    """A teacher whose answer is ``rule(request, kind)``; it records every request it was sent."""

    structured = "off"

    def __init__(self, rule):
        self.rule, self.sent = rule, []

    async def complete(self, req, kind=""):
        self.sent.append((kind, req))
        text, finish = self.rule(req, kind)
        return Completion(text=text, finish_reason=finish)


REC = Record(id="r1", instruction="Give two tips for sleeping better.", output="Keep a fixed bedtime and avoid "
             "screens for an hour before bed.", task_id="t1")


def test_followup_rules():
    f = FilterConfig()
    assert conversation.clean_followup('User: "What about naps?"') == "What about naps?"
    assert conversation.clean_followup("**Next message:** Why an hour?") == "Why an hour?"
    assert conversation.check_followup("", "stop", [], f) == ("empty_followup", {})
    assert conversation.check_followup("", "length", [], f) == ("truncated_followup", {})
    assert conversation.whole_sentences("Why an hour? Is that from a study. And what ab") == \
        "Why an hour? Is that from a study."
    assert conversation.whole_sentences("Why so? And what ab") == "" and conversation.whole_sentences("What ab") == ""
    assert conversation.check_followup("I'm sorry, but I cannot help with that.", "stop", [], f)[0] == \
        "followup_refusal"
    verdict = conversation.check_followup("Give two tips for sleeping better please.", "stop",
                                          [REC.instruction], f)
    assert verdict[0] == "repeated_followup" and verdict[1]["rouge_l"] >= 0.7
    assert conversation.check_followup("What if I work night shifts?", "stop", [REC.instruction], f) is None
    assert conversation.check_answer("q", "word " * 50, "length", f) == ("truncated_answer", {})
    assert conversation.check_answer("q", "go to bed go to bed go to bed go to bed go to bed go to bed", "stop",
                                     f)[0] == "repeated_ngrams"
    assert conversation.check_answer("q", "As an AI language model I cannot sleep.", "stop", f)[0] in (
        "refusal", "ai_boilerplate")


def test_a_failed_turn_is_rejected_and_the_turns_before_it_stay():
    answers = iter([("Try a short walk after dinner.", "stop"), ("It helps " * 200, "length")])

    def rule(req, kind):
        if kind == "conversation_user":
            turn = sum(m["role"] == "assistant" for m in req.messages)  # differs per turn through the transcript
            return ("What about weekends?" if "weekends" not in req.messages[-1]["content"]
                    else f"And on holidays {turn}?"), "stop"
        return next(answers)

    teacher = Scripted(rule)
    out = asyncio.run(conversation.converse(REC, teacher, ConversationConfig(turns=3), FilterConfig()))
    assert out.turns_added == 1 and out.record.turns == [
        {"role": "user", "content": "What about weekends?"},
        {"role": "assistant", "content": "Try a short walk after dinner."}]
    assert [r.reason for r in out.rejected] == ["truncated_answer"]
    assert out.rejected[0].details["turn"] == 3 and out.rejected[0].details["side"] == "assistant"
    assert out.record.messages()[0] == {"role": "user", "content": REC.instruction}
    # the assistant is asked with the whole conversation as chat messages
    kind, last = teacher.sent[-1]
    assert kind == "conversation_answer" and [m["role"] for m in last.messages] == ["user", "assistant"] * 2 + ["user"]
    assert REC.to_dict().get("turns") is None and out.record.to_dict()["turns"] == out.record.turns


def test_preference_ranking_margins_and_drops():
    assert pair_score("A", "B") == 1.0 and pair_score("A", "A") == 0.5

    def judge_rule(better: str):
        def rule(req, kind):  # prefers the answer containing ``better``, whatever its position
            text = req.messages[-1]["content"]
            a = text.split("Answer A:\n")[1].split("\n\nAnswer B:")[0]
            return ("A" if better in a else "B") + "\nIt is better.", "stop"
        return rule

    gen = Scripted(lambda req, kind: ("Sleep at the same time daily and skip caffeine after noon.", "stop"))
    cfg = PreferencesConfig(answers=2, min_margin=0.5)
    got = asyncio.run(preferences.rank(REC, gen, Scripted(judge_rule("caffeine")), cfg))
    assert got.pair["chosen"].endswith("after noon.") and got.pair["rejected"] == REC.output
    assert got.pair["margin"] == 1.0 and not got.pair["chosen_is_original"]
    assert [v["verdicts"] for v in got.pair["verdicts"]] == [["B", "A"]]  # both orders asked
    assert gen.sent[0][1].decoding.temperature == 1.0 and gen.sent[0][1].sample_key == "r1/preference0"
    # a judge that always says A has no preference: margin 0, dropped
    got = asyncio.run(preferences.rank(REC, gen, Scripted(lambda r, k: ("A", "stop")), cfg))
    assert got.rejection.reason == "small_margin" and got.rejection.details["margin"] == 0.0
    # a sample identical to the record's own answer, or cut short, leaves too few candidates
    same = Scripted(lambda req, kind: (REC.output, "stop"))
    got = asyncio.run(preferences.rank(REC, same, Scripted(judge_rule("x")), cfg))
    assert got.rejection.reason == "too_few_answers" and got.rejection.details["dropped_candidates"] == {
        "identical": 1}
    cut = Scripted(lambda req, kind: ("Sleep", "length"))
    assert asyncio.run(preferences.rank(REC, cut, Scripted(judge_rule("x")), cfg)).rejection.details[
        "dropped_candidates"] == {"truncated": 1}
    # three candidates: three pairs, six judge requests
    gen3 = Scripted(lambda req, kind: (f"Answer number {req.sample_key[-1]} about caffeine.", "stop"))
    judge = Scripted(judge_rule("number 1"))
    got = asyncio.run(preferences.rank(REC, gen3, judge, PreferencesConfig(answers=3, temperatures=[0.7, 1.2])))
    assert len(judge.sent) == 6 and got.pair["chosen"] == "Answer number 1 about caffeine."
    assert [c["temperature"] for c in got.pair["candidates"]] == [None, 0.7, 1.2]
    assert asyncio.run(compare(judge, "q", "same", "same ", cfg.judge_decoding))["reasons"] == ["identical answers"] * 2
    assert preferences.margin_histogram([{"margin": 1.0}, {"margin": 0.5}, {"margin": 0.6}]) == {
        "0.00-0.25": 0, "0.25-0.50": 0, "0.50-0.75": 2, "0.75-1.00": 1}


def test_conversation_and_preferences_on_the_embedded_teacher(tmp_path):
    """A real run: 4 summarisation rows templatized, 2 of them grown to 2-turn conversations, 2 preference pairs
    asked for; every file loads in ``datasets`` in the form trl reads."""
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "run"
    data = PROJECT_ROOT / "seed_tasks" / "labelled" / "summaries.jsonl"
    sets = [f'templatize.datasets=[{{path = "{data}", task = "summarization", templates = ["one_sentence"], '
            'id_field = "id"}]',
            "templatize.shots=[0]", "templatize.max_per_template=4",
            'stages=["templatize", "conversation", "preferences", "export"]',
            "conversation.max_items=2", "conversation.turns=2", "conversation.user_decoding.max_tokens=48",
            "conversation.answer_decoding.max_tokens=96", "preferences.max_items=2",
            "preferences.answer_decoding.max_tokens=64", "preferences.min_margin=0.0"]
    r = CliRunner().invoke(app, ["run", "--out", str(out), "--no-report", *sum((["--set", s] for s in sets), [])])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())["stages"]
    conv, pref = m["conversation"], m["preferences"]
    assert conv["input"] == conv["kept"] == 4 and conv["extended"] == 2
    assert sum(conv["turns_per_conversation"].values()) == 4
    assert conv["usage"]["requests"] >= 2  # at least one user turn each for the two sampled records
    rows = [json.loads(x) for x in (out / "dataset" / "messages.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and m["export"]["turns_per_row"] == conv["turns_per_conversation"]
    multi = [r for r in rows if len(r["messages"]) > 2]
    assert len(multi) == conv["kept"] - conv["turns_per_conversation"].get("1", 0)
    for r in multi:
        assert [x["role"] for x in r["messages"]] == ["user", "assistant", "user", "assistant"]
    ds = datasets.load_dataset("json", data_files=str(out / "dataset" / "messages.jsonl"), split="train")
    assert ds.num_rows == 4 and "messages" in ds.column_names
    assert pref["input"] == 2 and pref["kept"] + pref["rejected"] == 2
    pairs_file = out / "dataset" / "preferences.jsonl"
    pairs = [json.loads(x) for x in pairs_file.read_text().splitlines()]
    assert len(pairs) == pref["kept"] == m["export"].get("preference_pairs", 0)
    for p in pairs:
        assert p["prompt"][0]["role"] == "user" and p["chosen"][0]["role"] == p["rejected"][0]["role"] == "assistant"
        assert p["chosen"][0]["content"] != p["rejected"][0]["content"] and 0.0 <= p["margin"] <= 1.0
    if pairs:
        ds = datasets.load_dataset("json", data_files=str(pairs_file), split="train")
        assert {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    rejected = [json.loads(x) for x in (out / "preferences" / "rejected.jsonl").read_text().splitlines()]
    assert all(x["reason"] in ("small_margin", "too_few_answers", "unjudged") for x in rejected)

    # a run killed inside the conversation stage resumes to the same files, paying for nothing twice
    import shutil

    before = {f: (out / f).read_text() for f in ("dataset/messages.jsonl", "dataset/preferences.jsonl",
                                                  "conversation/kept.jsonl", "preferences/kept.jsonl")}
    spent = json.loads((out / "manifest.json").read_text())["spent"]["requests"]
    kept = (out / "conversation" / "kept.jsonl").read_text().splitlines(keepends=True)
    (out / "conversation" / "kept.jsonl").write_text("".join(kept[:1]) + kept[1][:10])  # a torn last line
    for d in ("preferences", "dataset", "export"):  # the stages after it had not run yet
        shutil.rmtree(out / d)
    (out / "conversation" / ".done").unlink()
    r = CliRunner().invoke(app, ["run", "--out", str(out), "--no-report", *sum((["--set", s] for s in sets), [])])
    assert r.exit_code == 0, r.output
    assert {f: (out / f).read_text() for f in before} == before
    assert json.loads((out / "manifest.json").read_text())["spent"]["requests"] == spent
