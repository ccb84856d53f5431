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
