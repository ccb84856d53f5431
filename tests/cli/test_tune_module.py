"""``python -m pipeline.cli.tune``: what accelerate or torchrun start once per GPU loads the tune command alone."""
import json
import subprocess
import sys

from tests.conftest import ROOT


def test_the_tune_module_loads_no_other_command():
    code = "import json, sys, pipeline.cli.tune; print(json.dumps(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    loaded = set(json.loads(r.stdout))
    assert "pipeline.cli.tune" in loaded
    for other in ("pipeline.cli.main", "pipeline.cli.run", "pipeline.cli.inspect", "pipeline.runs.stages",
                  "pipeline.stages.bootstrap", "pipeline.report.html", "torch"):
        assert other not in loaded
    r = subprocess.run([sys.executable, "-m", "pipeline.cli.tune", "--help"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0 and "--max-steps" in r.stdout and "--resume" in r.stdout
