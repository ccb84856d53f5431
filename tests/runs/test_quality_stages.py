"""The judge and select stages inside a run: a judged file whose score is off its scale (edited by hand, or written
by another tool) stops the resumed select stage with one line naming the file, line and field, exit 2, and nothing
written."""
from __future__ import annotations

import json

from tests.conftest import run_cli

STAGES = ["--set", 'stages=["judge", "select", "export"]', "--no-report"]


def test_a_score_off_its_scale_in_a_resumed_file_is_one_line_and_writes_nothing(tmp_path):
    run = tmp_path / "run"
    first = run_cli("run", "--out", str(run), *STAGES)
    assert first.returncode == 0, first.stderr[-2000:]
    row = {"id": "x1", "task_id": "x1", "instruction": "Name three primary colours.", "output": "Red, blue, yellow.",
           "source": "bootstrap", "scores": {"quality": 4, "complexity": 1}}
    bad = {**row, "id": "x2", "task_id": "x2", "scores": {"quality": 4, "complexity": 9}}
    (run / "judge" / "kept.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(bad) + "\n")
    for stage in ("select", "export"):
        (run / stage / ".done").unlink()
    before = {p: p.read_bytes() for p in (run / "select").rglob("*") if p.is_file()}
    again = run_cli("run", "--out", str(run), *STAGES)
    assert again.returncode == 2, again.stderr[-2000:]
    lines = [line for line in again.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in again.stderr, again.stderr
    assert f"{run / 'judge' / 'kept.jsonl'}:2: scores.complexity: score 9 is off the 1-5 scale" in lines[0]
    assert {p: p.read_bytes() for p in (run / "select").rglob("*") if p.is_file()} == before


def test_a_judge_of_its_own_scores_through_the_runs_cache_and_budget(llama_server, tmp_path):
    """[judge.teacher] is a real llama.cpp server on 127.0.0.1: every record gets its scores from the server's
    model, and the judge's requests count in the run's spending and usage. The records to judge are written as a
    finished bootstrap stage's output (generating them with the embedded model would take minutes)."""
    run = tmp_path / "run"
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(f'stages = ["judge", "select", "export"]\n'
                   f'[judge.teacher]\nbackend = "openai"\nbase_url = "{llama_server}"\n'
                   f'model = "SmolLM2-135M-Instruct"\napi_key_env = ""\n'
                   f'[select]\npolicies = ["longest_k"]\nk = 2\n')
    assert run_cli("run", "--config", str(cfg), "--out", str(run), "--no-report").returncode == 0
    rows = [{"id": f"b{k}", "task_id": f"b{k}", "instruction": i, "output": o, "source": "bootstrap"}
            for k, (i, o) in enumerate([("Name the largest planet.", "Jupiter is the largest planet."),
                                        ("Give a synonym for happy.", "Joyful."),
                                        ("Add 17 and 25.", "17 + 25 = 42.")])]
    (run / "bootstrap").mkdir()
    (run / "bootstrap" / "kept.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for stage in ("judge", "select", "export"):
        for p in (run / stage).iterdir():
            p.unlink()
    r = run_cli("run", "--config", str(cfg), "--out", str(run), "--no-report")
    assert r.returncode == 0, r.stderr[-2000:]
    manifest = json.loads((run / "manifest.json").read_text())
    judge = manifest["stages"]["judge"]
    scored = [json.loads(line) for line in (run / "judge" / "kept.jsonl").read_text().splitlines()]
    assert [row["id"] for row in scored] == ["b0", "b1", "b2"] and judge["input"] == judge["kept"] == 3
    assert judge["judge_model"] == "SmolLM2-135M-Instruct" and judge["usage"]["requests"] == 6
    assert all(set(row["scores"]) == {"quality", "complexity"} for row in scored)
    # The run's spending (its cache) holds the judge's six answers, and the session's usage counts them.
    assert manifest["spent"]["requests"] == 6 and manifest["sessions"][-1]["usage"]["requests"] == 6
    assert [json.loads(line)["id"] for line in (run / "select" / "kept.jsonl").read_text().splitlines()] == [
        "b0", "b2"]
