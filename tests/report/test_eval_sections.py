"""inspect and report show a run's evaluations: ``eval/table.json`` (``pipeline eval``: base vs the tuned adapter)
and ``compare/table.json`` (``pipeline compare-data``: base vs one adapter per data selection), with a few rows of
their results.jsonl. The run directories are written by hand (a minimal manifest, no generation), so the tests are
fast; the tables have the schema ``pipeline.train.evaluate.evaluate_models`` writes."""
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli.main import app


def V(value, lo=None, hi=None, n=20):
    return {"value": value, "ci": [lo, hi] if lo is not None else None, "n": n}


def _model(rouge, lo, hi, bleu=None, accuracy=None, finished=0.9, toxicity=None):
    return {"rouge_l": V(rouge, lo, hi), "bleu": V(bleu, bleu - 2, bleu + 2) if bleu is not None else V(None),
            "accuracy": V(accuracy, accuracy - 0.1, accuracy + 0.1) if accuracy is not None else None,
            "finished": V(finished, finished - 0.05, min(1.0, finished + 0.05)),
            "toxicity": V(toxicity, 0.0, toxicity + 0.05) if toxicity is not None else None,
            "reference_loss": 2.345, "mean_new_tokens": 61.5}


def _judge(score, lo, hi, wins, ties, losses):
    return {"score": V(score, lo, hi), "wins": wins, "losses": losses, "ties": ties, "unjudged": 0,
            "answered_A": 21, "answered_B": 17, "answered_tie": 2, "invalid": 0}


def _table(models: dict, judge: dict | None, **extra) -> dict:
    adapters = {n: {"tune_dir": f"/x/{n}/tune", "adapter": f"/x/{n}/tune/adapter", "train_rows": 40 + i,
                    "steps": 30, "train_loss": 1.25} for i, n in enumerate(models) if n != "base"}
    return {"examples": 20, "tasks_source": "run held-out human tasks", "classification_tasks": 4,
            "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "adapters": adapters, "models": models,
            "differences": {n: {"rouge_l": V(0.089, 0.051, 0.127), "bleu": V(1.5, -0.5, 3.5),
                                "finished": V(0.05, 0.0, 0.1)} for n in models if n != "base"},
            "judge": judge, "judge_model": "judge-model-x" if judge else None,
            "toxicity_classifier": "alt-profanity-check",
            "settings": {"max_new_tokens": 128, "bootstrap_rounds": 1000}, "note": "", "wall_s": 12.5, **extra}


def _results(names: list[str]) -> list[dict]:
    rows = []
    for i in range(3):
        for name in ["base", *names]:
            row = {"task_id": f"task-{i}", "model": name, "prompt": f"Prompt {i}: sort <b>these</b> & those",
                   "reference": f"reference answer {i}", "is_classification": False,
                   "answer": f"answer of {name} to task {i}",
                   "scores": {"rouge_l": 0.5, "finished": True, "new_tokens": 12, "reference_nll": 2.0,
                              "reference_tokens": 9}}
            if name != "base":
                row["base_answer"] = f"answer of base to task {i}"
                row["judge"] = {"verdicts": ["A", "tie"], "score": 0.75,
                                "reasons": [f"{name} follows the <instruction> {i}", "both are fine"]}
            rows.append(row)
    return rows


def _write(folder: Path, table: dict, results: list[dict]) -> None:
    folder.mkdir(parents=True)
    (folder / "table.json").write_text(json.dumps(table))
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))


@pytest.fixture()
def eval_run(tmp_path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"run_id": "eval-run", "status": "complete", "stages": {}}))
    _write(run / "eval", _table({"base": _model(0.312, 0.28, 0.345, bleu=8.25, accuracy=0.5, toxicity=0.05),
                                 "tuned": _model(0.401, 0.37, 0.433, bleu=9.75, accuracy=0.75, finished=0.95,
                                                 toxicity=0.0)},
                                {"tuned": _judge(0.625, 0.55, 0.7, 11, 3, 6)}), _results(["tuned"]))
    selections = {"input_stage": "judge", "input": 120, "kept": {"all": 120, "diverse_top_k": 48, "longest_k": 50}}
    models = {"base": _model(0.312, 0.28, 0.345, bleu=8.25), "all": _model(0.388, 0.35, 0.42, bleu=9.5),
              "diverse_top_k": _model(0.417, 0.38, 0.45, bleu=10.25), "longest_k": _model(0.366, 0.33, 0.4, bleu=9.0)}
    judge = {"all": _judge(0.55, 0.48, 0.62, 9, 4, 7), "diverse_top_k": _judge(0.675, 0.6, 0.75, 13, 1, 6),
             "longest_k": _judge(0.45, 0.38, 0.52, 7, 4, 9)}
    _write(run / "compare", _table(models, judge, selections=selections),
           _results(["all", "diverse_top_k", "longest_k"]))
    return run


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_reader_returns_both_tables_and_sample_rows(eval_run):
    from pipeline.runs.read import RunData

    run = RunData.open(eval_run)
    assert set(run.eval_table("eval")["models"]) == {"base", "tuned"}
    assert run.eval_table("compare")["selections"]["kept"]["diverse_top_k"] == 48
    rows = run.eval_samples("compare", n=4, seed=1)
    assert len(rows) == 4 and all(r["model"] != "base" and r["base_answer"] for r in rows)
    assert len(run.eval_samples("eval", n=10)) == 3  # every tuned row, none of the base model's
    (eval_run / "compare" / "table.json").unlink()
    assert run.eval_table("compare") is None and RunData.open(eval_run).eval_table("eval") is not None


def test_inspect_shows_the_evaluation_and_the_data_comparison(eval_run):
    r = _invoke("inspect", str(eval_run), "--no-verbs")
    assert r.exit_code == 0, r.output
    text = r.stdout
    for heading in ("evaluation on 20 held-out tasks", "data comparison"):
        assert heading in text.lower()
    for figure in ("0.312 [0.280, 0.345]", "0.401 [0.370, 0.433]", "8.25 [6.25, 10.25]", "0.750 [0.650, 0.850]",
                   "0.950 [0.900, 1.000]", "0.000 [0.000, 0.050]", "0.625 [0.550, 0.700]", "+0.089 [+0.051, +0.127]"):
        assert figure in text, figure
    rows = {line.split("│")[0].strip(): line for line in text.splitlines() if line.count("│") >= 4}
    assert "120" in rows["all"] and "48" in rows["diverse_top_k"] and "50" in rows["longest_k"]
    assert "0.417 [0.380, 0.450]" in rows["diverse_top_k"] and "0.675 [0.600, 0.750]" in rows["diverse_top_k"]
    assert "11 wins, 3 ties, 6 losses" in " ".join(text.split())

    summary = json.loads(_invoke("inspect", str(eval_run), "--no-verbs", "--json").stdout)
    ev = summary["evaluation"]
    assert [m["model"] for m in ev["compare"]["models"]] == ["base", "all", "diverse_top_k", "longest_k"]
    assert [m["key"] for m in ev["compare"]["metrics"]] == ["rouge_l", "bleu", "finished", "judge"]
    assert ev["eval"]["models"][1]["judge"]["value"] == 0.625


def test_report_shows_the_evaluation_its_chart_and_result_rows(eval_run, tmp_path):
    out = tmp_path / "report.html"
    r = _invoke("report", str(eval_run), "--out", str(out))
    assert r.exit_code == 0, r.output
    html = out.read_text()
    for heading in ("Evaluation", "Data comparison"):
        assert f"<h2>{heading}</h2>" in html
    for figure in ("0.312 [0.280, 0.345]", "0.401 [0.370, 0.433]", "0.625 [0.550, 0.700]", "+0.089 [+0.051, +0.127]",
                   "0.417 [0.380, 0.450]", "0.675 [0.600, 0.750]"):
        assert figure in html, figure
    compare = html[html.index("<h2>Data comparison</h2>"):]
    assert re.search(r"<td>diverse_top_k</td><td class=\"n\">48</td>", compare)
    # Two charts of ROUGE-L and judge scores with their intervals, inline like the others.
    charts = re.findall(r'<figure class="chart">(<svg.*?</svg>)', html, flags=re.S)
    eval_charts = [c for c in charts if "ROUGE-L" in c and "judge score" in c]
    assert len(eval_charts) == 2 and "diverse_top_k" in eval_charts[1]
    assert "<script" not in html and 'src="http' not in html
    # Result rows, escaped: the prompt's markup is text.
    assert "Prompt 0: sort &lt;b&gt;these&lt;/b&gt; &amp; those" in html and "<b>these</b>" not in html
    assert "answer of base to task" in html and "answer of tuned to task" in html
    assert "1. tuned follows the &lt;instruction&gt; 0<br>2. both are fine" in html and "A / tie" in html


def test_eval_chart_draws_error_bars_and_skips_missing_scores():
    from pipeline.report import plots
    from pipeline.report.summary import eval_figures

    rows = eval_figures(_table({"base": _model(0.3, 0.25, 0.35, bleu=5.0), "tuned": _model(0.4, 0.3, 0.5, bleu=6.0)},
                               None))["models"]
    svg = plots.eval_bars(rows, "scores")
    assert svg.startswith("<svg") and "ROUGE-L" in svg and "judge score" not in svg  # no judge: one panel
    assert plots.eval_bars([], "scores") is None


def test_a_run_without_evaluations_has_no_such_sections(tmp_path):
    run = tmp_path / "plain"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"run_id": "plain", "status": "complete", "stages": {}}))
    r = _invoke("inspect", str(run), "--no-verbs")
    assert r.exit_code == 0 and "evaluation on" not in r.stdout.lower()
    assert _invoke("report", str(run), "--out", str(tmp_path / "r.html")).exit_code == 0
    assert "<h2>Evaluation</h2>" not in (tmp_path / "r.html").read_text()


@pytest.mark.parametrize("name, content, message", [
    ("table.json", '{"examples": 20, "models": {', "unreadable table.json"),
    ("table.json", '["not", "a", "table"]', "not an evaluation table"),
    ("results.jsonl", '{"task_id": "t", "model": "tuned"\n', "invalid JSON"),
])
def test_a_broken_evaluation_file_exits_2_naming_it(eval_run, tmp_path, name, content, message):
    path = eval_run / "compare" / name
    path.write_text(content)
    report = ["report", str(eval_run), "--out", str(tmp_path / "r.html")]
    for args in (["inspect", str(eval_run), "--no-verbs"], report):
        if name == "results.jsonl" and args[0] == "inspect":
            continue  # inspect shows no result rows
        r = _invoke(*args)
        assert r.exit_code == 2, r.output
        assert str(path) in r.stderr and message in r.stderr and "Traceback" not in r.stderr


def test_inspect_compares_the_scores_of_two_runs(eval_run, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "manifest.json").write_text(json.dumps({"run_id": "plain", "status": "complete", "stages": {}}))
    r = _invoke("inspect", str(plain), str(eval_run), "--no-verbs", "--json")
    assert r.exit_code == 0, r.output
    rows = {row["figure"]: row for row in json.loads(r.stdout)["compare"]}
    assert rows["eval.tuned.rouge_l"]["a"] is None and rows["eval.tuned.rouge_l"]["b"] == 0.401
    assert rows["compare.diverse_top_k.judge"]["b"] == 0.675 and "eval.base.judge" not in rows
