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
    """[judge.teacher] is a real llama.cpp server on 127.0.0.1 while the embedded model generates: every record
    gets its scores from the server's model, and the judge's requests count in the run's spending."""
    run = tmp_path / "run"
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(f'stages = ["bootstrap", "judge", "select", "export"]\n'
                   f'[bootstrap]\ntarget_instructions = 1\nrequest_batch_size = 1\n'
                   f'[judge.teacher]\nbackend = "openai"\nbase_url = "{llama_server}"\n'
                   f'model = "SmolLM2-135M-Instruct"\napi_key_env = ""\n'
                   f'[select]\npolicies = ["longest_k"]\nk = 1\n')
    r = run_cli("run", "--config", str(cfg), "--out", str(run), "--no-report")
    assert r.returncode == 0, r.stderr[-2000:]
    manifest = json.loads((run / "manifest.json").read_text())
    judge = manifest["stages"]["judge"]
    scored = [json.loads(line) for line in (run / "judge" / "kept.jsonl").read_text().splitlines()]
    boot = manifest["stages"]["bootstrap"]["usage"]["requests"]
    assert len(scored) == judge["input"] == judge["kept"] >= 1
    assert judge["judge_model"] == "SmolLM2-135M-Instruct" and judge["usage"]["requests"] == 2 * len(scored)
    assert all(set(row["scores"]) == {"quality", "complexity"} for row in scored)
    # The run's spending (its cache) holds the judge's answers beside the generator's, and the session's usage
    # adds up both engines (billed_failures: tries a server may have billed though they failed).
    assert manifest["spent"]["requests"] - manifest["spent"]["billed_failures"] == boot + 2 * len(scored)
    assert manifest["sessions"][-1]["usage"]["requests"] == boot + 2 * len(scored)
    assert len((run / "select" / "kept.jsonl").read_text().splitlines()) == 1
