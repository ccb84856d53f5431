"""Templatize: the shipped templates on the shipped labelled datasets (every template renders every row), k-shot and
inverted rows, JSONL / CSV / parquet / a ``datasets`` directory read alike, bad templates and rows with their
reasons, and ``pipeline templatize`` end to end through the filter chain and the export (no teacher needed)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.config import PROJECT_ROOT, LabelledDataset
from pipeline.errors import InputError
from pipeline.io.labelled import load_rows, load_templates, parse_template
from pipeline.stages.templatize import few_shot_input, templatize_dataset

DATA = PROJECT_ROOT / "seed_tasks" / "labelled"
TEMPLATES = PROJECT_ROOT / "prompts" / "templates"
TASKS = {"sentiment": "sentiment.jsonl", "topic": "topics.csv", "nli": "nli.jsonl", "extractive_qa": "qa.jsonl",
         "summarization": "summaries.jsonl", "paraphrase": "paraphrase.csv"}


def _rows(name: str, **kw):
    return load_rows(LabelledDataset(path=str(DATA / name), task="x", id_field="id", **kw))[1]


@pytest.mark.parametrize("task,file", sorted(TASKS.items()))
def test_every_shipped_template_renders_every_row_of_its_dataset(task, file):
    rows = _rows(file)
    templates = load_templates(TEMPLATES, task)
    assert len(templates) >= 3
    res = templatize_dataset(rows, templates, task, shots=[0, 2], max_per_template=100, seed=0)
    assert not res.rejected
    for t in templates:
        mine = [r for r in res.kept if r.meta["template"] == t.id]
        zero = [r for r in mine if r.meta["shots"] == 0]
        skipped = res.stats["templates"][t.id]["skipped"]
        assert len(zero) == len(rows) - skipped and skipped == (12 if t.only_if else 0)
        assert {r.task_id for r in mine} == {f"template/{task}/{t.id}"} and {r.source for r in mine} == {"template"}
        for r in zero:
            row = dict(rows)[r.meta["row_id"]]
            assert r.instruction and r.output
            if t.choices and not t.inverted:
                assert r.output in t.choices and r.is_classification
            else:  # a generated answer is not given away by the instruction
                assert r.output not in r.instruction
            if task == "extractive_qa" and not t.inverted:
                assert r.output == row["answer"] and row["answer"] in row["context"]
        if t.inverted:  # the question is asked for, given the answer
            assert not any(r.is_classification for r in mine)
    inverted = [t.id for t in templates if t.inverted]
    assert inverted == {"extractive_qa": ["write_question"], "paraphrase": ["rewrite_sentence"]}.get(task, [])


def test_k_shot_rows_show_other_rows_solved_and_are_seeded():
    rows = _rows("sentiment.jsonl")
    templates = load_templates(TEMPLATES, "sentiment", ["label_word"])
    res = templatize_dataset(rows, templates, "sentiment", shots=[2], max_per_template=5, seed=3)
    assert len(res.kept) == 5
    by_id = dict(rows)
    for r in res.kept:
        shots = r.meta["shot_row_ids"]
        assert len(shots) == 2 and r.meta["row_id"] not in shots
        first = by_id[shots[0]]
        assert r.input.startswith(f"Example 1:\n{first['text']}\nAnswer: {['negative', 'positive'][first['label']]}")
        assert r.input.endswith("Now this one:\n" + by_id[r.meta["row_id"]]["text"])
    again = templatize_dataset(rows, templates, "sentiment", shots=[2], max_per_template=5, seed=3)
    assert [r.to_dict() for r in again.kept] == [r.to_dict() for r in res.kept]
    other = templatize_dataset(rows, templates, "sentiment", shots=[2], max_per_template=5, seed=4)
    assert [r.id for r in other.kept] != [r.id for r in res.kept]
    assert few_shot_input([("a", "b")], "c") == "Example 1:\na\nAnswer: b\n\nNow this one:\nc"


def test_csv_parquet_and_a_datasets_directory_read_alike(tmp_path):
    csv_rows = _rows("topics.csv")
    assert csv_rows == _rows("topics.parquet")
    (tmp_path / "topics").mkdir()
    (tmp_path / "topics" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for _, r in csv_rows))
    # hf_name goes through datasets.load_dataset: here a local folder, read the way a hub dataset is
    origin, hub_rows = load_rows(LabelledDataset(hf_name=str(tmp_path / "topics"), task="topic", id_field="id"))
    assert hub_rows == csv_rows and origin.startswith("hub dataset")


def test_an_unreachable_hub_dataset_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(InputError, match=r"templatize.datasets: hf_name: could not load 'no-such/dataset-xyz'"):
        load_rows(LabelledDataset(hf_name="no-such/dataset-xyz", task="topic"))


def test_bad_templates_and_rows_are_named(tmp_path):
    folder = tmp_path / "t" / "mood"
    folder.mkdir(parents=True)
    (folder / "bad.j2").write_text("### instruction\nSay it.\n### input\n{{ text }}\n### output\n{{ answer }}\n")
    with pytest.raises(InputError, match=r"bad.j2:1: template: no header"):
        load_templates(tmp_path / "t", "mood")
    (folder / "bad.j2").write_text('{#-\ntarget = "label"\ncolour = 1\n-#}\n### instruction\nx\n')
    with pytest.raises(InputError, match="unknown header key 'colour'"):
        load_templates(tmp_path / "t", "mood")
    with pytest.raises(InputError, match=r"no templates for task 'nope' \(known: mood\)"):
        load_templates(tmp_path / "t", "nope")
    good = parse_template('{#-\ntarget = "label"\nchoices = ["sad", "glad"]\nfields = ["text"]\n-#}\n'
                          "### instruction\nSay whether the speaker is sad or glad.\n### input\n{{ text }}\n"
                          "### output\n{{ answer }}\n", "mood", "good")
    rows = [("1", {"text": "I won!", "label": 1}), ("2", {"text": "", "label": 0}), ("3", {"text": "Hm.", "label": 5}),
            ("4", {"text": "Rain again.", "label": "sad"}), ("5", {"text": "Cake!", "label": "1"})]
    res = templatize_dataset(rows, [good], "moods", shots=[0], max_per_template=10, seed=0)
    assert [(r.meta["row_id"], r.output) for r in res.kept] == [("1", "glad"), ("4", "sad"), ("5", "glad")]
    assert [(r.record.meta["row_id"], r.reason) for r in res.rejected] == [("2", "missing_field"),
                                                                           ("3", "unknown_label")]
    assert res.rejected[1].details["problem"] == "label 5 is outside choices 0-1"


def test_pipeline_templatize_filters_and_exports(tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["templatize", str(DATA / "nli.jsonl"), "--task", "nli", "--id-field", "id",
                                 "--shots", "0,1", "--max-per-template", "10", "--out", str(out), "--no-report"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["stages"]) == ["templatize", "filter", "export"]
    assert manifest["stages"]["templatize"]["kept"] == 3 * 2 * 10
    kept = [json.loads(x) for x in (out / "filter" / "kept.jsonl").read_text().splitlines()]
    rejected = [json.loads(x) for x in (out / "filter" / "rejected.jsonl").read_text().splitlines()]
    assert len(kept) + len(rejected) == 60 and len(kept) >= 50  # every row is accounted for
    assert Counter(r["meta"]["template"] for r in kept).keys() == {"three_way", "claim_check",
                                                                   "guaranteed_or_ruled_out"}
    train = [json.loads(x) for x in (out / "dataset" / "train.jsonl").read_text().splitlines()]
    assert len(train) == len(kept) and set(train[0]) == {"instruction", "input", "output"}
    assert manifest["inputs"]["label_templates"]["nli/three_way"]
    bad = CliRunner().invoke(app, ["templatize", str(DATA / "nli.jsonl"), "--task", "sentimental",
                                   "--out", str(tmp_path / "r2"), "--no-report"])
    assert bad.exit_code == 2 and "no templates for task 'sentimental'" in bad.output
    assert not (tmp_path / "r2").exists()


def test_one_seed_task_per_template_for_the_bootstrap():
    from pipeline.stages.templatize import seed_tasks

    templates = load_templates(TEMPLATES, "nli")
    res = templatize_dataset(_rows("nli.jsonl"), templates, "nli", shots=[2, 0], max_per_template=3, seed=0)
    seeds = seed_tasks(res.kept)
    assert [s.task_id for s in seeds] == [t.task_id for t in templates]
    assert all(s.source == "seed" and s.id == s.task_id and "Example 1" not in s.input for s in seeds)
