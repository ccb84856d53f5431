"""``pipeline compare-data`` refuses bad input with one line and exit 2, before anything is tuned."""
from __future__ import annotations

import json

from tests.conftest import run_cli


def test_compare_data_bad_input(tmp_path):
    run = tmp_path / "run"
    (run / "filter").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"run_id": "run", "config": {}, "stages": {}}))
    r = run_cli("compare-data", str(run), timeout=120)
    assert r.returncode == 2 and "held no human tasks out" in r.stderr and "Traceback" not in r.stderr
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"instruction": "Say hi.", "output": "hi"}) + "\n")
    r = run_cli("compare-data", str(run), "--tasks", str(tasks), "--selections", "all,best_vibes", timeout=120)
    assert r.returncode == 2 and "unknown selection 'best_vibes'" in r.stderr, r.stderr
    assert not (run / "compare").exists()
    r = run_cli("compare-data", str(tmp_path / "nowhere"), timeout=120)
    assert r.returncode == 2 and "no such run directory" in r.stderr
