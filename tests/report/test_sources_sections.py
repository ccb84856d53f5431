"""inspect and report show what the templatize, conversation and preferences stages made: the dataset's rows by
record source (and per labelled dataset and template), turns per conversation with the failed turns' reasons and
two conversations, and the preference pairs' margins, drops and two pairs. The run directories are written by hand
(a manifest with the figures ``runs.stages`` records, a few rows per file), so the tests are fast; a run without
those stages shows none of it."""
import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli.main import app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _rec(rid, source, instruction, output, turns=(), **meta):
    row = {"id": rid, "instruction": instruction, "input": "", "output": output, "is_classification": False,
           "source": source, "task_id": rid.split("/")[0], "meta": meta, "scores": {}}
    if turns:
        row["turns"] = [{"role": role, "content": text} for role, text in turns]
    return row


# What export read (the conversation stage's kept records): two template rows from one labelled dataset (one per
# template; a third template record was dropped by the filter), one bootstrap and one evolve record.
T1 = _rec("sst2/sst2_sentiment/0shot/r1", "template", "Is this review positive or negative?\n\nA great film.",
          "positive", dataset="sst2", template="sst2_sentiment", shots=0)
T2 = _rec("sst2/sst2_inverted/0shot/r2", "template", "Write a negative movie review.", "Dull and far too long.",
          dataset="sst2", template="sst2_inverted", shots=0)
B1 = _rec("boot-1", "bootstrap", "Give two tips for sleeping better.", "Keep a fixed bedtime; avoid screens.")
E1 = _rec("evo-1", "evolve", "Explain <b>HTML</b> tags to a child & a parent.", "Tags are labels in angle brackets.")
CONVERSED = [
    T1,
    {**T2, "turns": [{"role": "user", "content": "Make it about a <script>alert(1)</script> thriller."},
                     {"role": "assistant", "content": "A thriller with no thrills & no plot."}],
     "meta": {**T2["meta"], "turns": 2}},
    {**B1, "turns": [{"role": "user", "content": "What about weekends?"},
                     {"role": "assistant", "content": "Keep the same bedtime on weekends too."},
                     {"role": "user", "content": "And naps?"},
                     {"role": "assistant", "content": "Short naps, before 3 pm."}],
     "meta": {"turns": 3}},
    E1,
]
FAILED_TURNS = [
    {**T2, "id": T2["id"] + "#turn3", "reason": "truncated_answer", "stage": "conversation",
     "details": {"turn": 3, "side": "assistant", "move": "go deeper", "followup": "Longer?", "text": "It ..."}},
    {**E1, "id": "evo-1#turn2", "reason": "repeated_followup", "stage": "conversation",
     "details": {"rouge_l": 0.8, "earlier": E1["instruction"], "turn": 2, "side": "user", "move": "clarify",
                 "followup": "Explain HTML tags to a child.", "text": "Explain HTML tags to a child."}},
]
PAIRS = [
    {"id": T1["id"], "lineage": "sst2", "source": "template", "prompt": "Is this review positive? <i>A great film</i>",
     "chosen": "positive", "rejected": "It is hard to say.", "margin": 0.5, "chosen_is_original": True,
     "candidates": [{"text": "positive", "temperature": None, "share": 0.75},
                    {"text": "It is hard to say.", "temperature": 0.7, "share": 0.25}],
     "verdicts": [{"first": 0, "second": 1, "verdicts": ["A", "tie"], "score": 0.75,
                   "reasons": ["A names the sentiment <exactly>", "both answer"]}], "dropped_candidates": {}},
    {"id": B1["id"], "lineage": "boot-1", "source": "bootstrap", "prompt": B1["instruction"],
     "chosen": "1. Fixed bedtime. 2. No screens after 9.", "rejected": B1["output"], "margin": 0.75,
     "chosen_is_original": False,
     "candidates": [{"text": B1["output"], "temperature": None, "share": 0.125},
                    {"text": "Sleep.", "temperature": 0.7, "share": 0.5},
                    {"text": "1. Fixed bedtime. 2. No screens after 9.", "temperature": 1.0, "share": 0.875}],
     "verdicts": [{"first": 0, "second": 1, "verdicts": ["B", "B"], "score": 0.5, "reasons": ["x", "y"]},
                  {"first": 0, "second": 2, "verdicts": ["B", "A"], "score": 0.0,
                   "reasons": ["B is more complete", "A numbers the tips"]},
                  {"first": 1, "second": 2, "verdicts": ["B", "A"], "score": 0.0, "reasons": ["z", "w"]}],
     "dropped_candidates": {"identical": 1}},
]
NO_PAIR = [{**T2, "reason": "small_margin", "stage": "preferences", "details": {"margin": 0.1, "min_margin": 0.25}},
           {**E1, "reason": "too_few_answers", "stage": "preferences", "details": {"candidates": 1}}]

MANIFEST_STAGES = {
    "templatize": {"kept": 3, "rejected": 1, "rejected_by_reason": {"missing_field": 1}, "wall_s": 0.1,
                   "datasets": {"sst2": {"dataset": "sst2", "rows_in": 3, "records": 3, "rejected": 1,
                                         "origin": "seed_tasks/labelled/sst2.jsonl", "task": "sentiment",
                                         "templates": {"sst2_sentiment": {"rows": 2, "skipped": 0, "rejected": 1},
                                                       "sst2_inverted": {"rows": 1, "skipped": 2, "rejected": 0}}}},
                   "shots": [0, 2], "max_per_template": 50},
    "bootstrap": {"kept": 2, "rejected": 0, "rejected_by_reason": {}, "wall_s": 1.0},
    "filter": {"kept": 4, "rejected": 1, "rejected_by_reason": {"rouge_duplicate": 1}, "wall_s": 0.2},
    "conversation": {"kept": 4, "rejected": 2, "rejected_by_reason": {"truncated_answer": 1, "repeated_followup": 1},
                     "wall_s": 3.0, "input": 4, "extended": 3, "target_turns": 3,
                     "turns_per_conversation": {"1": 2, "2": 1, "3": 1}, "teacher_model": "gen-x"},
    "preferences": {"kept": 2, "rejected": 2, "rejected_by_reason": {"small_margin": 1, "too_few_answers": 1},
                    "wall_s": 2.0, "input": 4,
                    "margins": {"0.00-0.25": 0, "0.25-0.50": 0, "0.50-0.75": 1, "0.75-1.00": 1},
                    "mean_margin": 0.625, "chosen_is_original": 1, "teacher_model": "gen-x",
                    "judge_model": "judge-x"},
    "export": {"kept": 4, "rejected": 0, "rejected_by_reason": {}, "wall_s": 0.1,
               "turns_per_row": {"1": 2, "2": 1, "3": 1}, "preference_pairs": 2,
               "files": {"alpaca": "dataset/train.jsonl", "messages": "dataset/messages.jsonl",
                         "preferences": "dataset/preferences.jsonl"}},
}


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _write_run(run: Path, stages: dict, files: dict[str, list[dict]]) -> Path:
    run.mkdir(parents=True)
    config = {"stages": list(stages), "preferences": {"min_margin": 0.25}}
    (run / "manifest.json").write_text(json.dumps({"run_id": run.name, "status": "complete", "config": config,
                                                   "stages": stages}))
    for rel, rows in files.items():
        _jsonl(run / rel, rows)
    for stage in stages:
        folder = run / ("dataset" if stage == "export" else stage)
        folder.mkdir(exist_ok=True)
        (folder / ".done").write_text("{}")
    return run


def _source_files() -> dict[str, list[dict]]:
    template_kept = [T1, T2, _rec("sst2/sst2_sentiment/0shot/r3", "template", "Is this review positive?",
                                  "negative", dataset="sst2", template="sst2_sentiment", shots=0)]
    return {
        "templatize/kept.jsonl": template_kept,
        "templatize/rejected.jsonl": [{**T1, "id": "sst2/sst2_sentiment/r9", "reason": "missing_field",
                                       "stage": "templatize", "details": {"problem": "no field 'sentence'"}}],
        "bootstrap/kept.jsonl": [B1, E1 | {"source": "bootstrap", "id": "boot-2"}],
        "filter/kept.jsonl": [T1, T2, B1, E1],
        "filter/rejected.jsonl": [{**template_kept[2], "reason": "rouge_duplicate", "stage": "filter",
                                   "details": {"rouge_l": 0.9}}],
        "conversation/kept.jsonl": CONVERSED,
        "conversation/rejected.jsonl": FAILED_TURNS,
        "preferences/kept.jsonl": PAIRS,
        "preferences/rejected.jsonl": NO_PAIR,
        "dataset/train.jsonl": [{"instruction": r["instruction"], "input": "", "output": r["output"]}
                                for r in CONVERSED],
        "dataset/preferences.jsonl": [{"prompt": [], "chosen": [], "rejected": [], "id": p["id"]} for p in PAIRS],
    }


@pytest.fixture()
def sources_run(tmp_path) -> Path:
    return _write_run(tmp_path / "sources-run", MANIFEST_STAGES, _source_files())


@pytest.fixture()
def plain_run(tmp_path) -> Path:
    """A run of the earlier kind: bootstrap, filter and export, no new stage."""
    stages = {k: MANIFEST_STAGES[k] for k in ("bootstrap", "filter")}
    stages["export"] = {"kept": 2, "rejected": 0, "rejected_by_reason": {}, "wall_s": 0.1,
                        "turns_per_row": {"1": 2}, "files": {"alpaca": "dataset/train.jsonl"}}
    return _write_run(tmp_path / "plain-run", stages, {
        "bootstrap/kept.jsonl": [B1, E1], "filter/kept.jsonl": [B1, E1],
        "dataset/train.jsonl": [{"instruction": r["instruction"], "input": "", "output": r["output"]}
                                for r in (B1, E1)]})


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def _summary(run: Path) -> dict:
    from pipeline.report.summary import summarize
    from pipeline.runs.read import RunData

    return summarize(RunData.open(run), parse_verbs=False)


def test_export_rows_are_those_of_the_stage_export_read(sources_run, tmp_path):
    from pipeline.config import RunConfig
    from pipeline.runs.read import RunData
    from pipeline.runs.store import Run

    run = RunData.open(sources_run)
    assert run.export_stage() == "conversation"
    assert [r["id"] for r in run.final_rows()] == [r["id"] for r in CONVERSED]
    assert run.stage_stats("preferences")["mean_margin"] == 0.625 and run.stage_stats("tune") == {}
    # The same choice as the writer's, for other stage lists (stage_input("export")): generated records without
    # a record stage after them, templatize's first.
    for stages in (["templatize", "bootstrap", "export"], ["bootstrap", "filter", "preferences", "export"],
                   ["templatize", "conversation", "export"]):
        d = tmp_path / "-".join(stages)
        _write_run(d, {s: {} for s in stages}, {f"{s}/kept.jsonl": [B1] for s in stages if s != "export"})
        writer = Run(RunConfig.model_validate({"stages": stages}), d, {})
        assert RunData.open(d).final_files() == [p for p in writer.final_files() if p.exists()], stages
    assert RunData.open(tmp_path / "templatize-bootstrap-export").final_files()[0].parent.name == "templatize"


def test_summary_counts_sources_turns_and_pairs(sources_run):
    s = _summary(sources_run)
    src = s["sources"]
    assert src["stage"] == "conversation" and src["files"] == ["conversation/kept.jsonl"]
    assert src["rows"] == src["dataset_rows"] == 4
    assert src["by_source"] == [{"source": "template", "rows": 2, "share": 0.5},
                                {"source": "bootstrap", "rows": 1, "share": 0.25},
                                {"source": "evolve", "rows": 1, "share": 0.25}]
    tz = src["templatize"]
    assert (tz["kept"], tz["rejected"], tz["rejected_by_reason"]) == (3, 1, {"missing_field": 1})
    assert tz["shots"] == [0, 2] and tz["max_per_template"] == 50
    [d] = tz["datasets"]
    assert (d["dataset"], d["task"], d["rows_in"], d["records"], d["rejected"], d["in_dataset"]) == \
        ("sst2", "sentiment", 3, 3, 1, 2)
    assert d["templates"] == [
        {"template": "sst2_sentiment", "records": 2, "skipped": 0, "rejected": 1, "in_dataset": 1},
        {"template": "sst2_inverted", "records": 1, "skipped": 2, "rejected": 0, "in_dataset": 1}]

    c = s["conversations"]
    assert c["turns_per_conversation"] == {"1": 2, "2": 1, "3": 1} == c["turns_per_row"]
    assert (c["conversations"], c["input"], c["extended"], c["target_turns"]) == (4, 4, 3, 3)
    assert (c["multi_turn"], c["share_multi_turn"], c["reached_target"], c["mean_turns"]) == (2, 0.5, 1, 1.75)
    assert c["failed_turns"] == 2
    assert c["failed_by_reason"] == {"truncated_answer": 1, "repeated_followup": 1}
    assert c["failed_by_side"] == {"assistant": 1, "user": 1} and c["failed_at_turn"] == {"2": 1, "3": 1}

    p = s["preferences"]
    assert (p["pairs"], p["dropped"], p["keep_rate"], p["input"]) == (2, 2, 0.5, 4)
    assert p["dropped_by_reason"] == {"small_margin": 1, "too_few_answers": 1}
    assert p["margins"] == {"0.00-0.25": 0, "0.25-0.50": 0, "0.50-0.75": 1, "0.75-1.00": 1}
    assert (p["mean_margin"], p["min_margin"], p["chosen_is_original"], p["share_chosen_is_original"]) == \
        (0.625, 0.25, 1, 0.5)
    assert p["exported_pairs"] == 2 and p["judge_model"] == "judge-x"

    stages = {row["stage"]: row for row in s["stages"]}  # the stage table counts the new stages' files
    assert (stages["conversation"]["kept"], stages["conversation"]["rejected"]) == (4, 2)
    assert stages["preferences"]["rejected_by_reason"] == {"small_margin": 1, "too_few_answers": 1}


def test_figures_missing_from_the_manifest_are_counted_from_the_files(tmp_path):
    stages = json.loads(json.dumps(MANIFEST_STAGES))
    for key in ("turns_per_conversation",):
        del stages["conversation"][key]
    for key in ("margins", "mean_margin", "chosen_is_original"):
        del stages["preferences"][key]
    del stages["export"]["preference_pairs"]
    s = _summary(_write_run(tmp_path / "killed", stages, _source_files()))
    assert s["conversations"]["turns_per_conversation"] == {"1": 2, "2": 1, "3": 1}
    p = s["preferences"]
    assert p["margins"] == MANIFEST_STAGES["preferences"]["margins"]
    assert (p["mean_margin"], p["chosen_is_original"], p["exported_pairs"]) == (0.625, 1, 2)


def test_a_run_without_a_record_stage_after_its_generators_counts_the_template_records(tmp_path):
    """templatize and bootstrap straight to export: the kept records, their diversity and the dataset's sources are
    templatize's and bootstrap's records (``RunData.final_stage`` knows bootstrap's only)."""
    files = _source_files()
    stages = {k: MANIFEST_STAGES[k] for k in ("templatize", "bootstrap")}
    stages["export"] = {"kept": 5, "rejected": 0, "rejected_by_reason": {}, "turns_per_row": {"1": 5}}
    run = _write_run(tmp_path / "templates", stages, {
        k: files[k] for k in ("templatize/kept.jsonl", "templatize/rejected.jsonl", "bootstrap/kept.jsonl")}
        | {"dataset/train.jsonl": [{"instruction": "i", "input": "", "output": "o"}] * 5})
    s = _summary(run)
    assert s["final_stage"] == "templatize+bootstrap" and s["diversity"]["records"] == 5
    assert s["sources"]["by_source"] == [{"source": "template", "rows": 3, "share": 0.6},
                                         {"source": "bootstrap", "rows": 2, "share": 0.4}]
    assert s["sources"]["templatize"]["datasets"][0]["in_dataset"] == 3
    assert s["conversations"] is None and s["preferences"] is None
    r = _invoke("inspect", str(run), "--kept", "--sample", "10")
    assert r.exit_code == 0 and "kept (templatize+bootstrap): showing 5 of 5" in r.stdout
    out = tmp_path / "templates.html"
    assert _invoke("report", str(run), "--out", str(out)).exit_code == 0
    html = out.read_text()
    assert "This run kept no records" not in html and "<h2>Sources</h2>" in html
    assert "<h2>Conversations</h2>" not in html and "<h2>Preference pairs</h2>" not in html
    assert "sst2/sst2_sentiment/0shot/r3" in html  # in the sample of kept records


def test_inspect_prints_sources_turns_and_margins(sources_run):
    r = _invoke("inspect", str(sources_run), "--no-verbs")
    assert r.exit_code == 0, r.output
    text = r.stdout
    flat = " ".join(text.split())
    assert "dataset rows by source" in flat and "4 records of conversation/kept.jsonl" in flat
    rows = {cells[0]: cells[1:] for line in text.splitlines()
            if (cells := [c.strip() for c in line.split("│")[1:-1]]) and cells[0]}
    assert rows["template"] == ["2", "50.0%"] and rows["bootstrap"] == ["1", "25.0%"]
    assert rows["sst2"] == ["sentiment", "3", "3", "", "1", "2"]
    assert rows["sst2_inverted"] == ["", "", "1", "2", "0", "1"]
    assert "turns per conversation" in flat and rows["1"] == ["2", "2"] and rows["3"] == ["1", "1"]
    assert ("conversations: 4 records, 3 sampled for follow-ups, target 3 user turns; multi-turn 2 (50.0%), "
            "reached the target 1, mean user turns 1.750") in flat
    assert ("failed turns 2: truncated_answer 1, repeated_followup 1 (by side: assistant 1, user 1; turn 2: 1, "
            "turn 3: 1)") in flat
    assert "preference pairs by margin" in flat and rows["0.50-0.75"] == ["1"] and rows["0.25-0.50"] == ["0"]
    assert ("preference pairs: 2 kept, 2 records without a pair (small_margin 1, too_few_answers 1); mean margin "
            "0.625 (min 0.250); chosen is the record's own answer 1 (50.0%); pairs in dataset/preferences.jsonl 2; "
            "judge judge-x") in flat

    summary = json.loads(_invoke("inspect", str(sources_run), "--no-verbs", "--json").stdout)
    assert summary["sources"]["by_source"][0] == {"source": "template", "rows": 2, "share": 0.5}
    assert summary["conversations"]["mean_turns"] == 1.75 and summary["preferences"]["pairs"] == 2

    # Browsing a conversation shows its turns; a pair, its prompt, chosen, rejected and margin.
    r = _invoke("inspect", str(sources_run), "--kept", "--stage", "conversation", "--query", "id == 'boot-1'")
    assert r.exit_code == 0, r.output
    assert "user: And naps?" in r.stdout and "assistant: Short naps, before 3 pm." in r.stdout
    r = _invoke("inspect", str(sources_run), "--kept", "--stage", "conversation", "--query", "id == 'boot-1'", "--json")
    assert json.loads(r.stdout)["records"][0]["turns"] == CONVERSED[2]["turns"]
    r = _invoke("inspect", str(sources_run), "--kept", "--stage", "preferences", "--query", "margin > 0.6")
    assert "showing 1 of 1" in r.stdout and "No screens after 9" in r.stdout and re.search(r"margin +0.75\b", r.stdout)


def test_inspect_compares_the_new_figures(sources_run, plain_run):
    r = _invoke("inspect", str(plain_run), str(sources_run), "--no-verbs", "--json")
    assert r.exit_code == 0, r.output
    rows = {row["figure"]: row for row in json.loads(r.stdout)["compare"]}
    assert rows["sources.template"]["a"] == 0 and rows["sources.template"]["b"] == 2
    assert rows["preferences.mean_margin"]["a"] is None and rows["preferences.mean_margin"]["b"] == 0.625
    assert rows["conversation.multi_turn"]["b"] == 2


def _section(html: str, heading: str) -> str:
    start = html.index(f"<h2>{heading}</h2>")
    end = html.find("<h2>", start + 4)
    return html[start:end if end > 0 else None]


def test_report_shows_the_sections_with_escaped_samples(sources_run, tmp_path):
    out = tmp_path / "report.html"
    r = _invoke("report", str(sources_run), "--out", str(out))
    assert r.exit_code == 0, r.output
    html = out.read_text()
    assert "<script" not in html and 'src="http' not in html and "@import" not in html

    src = _section(html, "Sources")
    assert re.search(r"<td>template</td><td class=\"n\">2</td><td class=\"n\">50.0%</td>", src)
    assert re.search(r"<td>evolve</td><td class=\"n\">1</td><td class=\"n\">25.0%</td>", src)
    assert "conversation/kept.jsonl" in src and "class=\"warn\"" not in src
    assert re.search(r"<td><b>sst2</b></td><td>sentiment</td>.*?<td class=\"n\"><b>2</b></td>", src, flags=re.S)
    assert re.search(r"sst2_inverted</td>(<td></td>){3}<td class=\"n\">1</td><td class=\"n\">2</td>"
                     r"<td class=\"n\">0</td><td class=\"n\">1</td>", src.replace("\n      ", ""))
    assert "<svg" in src and "by source" in src

    conv = _section(html, "Conversations")
    for card in ("<b>4</b>records (3 sampled", "<b>2</b>multi-turn (50.0%)", "<b>1</b>reached 3 user turns",
                 "<b>1.75</b>user turns per conversation", "<b>2</b>failed turns"):
        assert card in conv, card
    assert re.search(r"<td>3</td><td class=\"n\">1</td><td class=\"n\">1</td>", conv)
    assert "<td>truncated_answer</td><td class=\"n\">1</td>" in conv and "by side: assistant 1, user 1" in conv
    assert "<svg" in conv and "turns per conversation" in conv
    assert conv.count('<div class="chat">') == 2  # both conversations with follow-ups, as chat bubbles
    assert conv.count('<div class="msg user">') == 2 + 3 and conv.count('<div class="msg assistant">') == 5
    assert "Make it about a &lt;script&gt;alert(1)&lt;/script&gt; thriller." in conv
    assert "A thriller with no thrills &amp; no plot." in conv and "Short naps, before 3 pm." in conv

    prefs = _section(html, "Preference pairs")
    for card in ("<b>2</b>pairs kept of 4 records", "<b>2</b>records without a pair",
                 "<b>0.625</b>mean margin (min 0.25)", "<b>50.0%</b>chosen = the record's own answer (1)",
                 "<b>2</b>pairs in dataset/preferences.jsonl"):
        assert card in prefs, card
    assert "<td>0.75-1.00</td><td class=\"n\">1</td>" in prefs
    assert "<td>small_margin</td><td class=\"n\">1</td>" in prefs
    assert "<svg" in prefs and "kept pairs by margin" in prefs
    assert prefs.count('<div class="chat">') == 2
    assert "Is this review positive? &lt;i&gt;A great film&lt;/i&gt;" in prefs and "<i>A great film" not in prefs
    assert '<div class="answer chosen"><span class="role">chosen</span>1. Fixed bedtime. 2. No screens' in prefs
    # The judge's verdicts on chosen vs rejected in both orders (chosen was the pair's second candidate: B first).
    assert "<li>chosen as B: verdict B: B is more complete</li><li>chosen as A: verdict A: A numbers the tips</li>" \
        in prefs
    assert "<li>chosen as A: verdict A: A names the sentiment &lt;exactly&gt;</li>" in prefs
    assert "own answer 0.12 (rejected), t=0.7 0.50, t=1.0 0.88 (chosen)" in prefs


def test_a_run_without_the_new_stages_has_none_of_the_sections(plain_run, tmp_path):
    s = _summary(plain_run)
    assert s["sources"] is None and s["conversations"] is None and s["preferences"] is None
    r = _invoke("inspect", str(plain_run), "--no-verbs")
    assert r.exit_code == 0, r.output
    for title in ("dataset rows by source", "conversations:", "preference pairs", "templatize"):
        assert title not in r.stdout.lower()
    out = tmp_path / "plain.html"
    assert _invoke("report", str(plain_run), "--out", str(out)).exit_code == 0
    html = out.read_text()
    for heading in ("Sources", "Conversations", "Preference pairs"):
        assert f"<h2>{heading}</h2>" not in html
    assert '<div class="chat">' not in html and "<h2>Stages</h2>" in html


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs Debian's chromium)")
def test_chat_bubbles_render_in_headless_chromium(sources_run, tmp_path):
    from PIL import Image

    from tests.report.test_inspect import _screenshot

    out = tmp_path / "report.html"
    assert _invoke("report", str(sources_run), "--out", str(out)).exit_code == 0
    png = tmp_path / "report.png"
    _screenshot(out, png, height=6000)
    colors = {c: n for n, c in Image.open(png).convert("RGB").getcolors(maxcolors=1 << 24)}
    # The user and assistant bubbles' backgrounds are painted (the CSS of the chat blocks applies).
    assert colors.get((0xe3, 0xec, 0xf8), 0) > 2000 and colors.get((0xe9, 0xf4, 0xe6), 0) > 2000
